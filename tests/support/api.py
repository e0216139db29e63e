"""Helpers for the management API tests: clients, fresh accounts, problem checks, polling."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from typing import Any

import httpx

from tests.support.auth import ADMIN_PASSWORD, ADMIN_USER
from tests.support.server import RegistryProcess
from tests.support.wait import wait_until

API = "/api/v1"
PASSWORD = "a-long-enough-password"
PROBLEM_JSON = "application/problem+json"

_serial = itertools.count()


def api_client(
    server: RegistryProcess, username: str | None = ADMIN_USER, password: str = ADMIN_PASSWORD
) -> httpx.Client:
    auth = (username, password) if username is not None else None
    return httpx.Client(base_url=f"{server.url}{API}", auth=auth, timeout=30)


def bearer_client(server: RegistryProcess, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=f"{server.url}{API}", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )


def unique(prefix: str) -> str:
    """A name (user, group, project, robot) no other test uses, valid everywhere."""
    return f"{prefix}-{os.getpid()}-{next(_serial)}"


def create_user(admin: httpx.Client, prefix: str = "user", **fields: Any) -> str:
    username = unique(prefix)
    response = admin.post("/users", json={"username": username, "password": PASSWORD, **fields})
    assert response.status_code == 201, response.text
    return username


def create_project(admin: httpx.Client, prefix: str = "proj", public: bool = False) -> str:
    name = unique(prefix)
    response = admin.post("/projects", json={"name": name, "public": public})
    assert response.status_code == 201, response.text
    return name


def set_role(admin: httpx.Client, project: str, username: str, role: str) -> None:
    response = admin.put(f"/projects/{project}/members/user/{username}", json={"role": role})
    assert response.status_code == 200, response.text


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """An RFC 9457 problem with the expected status; returns its body."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith(PROBLEM_JSON)
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["type"] == "about:blank"
    assert isinstance(body["title"], str)
    assert isinstance(body["detail"], str)
    assert body["detail"]
    return body


def eventually(check: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    """`wait_until` with this module's argument names; identity and credential caches expire
    within seconds."""
    wait_until(check, timeout, what, interval=0.25)


def names(response: httpx.Response, key: str = "name") -> list[str]:
    assert response.status_code == 200, response.text
    return [item[key] for item in response.json()]


def all_pages(client: httpx.Client, path: str, limit: int) -> list[dict[str, Any]]:
    """Every item of a paged list, following the Link headers."""
    items: list[dict[str, Any]] = []
    url: str | None = f"{path}?limit={limit}"
    while url is not None:
        response = client.get(url)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page) <= limit
        items.extend(page)
        link = response.headers.get("Link")
        url = link.split(";")[0].strip("<>").removeprefix(API) if link else None
    return items
