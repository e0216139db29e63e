"""Robot accounts: project robots (`robot$<project>+<name>`, managed by whoever may manage the
project's robots) and system robots (`robot$<name>`, administrators only, any project or `*`).

Paths name robots by their short name; the secret is returned only at creation and rotation.
"""

from __future__ import annotations

from pydantic import Field

from moorage.domain.access import Action, robot_full_name
from moorage.http.access import ADMIN, Permission, project_permission
from moorage.http.api.common import (
    AccessRule,
    AccessRuleView,
    ExpiryDays,
    Name,
    Text,
    rule_views,
    rules_for_service,
)
from moorage.http.api.framework import (
    ApiModel,
    ApiRoute,
    Call,
    Endpoint,
    RequestModel,
    UtcDateTime,
)
from moorage.metadata.access.iam_models import Robot as RobotRow

ROBOTS = "robots"
PROJECT_ROBOTS = "/api/v1/projects/{project}/robots"
SYSTEM_ROBOTS = "/api/v1/robots"


class Robot(ApiModel):
    name: str = Field(description="the full name to sign in with")
    description: str | None
    permissions: list[AccessRuleView]
    expires_at: UtcDateTime | None
    disabled: bool
    created_by: str | None
    created_at: UtcDateTime
    last_used_at: UtcDateTime | None


class IssuedRobot(Robot):
    secret: str = Field(description="shown only in this response")


class RobotSecret(ApiModel):
    name: str
    secret: str = Field(description="the new secret, shown only in this response")


class NewRobot(RequestModel):
    name: Name
    description: Text | None = None
    permissions: list[AccessRule] = Field(min_length=1, max_length=50)
    expires_in_days: ExpiryDays | None = None


class RobotChanges(RequestModel):
    """Fields left out (or null) stay as they are."""

    disabled: bool | None = None
    permissions: list[AccessRule] | None = Field(None, min_length=1, max_length=50)


def robot_view(row: RobotRow) -> Robot:
    return Robot(
        name=row.name,
        description=row.description,
        permissions=rule_views(row.permissions) or [],
        expires_at=row.expires_at,
        disabled=row.disabled,
        created_by=row.created_by,
        created_at=row.created_at,
        last_used_at=row.last_used_at,
    )


def _owner(call: Call, system: bool) -> tuple[str | None, str]:
    """(project or None for a system robot, full name of the robot in the path)."""
    project = None if system else call.project
    return project, robot_full_name(call.param("robot"), project)


async def _list(call: Call, system: bool) -> list[Robot]:
    project = None if system else call.project
    return [robot_view(row) for row in await call.run(call.iam.identity.robots, project)]


async def _create(call: Call, system: bool) -> IssuedRobot:
    body = call.body(NewRobot)
    identity = call.iam.identity
    project = None if system else call.project
    issued = await call.run(
        identity.create_robot,
        call.actor,
        body.name,
        rules_for_service(body.permissions),
        project,
        body.expires_in_days,
        body.description,
        grantor=call.subject,
    )
    row = await call.run(identity.robot, issued.name, project)
    return IssuedRobot.model_validate({**robot_view(row).model_dump(), "secret": issued.secret})


async def _get(call: Call, system: bool) -> Robot:
    project, name = _owner(call, system)
    return robot_view(await call.run(call.iam.identity.robot, name, project))


async def _update(call: Call, system: bool) -> Robot:
    body = call.body(RobotChanges)
    identity = call.iam.identity
    project, name = _owner(call, system)
    permissions = rules_for_service(body.permissions) if body.permissions is not None else None
    await call.run(
        identity.update_robot,
        call.actor,
        name,
        project,
        disabled=body.disabled,
        permissions=permissions,
        grantor=call.subject,
    )
    return robot_view(await call.run(identity.robot, name, project))


async def _delete(call: Call, system: bool) -> None:
    project, name = _owner(call, system)
    await call.run(call.iam.identity.delete_robot, call.actor, name, project, grantor=call.subject)


async def _rotate(call: Call, system: bool) -> RobotSecret:
    project, name = _owner(call, system)
    issued = await call.run(
        call.iam.identity.rotate_robot, call.actor, name, project, grantor=call.subject
    )
    return RobotSecret(name=issued.name, secret=issued.secret)


async def list_project_robots(call: Call) -> list[Robot]:
    return await _list(call, system=False)


async def create_project_robot(call: Call) -> IssuedRobot:
    return await _create(call, system=False)


async def get_project_robot(call: Call) -> Robot:
    return await _get(call, system=False)


async def update_project_robot(call: Call) -> Robot:
    return await _update(call, system=False)


async def delete_project_robot(call: Call) -> None:
    await _delete(call, system=False)


async def rotate_project_robot(call: Call) -> RobotSecret:
    return await _rotate(call, system=False)


async def list_system_robots(call: Call) -> list[Robot]:
    return await _list(call, system=True)


async def create_system_robot(call: Call) -> IssuedRobot:
    return await _create(call, system=True)


async def get_system_robot(call: Call) -> Robot:
    return await _get(call, system=True)


async def update_system_robot(call: Call) -> Robot:
    return await _update(call, system=True)


async def delete_system_robot(call: Call) -> None:
    await _delete(call, system=True)


async def rotate_system_robot(call: Call) -> RobotSecret:
    return await _rotate(call, system=True)


def _routes(
    base: str,
    permission: Permission,
    kind: str,
    endpoints: tuple[Endpoint, Endpoint, Endpoint, Endpoint, Endpoint, Endpoint],
) -> tuple[ApiRoute, ...]:
    """The same six operations for project robots and for system robots."""
    list_, create, get, update, delete, rotate = endpoints
    one = f"{base}/{{robot}}"
    return (
        ApiRoute(
            "GET", base, list_, permission, f"The {kind} robots", ROBOTS, response=Robot, many=True
        ),
        ApiRoute(
            "POST",
            base,
            create,
            permission,
            f"Create a {kind} robot; its secret is returned only here",
            ROBOTS,
            body=NewRobot,
            response=IssuedRobot,
            status=201,
            errors=(409,),
        ),
        ApiRoute("GET", one, get, permission, f"One {kind} robot", ROBOTS, response=Robot),
        ApiRoute(
            "PATCH",
            one,
            update,
            permission,
            f"Disable, enable or re-scope a {kind} robot",
            ROBOTS,
            body=RobotChanges,
            response=Robot,
        ),
        ApiRoute("DELETE", one, delete, permission, f"Delete a {kind} robot", ROBOTS, status=204),
        ApiRoute(
            "POST",
            f"{one}/rotate",
            rotate,
            permission,
            f"Replace a {kind} robot's secret; the old one stops working",
            ROBOTS,
            response=RobotSecret,
        ),
    )


ROUTES: tuple[ApiRoute, ...] = (
    *_routes(
        PROJECT_ROBOTS,
        project_permission(Action.MANAGE_ROBOTS),
        "project",
        (
            list_project_robots,
            create_project_robot,
            get_project_robot,
            update_project_robot,
            delete_project_robot,
            rotate_project_robot,
        ),
    ),
    *_routes(
        SYSTEM_ROBOTS,
        ADMIN,
        "system",
        (
            list_system_robots,
            create_system_robot,
            get_system_robot,
            update_system_robot,
            delete_system_robot,
            rotate_system_robot,
        ),
    ),
)
