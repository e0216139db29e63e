"""The management API's endpoints, called in this process: what the command line runs.

A management command names an API route (method and path template) and gives its path
parameters, body and query; this module runs that route's own endpoint function on an
application built like the server's (without its background jobs), on the same data directory.
The command line and the REST API therefore call the same services, refuse the same input with
the same message, emit the same domain events (audit entries included) and answer with the same
JSON. Only the access decision is left out: whoever runs the command can read the data directory
anyway, so it acts as the host's operator, like every other management command.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, cast
from urllib.parse import quote, urlencode

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from moorage.config import Settings
from moorage.domain.access import Action
from moorage.domain.errors import RegistryError
from moorage.domain.events import Actor
from moorage.domain.names import project_of, validate_repository_name
from moorage.http.access import ACTOR, CALLER, PROJECT, REPOSITORY, Scope, repository_in_path
from moorage.http.api import RESOURCE_ROUTES
from moorage.http.api.framework import (
    ApiModel,
    ApiRoute,
    Call,
    Download,
    Page,
    Reply,
    parse_query,
    validate_body,
)
from moorage.http.authn import Caller
from moorage.http.errors import ApiProblem
from moorage.http.state import ROUTING
from moorage.services.access.credentials import Subject
from moorage.services.errors import IdentityError

_PARAMETER = re.compile(r"\{([a-z_]+)(?::[^{}]*(?:\{[^{}]*\}[^{}]*)*)?\}")
_MAX_PAGES = 10_000  # a listing that never ends is a bug, not a long list


class LocalApiError(Exception):
    """A refusal as the API reports it: status, detail, and the offending fields if any."""

    def __init__(
        self,
        status: int,
        detail: str,
        errors: Sequence[Mapping[str, str]] | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = errors
        self.code = code

    def problem(self) -> dict[str, Any]:
        """The API's problem JSON (RFC 9457) for this refusal."""
        document: dict[str, Any] = {"status": self.status, "detail": self.detail}
        if self.code is not None:
            document["code"] = self.code
        if self.errors is not None:
            document["errors"] = [dict(item) for item in self.errors]
        return document


def route(method: str, path: str) -> ApiRoute:
    """The declared route with this method and path template (as written in the route table)."""
    for candidate in RESOURCE_ROUTES:
        if candidate.method == method and candidate.path == path:
            return candidate
    raise KeyError(f"no API route {method} {path}")


def path_parameters(path: str) -> list[str]:
    """The names of a path template's parameters, in order."""
    return _PARAMETER.findall(path)


def _concrete(path: str, params: Mapping[str, str]) -> str:
    return _PARAMETER.sub(lambda match: quote(params[match.group(1)], safe="/"), path)


class LocalApi:
    """Runs API endpoints against one application, acting as `actor`."""

    def __init__(self, app: web.Application, actor: Actor) -> None:
        self._app = app
        self._actor = actor

    async def call(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
        query: Mapping[str, str] | None = None,
    ) -> Any:
        """The endpoint's answer as the API would send it: a JSON document, every page of a
        paged listing as one list, the bytes of a download, or None for "no content"."""
        declared = route(method, path)
        given = dict(params or {})
        try:
            parsed_body = (
                validate_body(declared.body, json.dumps(body or {}))
                if declared.body is not None
                else None
            )
            query_values = {k: v for k, v in (query or {}).items() if v is not None}
            items: list[Any] = []
            for _ in range(_MAX_PAGES):
                request = await self._request(declared, given, query_values)
                parsed_query = (
                    parse_query(request, declared.query) if declared.query is not None else None
                )
                result = await declared.endpoint(Call(request, parsed_body, parsed_query))
                if not isinstance(result, Page):
                    return _json(result)
                items.extend(_dump(item) for item in result.items)
                if result.next is None:
                    return items
                query_values = {**query_values, **result.next}
            raise LocalApiError(500, "the listing did not end")
        except ApiProblem as problem:
            raise LocalApiError(problem.status, problem.detail, problem.errors) from None
        except RegistryError as error:
            raise LocalApiError(error.status, error.message, code=str(error.code)) from None
        except IdentityError as error:
            raise LocalApiError(error.status, str(error)) from None

    async def _request(
        self, declared: ApiRoute, params: Mapping[str, str], query: Mapping[str, str]
    ) -> web.Request:
        target = _concrete(declared.path, params)
        if query:
            target = f"{target}?{urlencode(query)}"
        request = make_mocked_request(
            declared.method, target, app=self._app, match_info=dict(params)
        )
        request[ACTOR] = self._actor
        # No subject: the services read a missing grantor as the host's operator, who may
        # grant anything (see `assert_may_grant`), exactly as the other management commands.
        request[CALLER] = Caller(subject=cast(Subject, None))
        scope = declared.permission.scope
        if scope is Scope.PROJECT:
            request[PROJECT] = params["project"]
        elif scope is Scope.PROJECT_QUERY:
            request[PROJECT] = query.get("project") or None
        elif scope is Scope.REPOSITORY:
            name = validate_repository_name(repository_in_path(params))
            action = declared.permission.action
            if action is not Action.PULL and isinstance(action, Action):
                # A write into a virtual project lands on its push member, as over HTTP.
                name = await self._app[ROUTING].names.write_target(name, action)
            request[REPOSITORY] = name
            request[PROJECT] = project_of(name)
        return request


def _dump(model: ApiModel) -> dict[str, Any]:
    return model.model_dump(mode="json", by_alias=True)


def _json(result: object) -> Any:
    if result is None:
        return None
    if isinstance(result, Reply):
        return _dump(result.result)
    if isinstance(result, Download):
        return result.body
    if isinstance(result, ApiModel):
        return _dump(result)
    if isinstance(result, Sequence):
        return [_dump(item) for item in result]
    raise TypeError(f"unexpected endpoint result {type(result).__name__}")


@contextlib.asynccontextmanager
async def local_api(settings: Settings, actor: Actor) -> AsyncIterator[LocalApi]:
    """The application on `settings`' data, started without background jobs."""
    from moorage.http.app import build_app

    app = build_app(settings, run_jobs=False)
    app.freeze()
    await app.startup()
    try:
        yield LocalApi(app, actor)
    finally:
        # Flushes the audit entries written meanwhile and closes the database; bounded like a
        # server's shutdown, so a background task that does not stop cannot hang the command.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(settings.shutdown_timeout_seconds):
                await app.cleanup()
