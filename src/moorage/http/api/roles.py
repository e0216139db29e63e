"""Project roles: the built-in ones and custom named sets of project actions."""

from __future__ import annotations

from moorage.domain.access import ROLE_ACTIONS
from moorage.http.access import ADMIN, AUTHENTICATED
from moorage.http.api.common import Actions, Text
from moorage.http.api.framework import ApiModel, ApiRoute, Call, RequestModel

ROLES = "roles"
ROLE = "/api/v1/roles/{role}"


class Role(ApiModel):
    name: str
    built_in: bool
    actions: list[str]
    description: str | None


class RoleDefinition(RequestModel):
    actions: Actions
    description: Text | None = None


async def list_roles(call: Call) -> list[Role]:
    projects = call.iam.projects
    table = await call.run(projects.roles)
    descriptions = await call.run(projects.role_descriptions)
    return [
        Role(
            name=name,
            built_in=name in ROLE_ACTIONS,
            actions=actions,
            description=descriptions.get(name),
        )
        for name, actions in sorted(table.items())
    ]


async def put_role(call: Call) -> Role:
    body = call.body(RoleDefinition)
    name = call.param("role")
    actions = [action.value for action in body.actions]
    await call.run(call.iam.projects.upsert_role, call.actor, name, actions, body.description)
    return Role(
        name=name, built_in=False, actions=sorted(set(actions)), description=body.description
    )


async def delete_role(call: Call) -> None:
    await call.run(call.iam.projects.delete_role, call.actor, call.param("role"))


ROUTES: tuple[ApiRoute, ...] = (
    ApiRoute(
        "GET",
        "/api/v1/roles",
        list_roles,
        AUTHENTICATED,
        "Built-in and custom roles with their actions",
        ROLES,
        response=Role,
        many=True,
    ),
    ApiRoute(
        "PUT",
        ROLE,
        put_role,
        ADMIN,
        "Create or change a custom role (built-in roles cannot be changed)",
        ROLES,
        body=RoleDefinition,
        response=Role,
    ),
    ApiRoute(
        "DELETE",
        ROLE,
        delete_role,
        ADMIN,
        "Delete a custom role that no member holds",
        ROLES,
        status=204,
        errors=(409,),
    ),
)
