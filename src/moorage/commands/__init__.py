"""Management commands of the `moorage` CLI: they call the services directly, not the HTTP API.

Each command group is imported only when it is invoked (or listed by --help), so that
`moorage serve`, whose supervisor forks the workers, does not load every service first.
"""

from __future__ import annotations

import importlib

import click

# command name → "module:attribute"
COMMANDS: dict[str, str] = {
    "user": "moorage.commands.accounts:user",
    "group": "moorage.commands.accounts:group",
    "token": "moorage.commands.accounts:token",
    "project": "moorage.commands.projects:project",
    "member": "moorage.commands.projects:member",
    "robot": "moorage.commands.projects:robot",
    "audit": "moorage.commands.audit:audit",
    "keys": "moorage.commands.audit:keys",
    "vulndb": "moorage.commands.vulndb:vulndb",
    "promote": "moorage.commands.promote:promote",
}


def load_command(name: str) -> click.Command | None:
    target = COMMANDS.get(name)
    if target is None:
        return None
    module, _, attribute = target.partition(":")
    command = getattr(importlib.import_module(module), attribute)
    assert isinstance(command, click.Command)
    return command


class LazyGroup(click.Group):
    """A group whose management commands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return super().get_command(ctx, cmd_name) or load_command(cmd_name)
