"""The one access decision point.

Every route declares the `Permission` it needs in a route table; `access_middleware` resolves
the resource (repository or project) from the request, identifies the caller and decides before
any handler runs. A route without a declaration is refused, so a forgotten check fails closed,
and a test walks the router to make sure every route has one. Handlers never check permissions;
when a handler needs a second decision (the source of a cross-repository mount) it calls `may`,
which asks the same authorizer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Handler

from moorage.domain.access import (
    Action,
    SystemAction,
    decide,
    decide_system,
    may_push_new_project,
)
from moorage.domain.errors import ErrorCode, RegistryError
from moorage.domain.events import AccessEvent, Actor, policy_denied
from moorage.domain.names import project_of, validate_repository_name
from moorage.http.authn import Caller, InvalidTokenError
from moorage.http.state import IAM, ROUTING, SERVICES, IamServices
from moorage.services.access.identity import AuthenticationError, ThrottledError
from moorage.services.distribution.mirror import normalize_host
from moorage.services.distribution.virtual import VirtualConfig
from moorage.services.registry.pulls import FetchRight, PullAccess


class Scope(StrEnum):
    PUBLIC = "public"  # no authentication at all (token service, API document, health)
    REGISTRY = "registry"  # a system action
    REPOSITORY = "repository"  # an action on the repository in the path ({name})
    PROJECT = "project"  # an action on the project in the path ({project})
    PROJECT_QUERY = "project-query"  # an action on ?project=, or system admin without it


@dataclass(frozen=True, slots=True)
class Permission:
    scope: Scope
    action: Action | SystemAction | None = None


PUBLIC = Permission(Scope.PUBLIC)
PING = Permission(Scope.REGISTRY, SystemAction.PING)
CATALOG = Permission(Scope.REGISTRY, SystemAction.CATALOG)
AUTHENTICATED = Permission(Scope.REGISTRY, SystemAction.AUTHENTICATED)
OWN_CREDENTIALS = Permission(Scope.REGISTRY, SystemAction.OWN_CREDENTIALS)
ADMIN = Permission(Scope.REGISTRY, SystemAction.ADMIN)
CREATE_PROJECT = Permission(Scope.REGISTRY, SystemAction.CREATE_PROJECT)
PULL = Permission(Scope.REPOSITORY, Action.PULL)
PUSH = Permission(Scope.REPOSITORY, Action.PUSH)
DELETE = Permission(Scope.REPOSITORY, Action.DELETE)


def project_permission(action: Action) -> Permission:
    return Permission(Scope.PROJECT, action)


PERMISSIONS = web.AppKey("permissions", dict[web.AbstractRoute, Permission])
CALLER = web.RequestKey("caller", Caller)
ACTOR = web.RequestKey("actor", Actor)
REPOSITORY = web.RequestKey("repository", str)
PROJECT: web.RequestKey[str | None] = web.RequestKey("project")
# The name the client asked for, when routing mapped it onto another repository (REPOSITORY).
REQUESTED_NAME = web.RequestKey("requested_name", str)
# The virtual project whose repository a pull asks for (its members serve it).
VIRTUAL: web.RequestKey[VirtualConfig | None] = web.RequestKey("virtual")

_TOKEN_ACTIONS = {Action.PULL: "pull", Action.PUSH: "push", Action.DELETE: "delete"}


class AccessDenied(Exception):
    """The caller may not do this. `challenge` asks the client to (re)authenticate."""

    def __init__(
        self, message: str, *, challenge: bool, scope: str | None = None, error: str | None = None
    ) -> None:
        super().__init__(message)
        self.challenge = challenge
        self.scope = scope
        self.error = error


@web.middleware
async def access_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.match_info.http_exception is not None:
        # No route matched: the router's 404/405 is answered without touching any resource.
        return await handler(request)
    permission = request.app[PERMISSIONS].get(request.match_info.route)
    if permission is None:
        raise RegistryError(ErrorCode.DENIED, "this endpoint declares no permission", status=403)
    if permission.scope is Scope.PUBLIC:
        request[ACTOR] = Actor(client_ip=request.remote)
        return await handler(request)
    iam = request.app[IAM]
    resource = _resource(request, permission)
    v2 = request.path.startswith("/v2")
    try:
        caller = await iam.authenticator.caller(
            request, allow_basic=iam.v2_basic_auth or not v2, registry_tokens=v2
        )
    except ThrottledError as error:
        raise RegistryError(
            ErrorCode.TOOMANYREQUESTS, str(error), headers={"Retry-After": str(error.retry_after)}
        ) from None
    except AuthenticationError:
        raise AccessDenied("invalid credentials", challenge=True) from None
    except InvalidTokenError as error:
        raise AccessDenied(
            str(error),
            challenge=True,
            scope=_token_scope(permission, resource),
            error="invalid_token",
        ) from None
    request[CALLER] = caller
    request[ACTOR] = caller.subject.actor(request.remote)
    resource = await _route(request, iam, permission, resource)
    await _authorize(request, iam, caller, permission, resource)
    return await handler(request)


def repository_in_path(params: Mapping[str, str]) -> str:
    """The repository a route names: `{name}`, relative to `{project}` when the path has one
    (/api/v1/projects/{project}/repositories/{name})."""
    project = params.get("project")
    return params["name"] if project is None else f"{project}/{params['name']}"


def _resource(request: web.Request, permission: Permission) -> str | None:
    if permission.scope is Scope.REPOSITORY:
        name = validate_repository_name(repository_in_path(request.match_info))
        request[REPOSITORY] = name
        request[PROJECT] = project_of(name)
        return name
    if permission.scope is Scope.PROJECT:
        project = request.match_info["project"]
        request[PROJECT] = project
        return project
    if permission.scope is Scope.PROJECT_QUERY:
        queried = request.query.get("project") or None
        request[PROJECT] = queried
        return queried
    return None


async def _route(
    request: web.Request, iam: IamServices, permission: Permission, resource: str | None
) -> str | None:
    """Map the requested name onto the repository that serves it: a name without a project
    onto the mirror (pulls only), a write into a virtual project onto its push member.

    This runs before the one authorization decision, which then judges the caller against the
    real repository; the handlers see only that repository (REPOSITORY).
    """
    if permission.scope is not Scope.REPOSITORY or resource is None:
        return resource
    router = request.app[ROUTING].names
    action = permission.action
    assert isinstance(action, Action)
    if action is Action.PULL:
        target = await router.pull_target(
            resource, request.query.get("ns"), _own_hosts(request, iam)
        )
        request[VIRTUAL] = await router.virtual_config(project_of(target))
    else:
        try:
            target = await router.write_target(resource, action)
        except RegistryError as error:
            iam.events.publish(
                policy_denied(
                    request[ACTOR],
                    project_of(resource),
                    f"{request.method} {request.path}"[:500],
                    point=action.value,
                    policy="virtual-project",
                    reason=error.message,
                )
            )
            raise
    if target != resource:
        request[REQUESTED_NAME] = resource
        request[REPOSITORY] = target
        request[PROJECT] = project_of(target)
    return target


def _own_hosts(request: web.Request, iam: IamServices) -> frozenset[str]:
    """This registry's names: an `ns` naming one of them means the name is local."""
    hosts = {normalize_host(request.host)}
    if iam.public_url:
        hosts.add(normalize_host(urlsplit(iam.public_url).netloc))
    return frozenset(host for host in hosts if host is not None)


