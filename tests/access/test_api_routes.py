"""The route table: every route of the built application declares a permission, and the API's
input limits hold on the real server."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from moorage.config import Settings, load_settings
from moorage.http.access import PERMISSIONS, Scope
from moorage.http.api import API_ROUTES
from moorage.http.app import build_app
from moorage.server import prepare_data
from tests.support.api import assert_problem
from tests.support.auth import ADMIN_PASSWORD, ADMIN_USER, basic_header


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    settings = load_settings(
        None, {"data_dir": tmp_path / "data"}, environ={"MOORAGE_ADMIN_PASSWORD": ADMIN_PASSWORD}
    )
    prepare_data(settings)
    return settings


@pytest.fixture
def app(settings: Settings) -> web.Application:
    return build_app(settings, run_jobs=False)


def test_every_route_of_the_application_declares_a_permission(app: web.Application) -> None:
    declared = app[PERMISSIONS]
    routes = list(app.router.routes())
    missing = [
        f"{r.method} {r.resource.canonical if r.resource else '?'}"
        for r in routes
        if r not in declared
    ]
    assert missing == []
    api = [
        route for route in routes if route.resource and route.resource.canonical.startswith("/api/")
    ]
    assert len(api) == len(API_ROUTES)
    public = {
        route.resource.canonical
        for route in api
        if route.resource is not None and declared[route].scope is Scope.PUBLIC
    }
    # The API document, and the public keys that verify promotion records.
    assert public == {"/api/v1/openapi.json", "/api/v1/promotions/keys"}


def test_a_route_without_a_declaration_is_refused(app: web.Application) -> None:
    async def undeclared(request: web.Request) -> web.Response:
        return web.json_response({"leaked": True})

    app.router.add_get("/api/v1/undeclared", undeclared)

    async def call() -> tuple[int, str]:
        async with TestClient(TestServer(app)) as client:
            admin = {"Authorization": basic_header(ADMIN_USER, ADMIN_PASSWORD)}
            response = await client.get("/api/v1/undeclared", headers=admin)
            return response.status, await response.text()

    status, body = asyncio.run(call())
    assert status == 403
    assert "leaked" not in body


def test_bodies_larger_than_the_cap_are_refused(admin_api: httpx.Client) -> None:
    padding = "x" * 64 * 1024  # the management API takes JSON bodies of up to 64 KiB
    declared = admin_api.post("/groups", json={"name": "big", "padding": padding})
    assert "limited to" in assert_problem(declared, 413)["detail"]

    def chunks() -> Iterator[bytes]:
        yield b'{"name": "big", "padding": "'
        for _ in range(20):
            yield b"x" * 8192
        yield b'"}'

    streamed = admin_api.post(
        "/groups", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert_problem(streamed, 413)
    assert admin_api.get("/groups/big").status_code == 404


def test_unknown_api_paths_and_methods_are_problems(admin_api: httpx.Client) -> None:
    assert_problem(admin_api.get("/no-such-thing"), 404)
    not_allowed = admin_api.put("/openapi.json")
    assert_problem(not_allowed, 405)
    assert "GET" in not_allowed.headers["Allow"]
    assert_problem(admin_api.get("/projects/UPPER/members/robot/x"), 404)
