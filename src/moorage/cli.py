"""The `moorage` command line."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from moorage import __version__
from moorage.commands import LazyGroup
from moorage.commands.common import config_option, data_dir_option, load_cli_settings


@click.group(cls=LazyGroup)
@click.version_option(__version__, prog_name="moorage")
def main() -> None:
    """Moorage: a secure, self-hosted private container registry."""


@main.command()
@config_option
@data_dir_option
@click.option("--listen", help="HOST:PORT to listen on (default 127.0.0.1:5000).")
@click.option("--workers", type=int, help="Worker processes sharing the port.")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]))
@click.option("--log-format", type=click.Choice(["text", "json"]))
def serve(config: Path | None, **flags: Any) -> None:
    """Run the registry."""
    from moorage.server import configure_logging
    from moorage.server import serve as run

    settings = load_cli_settings(config, **flags)
    configure_logging(settings.log_level, settings.log_format)
    sys.exit(run(settings))


@main.command()
@config_option
@data_dir_option
def migrate(config: Path | None, **flags: Any) -> None:
    """Create or upgrade the metadata schema, then exit."""
    from moorage.server import prepare_data

    prepare_data(load_cli_settings(config, **flags))
    click.echo("schema is up to date")


@main.command()
@config_option
@data_dir_option
@click.option(
    "--repair",
    is_flag=True,
    help="Remove what can be removed safely: promotion records of no stored promotion.",
)
def fsck(config: Path | None, repair: bool, **flags: Any) -> None:
    """Check that every manifest's blobs are recorded and present in storage, and that every
    promotion record belongs to a stored promotion. Run it with the registry stopped."""
    from moorage.integrity import check

    findings = check(load_cli_settings(config, **flags), repair=repair)
    for line in findings.repaired + findings.problems:
        click.echo(line)
    click.echo(
        f"{len(findings.problems) + len(findings.repaired)} problem(s) found,"
        f" {len(findings.repaired)} repaired"
    )
    sys.exit(1 if findings.problems else 0)
