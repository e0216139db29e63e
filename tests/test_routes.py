"""The route table: every route declares a permission, and an undeclared route fails closed."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from moorage.config import load_settings
from moorage.domain.events import Actor
from moorage.http.access import (
    CATALOG,
    DELETE,
    PERMISSIONS,
    PING,
    PULL,
    PUSH,
    Permission,
    Scope,
)
from moorage.http.app import build_app
from moorage.http.routes import ROUTES
from moorage.server import prepare_data

DIGEST = "sha256:" + "0" * 64


def make_app(data_dir: Path, **kwargs: Any) -> web.Application:
    settings = load_settings(flags={"data_dir": data_dir}, environ={})
    prepare_data(settings)  # what `moorage serve` does before it builds the application
    return build_app(settings, run_jobs=False, **kwargs)


@dataclass
class Answer:
    status: int
    body: Any


def call(app: web.Application, requests: list[tuple[str, str]]) -> list[Answer]:
    """Serve `app` on a loopback port and send the requests in order."""

    async def run() -> list[Answer]:
        answers = []
        async with TestClient(TestServer(app)) as client:
            for method, path in requests:
                response = await client.request(method, path)
                body = await response.json() if response.content_type.endswith("json") else None
                answers.append(Answer(response.status, body))
        return answers

    return asyncio.run(run())


def codes(answer: Answer) -> list[str]:
    return [error["code"] for error in answer.body["errors"]]


# -- the table


def test_every_registered_route_declares_a_permission(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    permissions = app[PERMISSIONS]
    routes = list(app.router.routes())
    assert len(routes) == len(ROUTES)
    undeclared = [describe(route) for route in routes if route not in permissions]
    assert undeclared == []


def describe(route: web.AbstractRoute) -> str:
    return f"{route.method} {route.resource.canonical if route.resource is not None else '?'}"


def test_route_table_has_no_duplicates() -> None:
    keys = [(route.method, route.path) for route in ROUTES]
    assert len(keys) == len(set(keys))


def test_repository_routes_and_only_those_are_repository_scoped() -> None:
    for route in ROUTES:
        expected = Scope.REPOSITORY if "{name" in route.path else Scope.REGISTRY
        assert route.permission.scope is expected, route


def expected_permission(method: str, path: str) -> Permission:
    """What each endpoint should require, derived from the spec's operations."""
    if path == "/v2/":
        return PING
    if path == "/v2/_catalog":
        return CATALOG
    if "/blobs/uploads/" in path:
        return PUSH  # cancelling an upload is part of pushing
    if method in ("GET", "HEAD"):
        return PULL
    if method == "DELETE":
        return DELETE
    return PUSH


def test_each_route_requires_the_permission_its_operation_needs() -> None:
    for route in ROUTES:
        assert route.permission == expected_permission(route.method, route.path), route


def test_every_method_the_spec_names_is_routed() -> None:
    routed = {(route.method, route.path.replace("{name:.+}", "<name>")) for route in ROUTES}
    spec_endpoints = [
        ("GET", "/v2/"),
        ("GET", "/v2/<name>/blobs/{digest:[^/]+}"),
        ("HEAD", "/v2/<name>/blobs/{digest:[^/]+}"),
        ("GET", "/v2/<name>/manifests/{reference:[^/]+}"),
        ("HEAD", "/v2/<name>/manifests/{reference:[^/]+}"),
        ("PUT", "/v2/<name>/manifests/{reference:[^/]+}"),
        ("DELETE", "/v2/<name>/manifests/{reference:[^/]+}"),
        ("DELETE", "/v2/<name>/blobs/{digest:[^/]+}"),
        ("POST", "/v2/<name>/blobs/uploads/"),
        ("PATCH", "/v2/<name>/blobs/uploads/{upload_id:[A-Za-z0-9_-]+}"),
        ("PUT", "/v2/<name>/blobs/uploads/{upload_id:[A-Za-z0-9_-]+}"),
        ("GET", "/v2/<name>/blobs/uploads/{upload_id:[A-Za-z0-9_-]+}"),
        ("DELETE", "/v2/<name>/blobs/uploads/{upload_id:[A-Za-z0-9_-]+}"),
        ("GET", "/v2/<name>/tags/list"),
        ("GET", "/v2/<name>/referrers/{digest:[^/]+}"),
    ]
    assert [endpoint for endpoint in spec_endpoints if endpoint not in routed] == []


# -- enforcement, through a served application


