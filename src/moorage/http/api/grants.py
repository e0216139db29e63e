"""Per-repository grants: actions for a user, group or robot on repositories matching a glob."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from moorage.domain.access import MAX_PATTERN_LENGTH, Action
from moorage.http.access import project_permission
from moorage.http.api.common import GLOB_PATTERN, PRINCIPAL_PATTERN, Actions
from moorage.http.api.framework import ApiModel, ApiRoute, Call, RequestModel

GRANTS = "grants"
GRANTS_PATH = "/api/v1/projects/{project}/grants"
MANAGE_MEMBERS = project_permission(Action.MANAGE_MEMBERS)


class Grant(ApiModel):
    id: int
    kind: str
    name: str | None  # null once the user, group or robot is gone
    pattern: str
    actions: list[str]


class NewGrant(RequestModel):
    kind: Literal["user", "group", "robot"]
    name: Annotated[str, Field(pattern=PRINCIPAL_PATTERN, max_length=255)]
    pattern: Annotated[str, Field(pattern=GLOB_PATTERN, max_length=MAX_PATTERN_LENGTH)]
    actions: Actions


def grant_view(row: dict[str, Any]) -> Grant:
    return Grant(
        id=row["id"],
        kind=row["kind"],
        name=row["name"],
        pattern=row["pattern"],
        actions=row["actions"],
    )


async def list_grants(call: Call) -> list[Grant]:
    return [grant_view(row) for row in await call.run(call.iam.projects.grants, call.project)]


async def add_grant(call: Call) -> Grant:
    body = call.body(NewGrant)
    actions = [action.value for action in body.actions]
    grant_id = await call.run(
        call.iam.projects.add_grant,
        call.actor,
        call.project,
        body.kind,
        body.name,
        body.pattern,
        actions,
        grantor=call.subject,
    )
    return Grant(
        id=grant_id,
        kind=body.kind,
        name=body.name,
        pattern=body.pattern,
        actions=sorted(set(actions)),
    )


async def delete_grant(call: Call) -> None:
    await call.run(
        call.iam.projects.delete_grant,
        call.actor,
        call.project,
        call.id_param("grant"),
        grantor=call.subject,
    )


ROUTES: tuple[ApiRoute, ...] = (
    ApiRoute(
        "GET",
        GRANTS_PATH,
        list_grants,
        MANAGE_MEMBERS,
        "The project's per-repository grants",
        GRANTS,
        response=Grant,
        many=True,
    ),
    ApiRoute(
        "POST",
        GRANTS_PATH,
        add_grant,
        MANAGE_MEMBERS,
        "Grant actions on repositories matching a glob (relative to the project)",
        GRANTS,
        body=NewGrant,
        response=Grant,
        status=201,
    ),
    ApiRoute(
        "DELETE",
        f"{GRANTS_PATH}/{{grant:[0-9]+}}",
        delete_grant,
        MANAGE_MEMBERS,
        "Withdraw a grant",
        GRANTS,
        status=204,
    ),
)
