"""The one access decision point.

Every route declares the `Permission` it needs in the route table; `access_middleware` asks the
configured `Authorizer` before any handler runs. A route without a declaration is refused, so a
forgotten check fails closed. Handlers never check permissions themselves; when a handler needs
a second decision (the source repository of a cross-repository mount) it asks `may` below,
which goes through the same authorizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from aiohttp import web
from aiohttp.typedefs import Handler

from moorage.domain.errors import ErrorCode, RegistryError
from moorage.domain.events import Actor
from moorage.domain.names import validate_repository_name


class Action(StrEnum):
    PING = "ping"  # the API version check
    PULL = "pull"
    PUSH = "push"
    DELETE = "delete"
    CATALOG = "catalog"


class Scope(StrEnum):
    REGISTRY = "registry"
    REPOSITORY = "repository"


@dataclass(frozen=True, slots=True)
class Permission:
    action: Action
    scope: Scope


PING = Permission(Action.PING, Scope.REGISTRY)
CATALOG = Permission(Action.CATALOG, Scope.REGISTRY)
PULL = Permission(Action.PULL, Scope.REPOSITORY)
PUSH = Permission(Action.PUSH, Scope.REPOSITORY)
DELETE = Permission(Action.DELETE, Scope.REPOSITORY)


class Authorizer(Protocol):
    async def authenticate(self, request: web.Request) -> Actor:
        """Who is calling (anonymous when no credentials were given)."""
        ...

    async def authorize(self, actor: Actor, permission: Permission, repository: str | None) -> bool:
        """Whether `actor` holds `permission` on `repository` (None for registry scope)."""
        ...


class OpenAccess:
    """Everyone may do everything. The default until identity and access management is on."""

    async def authenticate(self, request: web.Request) -> Actor:
        return Actor(client_ip=request.remote)

    async def authorize(self, actor: Actor, permission: Permission, repository: str | None) -> bool:
        return True


PERMISSIONS = web.AppKey("permissions", dict[web.AbstractRoute, Permission])
AUTHORIZER = web.AppKey("authorizer", Authorizer)
ACTOR = "moorage.actor"
REPOSITORY = "moorage.repository"


@web.middleware
async def access_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    route = request.match_info.route
    if request.match_info.http_exception is not None:
        # No route matched: the router's 404/405 is answered without touching any resource.
        return await handler(request)
    permission = request.app[PERMISSIONS].get(route)
    if permission is None:
        raise RegistryError(ErrorCode.DENIED, "this endpoint declares no permission", status=403)
    repository = None
    if permission.scope is Scope.REPOSITORY:
        repository = validate_repository_name(request.match_info["name"])
        request[REPOSITORY] = repository
    authorizer = request.app[AUTHORIZER]
    actor = await authorizer.authenticate(request)
    if not await authorizer.authorize(actor, permission, repository):
        if actor.kind == "anonymous":
            raise RegistryError(ErrorCode.UNAUTHORIZED)
        raise RegistryError(ErrorCode.DENIED)
    request[ACTOR] = actor
    return await handler(request)


async def may(request: web.Request, permission: Permission, repository: str) -> bool:
    """A secondary decision inside a request, made by the same authorizer."""
    return await request.app[AUTHORIZER].authorize(request[ACTOR], permission, repository)
