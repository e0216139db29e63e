"""Virtual projects (an ordered list of member projects behind one name) and the registry's
default mirror (the proxy-cache project serving names without a project prefix).

Administrators change both; project admins may read their project's virtual configuration.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from moorage.domain.access import Action
from moorage.http.access import ADMIN, project_permission
from moorage.http.api.common import ProjectName
from moorage.http.api.framework import ApiModel, ApiRoute, Call, RequestModel, UtcDateTime
from moorage.http.state import ROUTING
from moorage.services.distribution.mirror import MirrorService, MirrorView
from moorage.services.distribution.virtual import MAX_MEMBERS, VirtualProjectService, VirtualView

VIRTUAL = "virtual-projects"
MIRROR = "mirror"
VIRTUAL_PATH = "/api/v1/projects/{project}/virtual"
MIRROR_PATH = "/api/v1/mirror"
MANAGE_PROJECT = project_permission(Action.MANAGE_PROJECT)


class VirtualProject(ApiModel):
    project: str
    members: list[str]
    push_member: str | None
    updated_by: str | None
    updated_at: UtcDateTime


class VirtualProjectInput(RequestModel):
    """The members, in the order pulls try them, and the member pushes go to (none: pushes
    are refused)."""

    members: Annotated[list[ProjectName], Field(min_length=1, max_length=MAX_MEMBERS)] = Field(
        description="projects (local or proxy-cache) in resolution order: the first that has"
        " the requested content serves it"
    )
    push_member: ProjectName | None = Field(
        None, description="one of the members (not a proxy-cache project) that receives pushes"
    )


class Mirror(ApiModel):
    project: str | None = Field(description="the default mirror, if any")
    source: Literal["api", "config", "none"] = Field(
        description="api: set here; config: the configuration file's mirror_project; none"
    )
    configured: str | None = Field(description="the configuration file's mirror_project")
    updated_by: str | None
    updated_at: UtcDateTime | None


class MirrorInput(RequestModel):
    """The proxy-cache project that serves names without a project (null: no mirror, also
    overriding the configuration file)."""

    project: ProjectName | None


def _virtual(call: Call) -> VirtualProjectService:
    return call.request.app[ROUTING].names.virtual


def _mirror(call: Call) -> MirrorService:
    return call.request.app[ROUTING].names.mirror


def _virtual_view(view: VirtualView) -> VirtualProject:
    return VirtualProject(
        project=view.project,
        members=view.members,
        push_member=view.push_member,
        updated_by=view.updated_by,
        updated_at=view.updated_at,
    )


def _mirror_view(view: MirrorView) -> Mirror:
    return Mirror.model_validate(
        {
            "project": view.project,
            "source": view.source,
            "configured": view.configured,
            "updated_by": view.updated_by,
            "updated_at": view.updated_at,
        }
    )


async def get_virtual(call: Call) -> VirtualProject:
    return _virtual_view(await call.run(_virtual(call).get, call.project))


async def put_virtual(call: Call) -> VirtualProject:
    body = call.body(VirtualProjectInput)
    view = await call.run(
        _virtual(call).set, call.actor, call.param("project"), body.members, body.push_member
    )
    return _virtual_view(view)


async def delete_virtual(call: Call) -> None:
    await call.run(_virtual(call).remove, call.actor, call.param("project"))


async def get_mirror(call: Call) -> Mirror:
    return _mirror_view(await call.run(_mirror(call).get))


async def put_mirror(call: Call) -> Mirror:
    body = call.body(MirrorInput)
    return _mirror_view(await call.run(_mirror(call).set, call.actor, body.project))


async def delete_mirror(call: Call) -> Mirror:
    return _mirror_view(await call.run(_mirror(call).reset, call.actor))


ROUTES: tuple[ApiRoute, ...] = (
    ApiRoute(
        "GET",
        VIRTUAL_PATH,
        get_virtual,
        MANAGE_PROJECT,
        "The virtual project's members and push member",
        VIRTUAL,
        response=VirtualProject,
    ),
    ApiRoute(
        "PUT",
        VIRTUAL_PATH,
        put_virtual,
        ADMIN,
        "Make an empty project a virtual project of ordered members, or change its members",
        VIRTUAL,
        body=VirtualProjectInput,
        response=VirtualProject,
        errors=(409,),
    ),
    ApiRoute(
        "DELETE",
        VIRTUAL_PATH,
        delete_virtual,
        ADMIN,
        "Make the virtual project an ordinary (empty) project again",
        VIRTUAL,
        status=204,
    ),
    ApiRoute(
        "GET",
        MIRROR_PATH,
        get_mirror,
        ADMIN,
        "The default mirror: the proxy-cache project serving names without a project",
        MIRROR,
        response=Mirror,
    ),
    ApiRoute(
        "PUT",
        MIRROR_PATH,
        put_mirror,
        ADMIN,
        "Set the default mirror (a proxy-cache project), or none",
        MIRROR,
        body=MirrorInput,
        response=Mirror,
        errors=(404,),
    ),
    ApiRoute(
        "DELETE",
        MIRROR_PATH,
        delete_mirror,
        ADMIN,
        "Forget the mirror set here: the configuration file's mirror_project applies again",
        MIRROR,
        response=Mirror,
    ),
)
