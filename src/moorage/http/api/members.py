"""Project members: users and groups holding a role (built-in or custom) in a project."""

from __future__ import annotations

from moorage.domain.access import Action
from moorage.http.access import project_permission
from moorage.http.api.common import Name
from moorage.http.api.framework import ApiModel, ApiRoute, Call, RequestModel

MEMBERS = "members"
MEMBER = "/api/v1/projects/{project}/members/{kind:(?:user|group)}/{member}"


class Member(ApiModel):
    kind: str
    name: str
    role: str


class MemberRole(RequestModel):
    role: Name


async def list_members(call: Call) -> list[Member]:
    rows = await call.run(call.iam.projects.members, call.project)
    return [Member(kind=kind, name=name, role=role) for kind, name, role in rows]


async def set_member(call: Call) -> Member:
    body = call.body(MemberRole)
    kind, name = call.param("kind"), call.param("member")
    await call.run(
        call.iam.projects.set_member,
        call.actor,
        call.project,
        kind,
        name,
        body.role,
        grantor=call.subject,
    )
    return Member(kind=kind, name=name, role=body.role)


async def remove_member(call: Call) -> None:
    await call.run(
        call.iam.projects.remove_member,
        call.actor,
        call.project,
        call.param("kind"),
        call.param("member"),
        grantor=call.subject,
    )


ROUTES: tuple[ApiRoute, ...] = (
    ApiRoute(
        "GET",
        "/api/v1/projects/{project}/members",
        list_members,
        project_permission(Action.READ_MEMBERS),
        "The members of a project and their roles",
        MEMBERS,
        response=Member,
        many=True,
    ),
    ApiRoute(
        "PUT",
        MEMBER,
        set_member,
        project_permission(Action.MANAGE_MEMBERS),
        "Give a user or group a role in the project (replacing its previous role)",
        MEMBERS,
        body=MemberRole,
        response=Member,
    ),
    ApiRoute(
        "DELETE",
        MEMBER,
        remove_member,
        project_permission(Action.MANAGE_MEMBERS),
        "Take a user's or group's role in the project away",
        MEMBERS,
        status=204,
    ),
)