def _client_name(request: web.Request, resource: str | None) -> str | None:
    """The name the client used: challenges name it, since tokens are asked for by it."""
    for key in (REQUESTED_NAME, REPOSITORY):
        name = request.get(key)
        if isinstance(name, str):
            return name
    return resource


def _token_scope(permission: Permission, resource: str | None) -> str | None:
    """The scope a client should ask the token service for, to be allowed this request."""
    if permission.scope is Scope.REPOSITORY and resource is not None:
        wanted = {Action.PUSH: "pull,push", Action.DELETE: "delete"}.get(
            permission.action,  # type: ignore[arg-type]
            "pull",
        )
        return f"repository:{resource}:{wanted}"
    if permission.action is SystemAction.CATALOG:
        return "registry:catalog:*"
    return None


async def _authorize(
    request: web.Request,
    iam: IamServices,
    caller: Caller,
    permission: Permission,
    resource: str | None,
) -> None:
    subject = caller.subject
    anonymous = subject.kind == "anonymous"
    action = permission.action
    if permission.scope is Scope.REGISTRY:
        assert isinstance(action, SystemAction)
        if action is SystemAction.PING:
            allowed = caller.token is not None or not anonymous
        elif action is SystemAction.CATALOG and caller.token is not None:
            allowed = caller.token.allows("registry", "catalog", "*")
        else:
            # Without a token, anonymous callers are challenged even for the catalog: a client
            # that signs in on challenge must get the chance to see its private repositories.
            access = await iam.threads.run(iam.identity.access_of, subject)
            allowed = not anonymous and decide_system(access, action)
        if not allowed:
            _deny(request, iam, caller, permission, resource, "not allowed")
        return
    assert isinstance(action, Action)
    if permission.scope is Scope.PROJECT_QUERY and resource is None:
        access = await iam.threads.run(iam.identity.access_of, subject)
        if not decide_system(access, SystemAction.ADMIN):
            _deny(request, iam, caller, permission, resource, "name a project you may read")
        return
    assert resource is not None
    project = project_of(resource)
    if caller.token is not None and permission.scope is Scope.REPOSITORY:
        token_action = _TOKEN_ACTIONS.get(action, action.value)
        allowed = caller.token.allows("repository", resource, token_action)
    else:
        access = await iam.threads.run(iam.identity.access_of, subject)
        public = await iam.threads.run(iam.identity.public_projects)
        repository = resource if permission.scope is Scope.REPOSITORY else None
        allowed = decide(access, action, project, repository, public) or (
            repository is not None
            and action is Action.PUSH
            and may_push_new_project(access, repository)
        )
    if permission.scope is Scope.REPOSITORY and action is Action.PUSH:
        await _push_into_missing_project(request, iam, caller, resource, allowed=allowed)
        if allowed:
            await _refuse_push_into_proxy(request, iam, resource)
    if not allowed:
        _deny(
            request,
            iam,
            caller,
            permission,
            resource,
            f"{action.value} on {resource} is not allowed",
        )


