"""`moorage quota`: a project's usage and quotas, through the same endpoints as /api/v1 (see
`moorage.commands.api`)."""

from __future__ import annotations

import click

from moorage.commands.api import api_command
from moorage.http.api.quotas import PROJECT_PATH


@click.group()
def quota() -> None:
    """Project quotas: storage bytes (each blob once per project) and artifact count."""


api_command(
    quota,
    "show",
    "GET",
    f"{PROJECT_PATH}/usage",
    help="A project's usage, the quotas in force and how full they are.",
)
api_command(
    quota,
    "set",
    "PUT",
    f"{PROJECT_PATH}/quota",
    help="Set a project's own quotas; a limit left out follows the system default, 0 is"
    " unlimited. Example: moorage quota set team --storage-bytes 10737418240 --artifacts 500",
    done="set the quotas of {project}",
)
api_command(
    quota,
    "clear",
    "DELETE",
    f"{PROJECT_PATH}/quota",
    help="Remove a project's own quotas: the system default applies again.",
    done="cleared the quotas of {project}",
)
api_command(
    quota,
    "recount",
    "POST",
    "/api/v1/system/quotas/recount",
    help="Rebuild every project's usage counters from the registry's links (lists the"
    " projects whose counters were wrong).",
)
