"""The audit log through the management API: every change is recorded, searchable and paged,
project members see their project's part, secrets never appear."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from tests.support.api import (
    PASSWORD,
    api_client,
    assert_problem,
    create_project,
    create_user,
    eventually,
    set_role,
    unique,
)
from tests.support.auth import ADMIN_USER
from tests.support.server import RegistryProcess


def _entries(
    client: httpx.Client, path: str = "/audit-logs", **params: Any
) -> list[dict[str, Any]]:
    response = client.get(path, params={"limit": 100, **params})
    assert response.status_code == 200, response.text
    entries: list[dict[str, Any]] = response.json()
    return entries


def _recorded(client: httpx.Client, action: str, resource: str) -> dict[str, Any] | None:
    for entry in _entries(client, action=action):
        if entry["resource"] == resource:
            return entry
    return None


def _is_recorded(client: httpx.Client, action: str, resource: str) -> Callable[[], bool]:
    return lambda: _recorded(client, action, resource) is not None


def test_every_change_through_the_api_is_audited(admin_api: httpx.Client) -> None:
    user, project, group = create_user(admin_api), create_project(admin_api), unique("team")
    admin_api.post("/groups", json={"name": group})
    admin_api.put(f"/groups/{group}/members/{user}")
    set_role(admin_api, project, user, "developer")
    robot = admin_api.post(
        f"/projects/{project}/robots",
        json={"name": "ci", "permissions": [{"project": project, "actions": ["pull"]}]},
    ).json()
    rotated = admin_api.post(f"/projects/{project}/robots/ci/rotate").json()
    token = admin_api.post("/users/me/tokens", json={"name": unique("t")}).json()
    admin_api.patch(f"/projects/{project}", json={"public": True})
    admin_api.put(f"/users/{user}/password", json={"newPassword": "a-different-password"})

    expected = [
        ("user:create", f"user:{user}"),
        ("project:create", f"project:{project}"),
        ("group:create", f"group:{group}"),
        ("group:member-add", f"group:{group}"),
        ("member:set", f"project:{project}"),
        ("robot:create", f"robot:{robot['name']}"),
        ("robot:rotate", f"robot:{robot['name']}"),
        ("token:create", f"token:{ADMIN_USER}/{token['name']}"),
        ("project:update", f"project:{project}"),
        ("user:password", f"user:{user}"),
    ]
    for action, resource in expected:
        eventually(_is_recorded(admin_api, action, resource), what=f"{action} on {resource}")
    member = _recorded(admin_api, "member:set", f"project:{project}")
    assert member is not None
    assert member["actor"] == ADMIN_USER
    assert member["actorKind"] == "user"
    assert member["project"] == project
    assert member["details"] == {"kind": "user", "member": user, "role": "developer"}

    everything = admin_api.get("/audit-logs", params={"limit": 100}).text
    for secret in (robot["secret"], rotated["secret"], token["token"], "a-different-password"):
        assert secret not in everything


def test_the_log_is_searched_by_actor_action_time_and_paged_backwards(
    api_registry: RegistryProcess, admin_api: httpx.Client
) -> None:
    user, project = create_user(admin_api), create_project(admin_api)
    set_role(admin_api, project, user, "project-admin")
    with api_client(api_registry, user, PASSWORD) as client:
        for _ in range(5):
            client.put(f"/projects/{project}/members/user/{ADMIN_USER}", json={"role": "guest"})
    eventually(
        lambda: len(_entries(admin_api, actor=user, action="member:set")) == 5,
        what="five entries by the user",
    )
    entries = _entries(admin_api, actor=user, action="member:set")
    assert all(entry["actor"] == user for entry in entries)
    ids = [entry["id"] for entry in entries]
    assert ids == sorted(ids, reverse=True)

    first = admin_api.get("/audit-logs", params={"actor": user, "action": "member:set", "limit": 2})
    assert [entry["id"] for entry in first.json()] == ids[:2]
    link = first.headers["Link"]
    assert f"before={ids[1]}" in link
    assert f"actor={user}" in link
    paged: list[int] = []
    url: str | None = f"/audit-logs?actor={user}&action=member:set&limit=2"
    while url is not None:
        page = admin_api.get(url)
        paged += [entry["id"] for entry in page.json()]
        next_link = page.headers.get("Link")
        url = next_link.split(";")[0].strip("<>").removeprefix("/api/v1") if next_link else None
    assert paged == ids

    oldest = datetime.fromisoformat(entries[-1]["at"])
    after_oldest = _entries(
        admin_api,
        actor=user,
        action="member:set",
        since=(oldest + timedelta(microseconds=1)).isoformat(),
    )
    assert [entry["id"] for entry in after_oldest] == ids[:-1]
    assert _entries(admin_api, actor=user, until=oldest.isoformat()) == [
        e for e in _entries(admin_api, actor=user) if datetime.fromisoformat(e["at"]) < oldest
    ]
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert _entries(admin_api, actor=user, since=tomorrow) == []
    naive_tomorrow = (datetime.now(UTC) + timedelta(days=1)).replace(tzinfo=None).isoformat()
    assert _entries(admin_api, actor=user, since=naive_tomorrow) == []


def test_project_members_read_their_projects_audit_log_only(
    api_registry: RegistryProcess, admin_api: httpx.Client
) -> None:
    mine, other = create_project(admin_api), create_project(admin_api)
    user = create_user(admin_api)
    set_role(admin_api, mine, user, "guest")
    with api_client(api_registry, user, PASSWORD) as client:
        eventually(
            lambda: client.get(f"/projects/{mine}/audit-logs").status_code == 200,
            what="guest reads the project's audit log",
        )
        eventually(
            lambda: len(_entries(client, f"/projects/{mine}/audit-logs")) >= 2,
            what="project entries recorded",
        )
        own = _entries(client, f"/projects/{mine}/audit-logs")
        assert {entry["project"] for entry in own} == {mine}
        assert {entry["action"] for entry in own} >= {"project:create", "member:set"}
        assert _entries(client, project=mine) == own

        assert_problem(client.get("/audit-logs"), 403)
        assert_problem(client.get("/audit-logs", params={"project": other}), 403)
        assert_problem(client.get(f"/projects/{other}/audit-logs"), 403)
        # The project that is authorized is the project that is searched.
        assert_problem(client.get(f"/audit-logs?project={mine}&project={other}"), 400)


def test_bad_audit_queries_are_problems(admin_api: httpx.Client) -> None:
    for params in (
        {"since": "yesterday"},
        {"until": "2024-13-01T00:00:00Z"},
        {"since": "0001-01-01T00:00:00+05:00"},
        {"before": "0"},
        {"before": str(2**63)},
        {"limit": "500"},
        {"project": "Not A Project"},
    ):
        body = assert_problem(admin_api.get("/audit-logs", params=params), 400)
        assert body["errors"][0]["field"] == next(iter(params))


def test_rotating_the_signing_key_is_audited(
    api_registry: RegistryProcess, admin_api: httpx.Client
) -> None:
    rotated = admin_api.post("/signing-keys/rotate")
    assert rotated.status_code == 200
    kid = rotated.json()["kid"]
    eventually(_is_recorded(admin_api, "signing-key:rotate", f"signing-key:{kid}"))
    entry = _recorded(admin_api, "signing-key:rotate", f"signing-key:{kid}")
    assert entry is not None
    assert entry["details"] == {"kid": kid}
    user = create_user(admin_api)
    with api_client(api_registry, user, PASSWORD) as client:
        assert_problem(client.post("/signing-keys/rotate"), 403)
    # Tokens are signed with the new key from now on.
    with httpx.Client(base_url=api_registry.url) as plain:
        token = plain.get(
            "/service/token", params={"service": "moorage"}, auth=(user, PASSWORD)
        ).json()["token"]
    header = token.split(".")[0]
    assert json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["kid"] == kid
