"""The token service (`/service/token`): Docker token authentication and its OAuth2 form.

It authenticates the caller (Basic credentials, a refresh token, or nobody) and returns a
short-lived signed token granting the intersection of the requested scopes and what the caller
may do, as decided by `moorage.domain.access.decide`. Asking for more is not an error: the
token simply carries less, and the registry refuses what the token does not grant.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any, Final

from aiohttp import web

from moorage.domain.access import (
    Action,
    SubjectAccess,
    decide,
    may_push_new_project,
    within_limit,
)
from moorage.domain.names import project_of
from moorage.domain.scopes import Scope, ScopeError, parse_scopes
from moorage.http.state import IAM, ROUTING, IamServices
from moorage.services.access.identity import (
    AuthenticationError,
    IdentityService,
    Subject,
    ThrottledError,
)
from moorage.services.distribution.mirror import Aliases

_SCOPE_ACTIONS: Final = {"pull": Action.PULL, "push": Action.PUSH, "delete": Action.DELETE}
_MAX_FORM_BYTES: Final = 16 * 1024


def _token_error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    body = {
        "errors": [{"code": code, "message": message}],
        "error": code.lower(),
        "error_description": message,
    }
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type="application/json",
        headers=headers,
    )


async def get_token(request: web.Request) -> web.Response:
    iam = request.app[IAM]
    params = request.query
    try:
        caller = await iam.authenticator.caller(request, allow_basic=True)
    except ThrottledError as error:
        return _token_error(
            429, "TOOMANYREQUESTS", str(error), {"Retry-After": str(error.retry_after)}
        )
    except AuthenticationError:
        return _token_error(
            401,
            "UNAUTHORIZED",
            "invalid username or password",
            {"WWW-Authenticate": 'Basic realm="moorage"'},
        )
    if caller.token is not None:
        # A registry token cannot be traded for another: sign in again.
        return _token_error(401, "UNAUTHORIZED", "present credentials, not a registry token")
    return await _issue(
        request,
        iam,
        caller.subject,
        params.get("service"),
        params.getall("scope", []),
        offline=params.get("offline_token") == "true",
    )


async def post_token(request: web.Request) -> web.Response:
    """OAuth2 token requests (`grant_type=password` or `refresh_token`), as newer docker sends."""
    iam = request.app[IAM]
    if request.content_length is not None and request.content_length > _MAX_FORM_BYTES:
        return _token_error(413, "SIZE_INVALID", "form too large")
    form = await request.post()
    grant_type = str(form.get("grant_type", ""))
    scopes = [str(value) for value in form.getall("scope", [])]
    successor: str | None = None
    try:
        if grant_type == "password":
            subject = await iam.threads.run(
                iam.identity.authenticate,
                str(form.get("username", "")),
                str(form.get("password", "")),
                request.remote,
            )
        elif grant_type == "refresh_token":
            redeemed = await iam.threads.run(
                iam.refresh_tokens.redeem, str(form.get("refresh_token", "")), request.remote
            )
            subject, successor = redeemed.subject, redeemed.successor
        else:
            return _token_error(400, "UNSUPPORTED", "grant_type must be password or refresh_token")
    except ThrottledError as error:
        return _token_error(
            429, "TOOMANYREQUESTS", str(error), {"Retry-After": str(error.retry_after)}
        )
    except AuthenticationError:
        return _token_error(401, "UNAUTHORIZED", "invalid credentials")
    offline = grant_type == "password" and form.get("access_type") == "offline"
    return await _issue(
        request,
        iam,
        subject,
        str(form.get("service", "")) or None,
        scopes,
        offline=offline,
        successor=successor,
    )


async def _issue(
    request: web.Request,
    iam: IamServices,
    subject: Subject,
    service: str | None,
    raw_scopes: list[str],
    *,
    offline: bool,
    successor: str | None = None,
) -> web.Response:
    if service is not None and service != iam.tokens.service:
        return _token_error(
            400, "DENIED", f"this registry's service name is {iam.tokens.service!r}"
        )
    try:
        scopes = parse_scopes(raw_scopes)
    except ScopeError as error:
        return _token_error(400, "DENIED", str(error))
    access = await iam.threads.run(
        granted_access,
        iam.identity,
        subject,
        scopes,
        lambda project: iam.proxies.config_of(project) is not None,
        request.app[ROUTING].names.aliases,
    )
    token, expires_in, issued_at = await iam.threads.run(iam.tokens.issue, subject, access)
    body: dict[str, Any] = {
        "token": token,
        "access_token": token,
        "expires_in": expires_in,
        "issued_at": issued_at.isoformat(),
    }
    refresh = successor
    if offline and refresh is None:
        refresh = await iam.threads.run(iam.refresh_tokens.issue, subject)
    if refresh is not None:
        body["refresh_token"] = refresh
    return web.Response(
        body=json.dumps(body).encode(),
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


def granted_access(
    identity: IdentityService,
    subject: Subject,
    scopes: list[Scope],
    is_proxy: Callable[[str], bool] = lambda _project: False,
    aliases: Callable[[str], Aliases] = lambda _name: Aliases(),
) -> list[dict[str, Any]]:
    """The intersection of the requested scopes and what `subject` may do.

    In a proxy-cache project (`is_proxy`), a token that may pull also carries `upstream-fetch`
    when the subject holds it: clients never ask for it, the registry needs it to decide who
    may bring new content in from the upstream.

    A name can stand for other repositories (`aliases`): a virtual project's members, or the
    mirror's repository of a name without a project. Clients ask for the name they use; the
    token also names each real repository it maps to, with what the subject may do there (for
    a mirrored name, pulls only), so the registry checks the real repository against it.
    """
    access = identity.access_of(subject)
    public = identity.public_projects()
    granted: list[dict[str, Any]] = []
    for scope in scopes:
        if scope.type == "registry":
            granted.append({"type": "registry", "name": scope.name, "actions": ["*"]})
            continue
        project = project_of(scope.name)
        actions = {
            name
            for name in scope.actions
            if decide(access, _SCOPE_ACTIONS[name], project, scope.name, public)
        }
        # A push into a project that does not exist yet: allowed when the caller may create
        # projects (within its credential's limits); the registry creates the project (private,
        # caller as admin) on the first write.
        if (
            "push" in scope.actions
            and "push" not in actions
            and subject.kind != "anonymous"
            and may_push_new_project(access, scope.name)
            and not identity.project_exists(project)
        ):
            actions.add("push")
            if "pull" in scope.actions and within_limit(access, Action.PULL, scope.name):
                actions.add("pull")
        if (
            "pull" in actions
            and decide(access, Action.UPSTREAM_FETCH, project, scope.name, public)
            and is_proxy(project)
        ):
            actions.add(Action.UPSTREAM_FETCH.value)
        if actions:
            granted.append({"type": "repository", "name": scope.name, "actions": sorted(actions)})
        mapped = aliases(scope.name)
        pull_only = scope.actions & {"pull"}
        for name, wanted in [
            *((member, scope.actions) for member in mapped.members),
            *((mirror, pull_only) for mirror in mapped.mirrors),
        ]:
            alias = _granted_actions(access, public, name, wanted, is_proxy)
            if alias:
                granted.append({"type": "repository", "name": name, "actions": sorted(alias)})
    return granted


def _granted_actions(
    access: SubjectAccess,
    public: frozenset[str],
    name: str,
    wanted: Iterable[str],
    is_proxy: Callable[[str], bool],
) -> set[str]:
    project = project_of(name)
    actions = {
        action for action in wanted if decide(access, _SCOPE_ACTIONS[action], project, name, public)
    }
    if (
        "pull" in actions
        and decide(access, Action.UPSTREAM_FETCH, project, name, public)
        and is_proxy(project)
    ):
        actions.add(Action.UPSTREAM_FETCH.value)
    return actions