async def _leaked(request: web.Request) -> web.Response:
    raise AssertionError("an undeclared route's handler must never run")


def test_route_without_a_declaration_is_refused(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    app.router.add_route("GET", "/v2/undeclared", _leaked)
    app.router.add_route("POST", "/v2/{name:.+}/undeclared", _leaked)
    undeclared_get, undeclared_post, declared = call(
        app, [("GET", "/v2/undeclared"), ("POST", "/v2/some/repo/undeclared"), ("GET", "/v2/")]
    )
    for answer in (undeclared_get, undeclared_post):
        assert answer.status == 403
        assert codes(answer) == ["DENIED"]
    # The same application serves its declared routes.
    assert declared.status == 200
    assert declared.body == {}


@dataclass
class RecordingDenier:
    """Refuses everything, remembering what each request asked for."""

    asked: list[tuple[Permission, str | None]] = field(default_factory=list)
    actor: Actor = field(default_factory=Actor)

    async def authenticate(self, request: web.Request) -> Actor:
        return self.actor

    async def authorize(self, actor: Actor, permission: Permission, repository: str | None) -> bool:
        self.asked.append((permission, repository))
        return False


REQUESTS: list[tuple[str, str, Permission, str | None]] = [
    ("GET", "/v2/", PING, None),
    ("GET", "/v2/_catalog", CATALOG, None),
    ("GET", "/v2/a/b/tags/list", PULL, "a/b"),
    ("GET", f"/v2/a/b/referrers/{DIGEST}", PULL, "a/b"),
    ("GET", "/v2/a/b/manifests/latest", PULL, "a/b"),
    ("HEAD", "/v2/a/b/manifests/latest", PULL, "a/b"),
    ("PUT", "/v2/a/b/manifests/latest", PUSH, "a/b"),
    ("DELETE", "/v2/a/b/manifests/latest", DELETE, "a/b"),
    ("POST", "/v2/a/b/blobs/uploads/", PUSH, "a/b"),
    ("GET", "/v2/a/b/blobs/uploads/session", PUSH, "a/b"),
    ("PATCH", "/v2/a/b/blobs/uploads/session", PUSH, "a/b"),
    ("PUT", "/v2/a/b/blobs/uploads/session", PUSH, "a/b"),
    ("DELETE", "/v2/a/b/blobs/uploads/session", PUSH, "a/b"),
    ("GET", f"/v2/a/b/blobs/{DIGEST}", PULL, "a/b"),
    ("HEAD", f"/v2/a/b/blobs/{DIGEST}", PULL, "a/b"),
    ("DELETE", f"/v2/a/b/blobs/{DIGEST}", DELETE, "a/b"),
]


@pytest.mark.parametrize(
    ("actor", "status", "code"),
    [(Actor(), 401, "UNAUTHORIZED"), (Actor(name="alice", kind="user"), 403, "DENIED")],
)
def test_every_request_asks_the_authorizer_before_any_handler(
    tmp_path: Path, actor: Actor, status: int, code: str
) -> None:
    authorizer = RecordingDenier(actor=actor)
    app = make_app(tmp_path, authorizer=authorizer)
    answers = call(app, [(method, path) for method, path, _, _ in REQUESTS])
    for answer, (method, path, _, _) in zip(answers, REQUESTS, strict=True):
        assert answer.status == status, (method, path)
        if method != "HEAD":
            assert codes(answer) == [code], (method, path)
    assert authorizer.asked == [(permission, name) for _, _, permission, name in REQUESTS]


def test_invalid_name_is_refused_before_authorization(tmp_path: Path) -> None:
    authorizer = RecordingDenier()
    app = make_app(tmp_path, authorizer=authorizer)
    (answer,) = call(app, [("GET", "/v2/Bad/Name/tags/list")])
    assert answer.status == 400
    assert codes(answer) == ["NAME_INVALID"]
    assert authorizer.asked == []


def test_unrouted_path_is_not_found_without_authorization(tmp_path: Path) -> None:
    authorizer = RecordingDenier()
    app = make_app(tmp_path, authorizer=authorizer)
    not_found, not_allowed = call(app, [("GET", "/v2/a/b/nowhere"), ("POST", "/v2/a/b/tags/list")])
    assert (not_found.status, codes(not_found)) == (404, ["NAME_UNKNOWN"])
    assert (not_allowed.status, codes(not_allowed)) == (405, ["UNSUPPORTED"])
    assert authorizer.asked == []