async def _push_into_missing_project(
    request: web.Request, iam: IamServices, caller: Caller, repository: str, *, allowed: bool
) -> None:
    """A push whose project does not exist yet.

    Only a push that is itself allowed, by a subject that may create projects, creates it
    (private, the pusher as project admin). A caller who could be allowed by asking for a
    token with push gets the usual challenge; anyone else is refused naming the project.
    """
    project = project_of(repository)
    exists = iam.identity.project_exists_cached(project)
    if exists is None:
        exists = await iam.threads.run(iam.identity.project_exists, project)
    if exists or caller.subject.kind == "anonymous":
        return  # the normal decision (or the anonymous challenge) stands
    access = await iam.threads.run(iam.identity.access_of, caller.subject)
    may_create = may_push_new_project(access, repository)
    if not allowed and may_create:
        return  # challenged: a token with push would be granted
    created = (
        allowed
        and may_create
        and await iam.threads.run(
            iam.identity.create_project_on_push, caller.subject, project, request.remote
        )
    )
    if not created:
        raise AccessDenied(
            f"project {project!r} does not exist and you may not create projects; ask an"
            " administrator to create it",
            challenge=False,
        )


async def _refuse_push_into_proxy(request: web.Request, iam: IamServices, repository: str) -> None:
    """A proxy-cache project holds what its upstream has: nobody pushes into it."""
    project = project_of(repository)
    config = await request.app[SERVICES].proxy.config_for(project)
    if config is None:
        return
    message = (
        f"project {project} is a proxy cache of {config.endpoint.url} and refuses pushes;"
        " push to the upstream registry or to another project"
    )
    iam.events.publish(
        policy_denied(
            request[ACTOR],
            project,
            f"{request.method} {request.path}"[:500],
            point="push",
            policy="proxy-cache",
            reason=message,
        )
    )
    raise RegistryError(ErrorCode.DENIED, message)


