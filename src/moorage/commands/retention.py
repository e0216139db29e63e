"""`moorage retention`: a project's retention policy, dry and real runs, and their history,
through the same endpoints as /api/v1 (see `moorage.commands.api`).

A run started here runs in this process, against the same database and storage as the server
(the deletions go through the registry's delete path, as the API's do).
"""

from __future__ import annotations

import click

from moorage.commands.api import api_command
from moorage.http.api.retention import POLICY_PATH, RUN_PATH, RUNS_PATH


@click.group()
def retention() -> None:
    """Retention policies: which artifacts of a project stay, and runs that remove the rest."""


api_command(
    retention,
    "policies",
    "GET",
    "/api/v1/retention-policies",
    columns=("project", "cron", "enabled", "nextRunAt", "updatedBy"),
)
api_command(retention, "show", "GET", POLICY_PATH)
api_command(
    retention,
    "set",
    "PUT",
    POLICY_PATH,
    help="Create or replace the project's policy. Example: moorage retention set team --rules"
    ' \'[{"criterion": "latestPushed", "count": 10, "tags": ["v*"]},'
    ' {"criterion": "pushedWithinDays", "days": 7, "tags": [], "untagged": true}]\''
    " --cron '0 3 * * *'",
    done="set the retention policy of {project}",
)
api_command(
    retention, "remove", "DELETE", POLICY_PATH, done="removed the retention policy of {project}"
)
api_command(
    retention,
    "run",
    "POST",
    RUNS_PATH,
    help="Run the project's policy now: a dry run (the default) reports what would be removed;"
    " --no-dry-run removes it.",
)
api_command(
    retention,
    "runs",
    "GET",
    RUNS_PATH,
    columns=("id", "dryRun", "trigger", "status", "artifacts", "kept", "removed", "failed"),
)
api_command(retention, "show-run", "GET", RUN_PATH)
api_command(
    retention,
    "decisions",
    "GET",
    f"{RUN_PATH}/decisions",
    columns=("repository", "digest", "tags", "outcome", "reason"),
)
