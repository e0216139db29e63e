"""What every command shares: the settings options, the services, the actor, error reporting."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from moorage.config import ConfigError, Settings, load_settings
from moorage.domain.access import Action
from moorage.domain.errors import RegistryError
from moorage.domain.events import Actor
from moorage.services.errors import IdentityError

if TYPE_CHECKING:
    from moorage.management import ManagementServices

config_option = click.option(
    "--config",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="TOML settings file (also MOORAGE_CONFIG).",
)
data_dir_option = click.option(
    "--data-dir", type=click.Path(path_type=Path, file_okay=False), help="Data directory."
)


def load_cli_settings(config: Path | None, **flags: Any) -> Settings:
    if config is None and os.environ.get("MOORAGE_CONFIG"):
        config = Path(os.environ["MOORAGE_CONFIG"])
    try:
        return load_settings(config, flags)
    except ConfigError as error:
        raise click.UsageError(str(error)) from None


def with_settings(command: Callable[..., None]) -> Callable[..., None]:
    """Add --config and --data-dir; the command receives the loaded `Settings` first."""

    @config_option
    @data_dir_option
    @functools.wraps(command)
    def run(config: Path | None, data_dir: Path | None, **arguments: Any) -> None:
        command(load_cli_settings(config, data_dir=data_dir), **arguments)

    return run


@contextmanager
def services(settings: Settings) -> Iterator[ManagementServices]:
    """The services on the registry's database; refusals become a message and exit status 1."""
    try:
        from moorage.management import management_services

        with management_services(settings) as opened:
            yield opened
    except IdentityError as error:
        raise click.ClickException(str(error)) from None
    except RegistryError as error:
        raise click.ClickException(error.message) from None


def cli_actor() -> Actor:
    """Who the audit log names for changes made here: the operating-system account."""
    try:
        name = os.getlogin()
    except OSError:
        name = ""
    return Actor(name=name or "cli", kind="system")


def read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    password: str = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    return password


def parse_rule(text: str, default_project: str | None = None) -> dict[str, Any]:
    """`PROJECT:PATTERN:ACTIONS` (or `PATTERN:ACTIONS` with a default project), e.g.
    `team:app/**:pull,push`; `*` as the project means every project (system robots)."""
    parts = text.split(":")
    if len(parts) == 2 and default_project is not None:
        parts.insert(0, default_project)
    if len(parts) != 3 or not all(parts):
        raise click.BadParameter(f"{text!r} is not PROJECT:PATTERN:ACTIONS")
    project, pattern, actions = parts
    known = {action.value for action in Action}
    wanted = [action.strip() for action in actions.split(",")]
    unknown = [action for action in wanted if action not in known]
    if unknown:
        raise click.BadParameter(f"unknown action(s) {', '.join(unknown)}; known: {sorted(known)}")
    return {"project": project, "repositories": pattern, "actions": wanted}


def parse_rules(texts: tuple[str, ...], default_project: str | None = None) -> list[dict[str, Any]]:
    return [parse_rule(text, default_project) for text in texts]


def show_secret(description: str, secret: str) -> None:
    """The secret alone on stdout (for scripts), the explanation on stderr."""
    click.echo(f"{description}; the secret is shown only now:", err=True)
    click.echo(secret)


def table(rows: list[tuple[object, ...]]) -> None:
    for row in rows:
        click.echo("\t".join("" if cell is None else str(cell) for cell in row))
