"""`moorage stage`, `moorage gates`, `moorage approvals` and `moorage promotions`: stages,
promotion-only projects, promotion gates and the promotion history, through the same
endpoints as /api/v1 (see `moorage.commands.api`). `moorage promote` promotes."""

from __future__ import annotations

import click

from moorage.commands.api import api_command
from moorage.http.api.promotions import (
    APPROVALS_PATH,
    GATES_PATH,
    PROMOTIONS_PATH,
    STAGE_PATH,
)


@click.group()
def stage() -> None:
    """A project's stage (dev, staging, prod, ...) and whether it accepts only promotions."""


api_command(stage, "show", "GET", STAGE_PATH)
api_command(
    stage,
    "set",
    "PUT",
    STAGE_PATH,
    help="Set the project's stage and promotion-only flag together; a flag left out is off."
    " Example: moorage stage set prod-team --stage prod --promotion-only",
    done="set the stage of {project}",
)


@click.group()
def gates() -> None:
    """The gates a promotion into a project must pass (scan, signature, source stage, age,
    label, approval)."""


api_command(gates, "show", "GET", GATES_PATH)
api_command(
    gates,
    "set",
    "PUT",
    GATES_PATH,
    help='Replace the project\'s gates with --gates JSON, e.g. \'[{"kind": "scan",'
    ' "severity": "High"}, {"kind": "approval", "count": 2}]\' (or --from-file with'
    ' {"gates": [...]}); an empty list removes them.',
    done="replaced the promotion gates of {project}",
)


@click.group()
def approvals() -> None:
    """Approvals of promotions (given by users through the API)."""


api_command(
    approvals,
    "list",
    "GET",
    APPROVALS_PATH,
    help="Approvals recorded for promoting --digest into the project.",
)


@click.group()
def promotions() -> None:
    """The history of promotions and the keys that verify their records."""


api_command(
    promotions,
    "list",
    "GET",
    PROMOTIONS_PATH,
    help="Promotions, newest first (into --project only, if given).",
    columns=("id", "source", "destination", "digest", "actor", "createdAt"),
)
api_command(promotions, "keys", "GET", f"{PROMOTIONS_PATH}/keys")