def _deny(
    request: web.Request,
    iam: IamServices,
    caller: Caller,
    permission: Permission,
    resource: str | None,
    message: str,
) -> None:
    anonymous = caller.subject.kind == "anonymous" and caller.token is None
    token_lacks_scope = caller.token is not None and permission.scope in (
        Scope.REPOSITORY,
        Scope.REGISTRY,
    )
    if anonymous or token_lacks_scope:
        raise AccessDenied(
            "authentication required" if anonymous else "the token does not grant this",
            challenge=True,
            scope=_token_scope(permission, _client_name(request, resource)),
            error=None if anonymous else "insufficient_scope",
        )
    iam.events.publish(
        AccessEvent(
            "access:denied",
            request[ACTOR],
            "denied",
            project_of(resource) if resource else None,
            f"{request.method} {request.path}"[:500],
            {"action": str(permission.action), "reason": message},
        )
    )
    raise AccessDenied(message, challenge=False)


async def may(request: web.Request, permission: Permission, repository: str) -> bool:
    """A secondary decision inside a request, made the same way as the route's own."""
    iam = request.app[IAM]
    caller: Caller = request[CALLER]
    action = permission.action
    assert isinstance(action, Action)
    if caller.token is not None:
        return caller.token.allows(
            "repository", repository, _TOKEN_ACTIONS.get(action, action.value)
        )
    access = await iam.threads.run(iam.identity.access_of, caller.subject)
    public = await iam.threads.run(iam.identity.public_projects)
    return decide(access, action, project_of(repository), repository, public)


async def may_fetch_upstream(
    request: web.Request, repository: str, *, public_fetch: bool, challenge: bool
) -> bool:
    """May the caller bring new content into the proxy-cache project of `repository`?

    With a registry token, the token decides: the token service adds `upstream-fetch` to a
    token that may pull in a proxy-cache project when the caller holds that action. Otherwise
    the caller's roles and grants decide. In a public proxy-cache project that allows public
    fetches, whoever may pull may also fetch. An anonymous caller without a token is challenged
    rather than refused (with `challenge`), so a client that has credentials signs in and asks
    again.
    """
    iam = request.app[IAM]
    caller: Caller = request[CALLER]
    project = project_of(repository)
    public = await iam.threads.run(iam.identity.public_projects)
    if public_fetch and project in public and await may(request, PULL, repository):
        return True
    if caller.token is not None:
        return caller.token.allows("repository", repository, Action.UPSTREAM_FETCH.value)
    if caller.subject.kind == "anonymous":
        if not challenge:
            return False
        raise AccessDenied(
            "sign in to fetch content this proxy cache does not hold yet",
            challenge=True,
            scope=f"repository:{_client_name(request, repository)}:pull",
        )
    access = await iam.threads.run(iam.identity.access_of, caller.subject)
    return decide(access, Action.UPSTREAM_FETCH, project, repository, public)


async def pull_access(request: web.Request) -> PullAccess:
    """The access decision for a pull, made once here for the pull path (`PullService`): the
    repositories that may serve it (a virtual project's members the caller may pull, each
    decided as any pull) and, for proxy-cache ones, whether the caller may fetch upstream."""
    name = request[REPOSITORY]
    virtual = request.get(VIRTUAL)
    if virtual is None:
        sources: tuple[str, ...] = (name,)  # pull on it was decided by access_middleware
    else:
        sources = tuple(
            [
                target
                for target in virtual.member_repositories(name)
                if await may(request, PULL, target)
            ]
        )
    cache = request.app[SERVICES].proxy
    fetch: dict[str, FetchRight] = {}
    for target in sources:
        proxy = await cache.config_for(project_of(target))
        if proxy is None:
            continue
        try:
            allowed = await may_fetch_upstream(
                request, target, public_fetch=proxy.anonymous_fetch, challenge=True
            )
        except AccessDenied:
            fetch[target] = FetchRight.SIGN_IN
            continue
        fetch[target] = FetchRight.ALLOWED if allowed else FetchRight.REFUSED
    return PullAccess(name, request[ACTOR], virtual, sources, fetch)


def sign_in_challenge(request: web.Request) -> AccessDenied:
    """An anonymous caller asked for what only a signed-in caller may fetch: challenge it for
    the name it asked for."""
    return AccessDenied(
        "sign in to fetch content this proxy cache does not hold yet",
        challenge=True,
        scope=f"repository:{_client_name(request, request[REPOSITORY])}:pull",
    )
