"""`moorage grant`, `moorage role` and `moorage settings`: per-repository grants, custom roles
and run-time settings, through the same endpoints as /api/v1 (see `moorage.commands.api`)."""

from __future__ import annotations

import click

from moorage.commands.api import api_command
from moorage.http.api.grants import GRANTS_PATH
from moorage.http.api.roles import ROLE


@click.group()
def grant() -> None:
    """Per-repository grants: actions on repositories matching a glob, beyond roles."""


api_command(grant, "list", "GET", GRANTS_PATH, columns=("id", "kind", "name", "pattern", "actions"))
api_command(
    grant,
    "add",
    "POST",
    GRANTS_PATH,
    help="Grant --actions (repeatable) on repositories matching --pattern to a user, group or"
    " robot. Example: moorage grant add team --kind user --name alice --pattern 'app/**'"
    " --actions pull --actions push",
    done="granted {kind} {name} on {pattern} in {project} (grant {result_id})",
)
api_command(
    grant,
    "remove",
    "DELETE",
    f"{GRANTS_PATH}/{{grant:[0-9]+}}",
    done="withdrew grant {grant} in {project}",
)


@click.group()
def role() -> None:
    """Built-in and custom roles."""


api_command(role, "list", "GET", "/api/v1/roles", columns=("name", "builtIn", "actions"))
api_command(
    role,
    "set",
    "PUT",
    ROLE,
    help="Create or change custom role ROLE with --actions (repeatable).",
    done="set role {role}",
)
api_command(role, "remove", "DELETE", ROLE, done="deleted role {role}")


@click.group("settings")
def settings_group() -> None:
    """Run-time settings kept in the database (the configuration file's are not changed)."""


api_command(settings_group, "show", "GET", "/api/v1/settings")
api_command(
    settings_group,
    "set",
    "PATCH",
    "/api/v1/settings",
    help="Change the given run-time settings, e.g. --project-creation admins.",
    done="changed the run-time settings",
)
