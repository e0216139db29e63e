"""Groups of users (administrators only); a group can hold project roles and grants."""

from __future__ import annotations

from moorage.http.access import ADMIN
from moorage.http.api.common import Name
from moorage.http.api.framework import ApiModel, ApiRoute, Call, RequestModel

GROUPS = "groups"
GROUP = "/api/v1/groups/{group}"


class Group(ApiModel):
    name: str
    members: list[str]


class NewGroup(RequestModel):
    name: Name


async def list_groups(call: Call) -> list[Group]:
    rows = await call.run(call.iam.identity.groups)
    return [Group(name=group.name, members=members) for group, members in rows]


async def create_group(call: Call) -> Group:
    body = call.body(NewGroup)
    await call.run(call.iam.identity.create_group, call.actor, body.name)
    return Group(name=body.name, members=[])


async def get_group(call: Call) -> Group:
    group, members = await call.run(call.iam.identity.group, call.param("group"))
    return Group(name=group.name, members=members)


async def delete_group(call: Call) -> None:
    await call.run(call.iam.identity.delete_group, call.actor, call.param("group"))


async def add_group_member(call: Call) -> None:
    await _set_member(call, member=True)


async def remove_group_member(call: Call) -> None:
    await _set_member(call, member=False)


async def _set_member(call: Call, *, member: bool) -> None:
    await call.run(
        call.iam.identity.set_group_member,
        call.actor,
        call.param("group"),
        call.param("username"),
        member,
    )


ROUTES: tuple[ApiRoute, ...] = (
    ApiRoute(
        "GET",
        "/api/v1/groups",
        list_groups,
        ADMIN,
        "Every group with its members",
        GROUPS,
        response=Group,
        many=True,
    ),
    ApiRoute(
        "POST",
        "/api/v1/groups",
        create_group,
        ADMIN,
        "Create a group",
        GROUPS,
        body=NewGroup,
        response=Group,
        status=201,
        errors=(409,),
    ),
    ApiRoute("GET", GROUP, get_group, ADMIN, "One group", GROUPS, response=Group),
    ApiRoute(
        "DELETE",
        GROUP,
        delete_group,
        ADMIN,
        "Delete a group (its roles and grants go with it)",
        GROUPS,
        status=204,
    ),
    ApiRoute(
        "PUT",
        f"{GROUP}/members/{{username}}",
        add_group_member,
        ADMIN,
        "Add a user to a group",
        GROUPS,
        status=204,
    ),
    ApiRoute(
        "DELETE",
        f"{GROUP}/members/{{username}}",
        remove_group_member,
        ADMIN,
        "Remove a user from a group",
        GROUPS,
        status=204,
    ),
)
