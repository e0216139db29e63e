"""Management commands of the `moorage` CLI: they call the services directly, not the HTTP API."""

from __future__ import annotations

import click

from moorage.commands.accounts import group, token, user
from moorage.commands.audit import audit, keys
from moorage.commands.projects import member, project, robot
from moorage.commands.promote import promote
from moorage.commands.vulndb import vulndb

COMMAND_GROUPS: tuple[click.Command, ...] = (
    user,
    group,
    token,
    project,
    member,
    robot,
    audit,
    keys,
    vulndb,
    promote,
)
