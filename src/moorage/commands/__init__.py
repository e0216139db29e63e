"""Management commands of the `moorage` CLI: they call the services directly, not the HTTP API.

Each command group is imported only when it is invoked (or listed by --help), so that
`moorage serve`, whose supervisor forks the workers, does not load every service first.
"""

from __future__ import annotations

import importlib

import click

from moorage.metadata.errors import DatabaseUnavailableError

# command name → "module:attribute"
COMMANDS: dict[str, str] = {
    "user": "moorage.commands.accounts:user",
    "group": "moorage.commands.accounts:group",
    "token": "moorage.commands.accounts:token",
    "project": "moorage.commands.projects:project",
    "repository": "moorage.commands.repositories:repository",
    "member": "moorage.commands.projects:member",
    "robot": "moorage.commands.projects:robot",
    "audit": "moorage.commands.audit:audit",
    "keys": "moorage.commands.audit:keys",
    "vulndb": "moorage.commands.vulndb:vulndb",
    "promote": "moorage.commands.promote:promote",
    "vuln-policy": "moorage.commands.policies:vuln_policy",
    "allowlist": "moorage.commands.policies:allowlist",
    "immutable-tags": "moorage.commands.policies:immutable_tags",
    "trust": "moorage.commands.trust:trust",
    "stage": "moorage.commands.staging:stage",
    "gates": "moorage.commands.staging:gates",
    "approvals": "moorage.commands.staging:approvals",
    "promotions": "moorage.commands.staging:promotions",
    "replication": "moorage.commands.replication:replication",
    "retention": "moorage.commands.retention:retention",
    "proxy": "moorage.commands.routing:proxy",
    "virtual": "moorage.commands.routing:virtual",
    "mirror": "moorage.commands.routing:mirror",
    "scanner": "moorage.commands.scanning:scanner",
    "scan-settings": "moorage.commands.scanning:scan_settings",
    "scan": "moorage.commands.scanning:scan",
    "grant": "moorage.commands.admin:grant",
    "role": "moorage.commands.admin:role",
    "settings": "moorage.commands.admin:settings_group",
    "migrate-data": "moorage.commands.migrate_data:migrate_data",
    "gc": "moorage.commands.gc:gc",
    "quota": "moorage.commands.quotas:quota",
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

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except DatabaseUnavailableError as error:
            raise click.ClickException(str(error)) from None
