"""Groups through the management API (administrators only)."""

from __future__ import annotations

import httpx

from tests.support.api import PASSWORD, api_client, assert_problem, create_user, names, unique
from tests.support.server import RegistryProcess


def test_groups_are_created_filled_emptied_and_deleted(admin_api: httpx.Client) -> None:
    group, first, second = unique("team"), create_user(admin_api), create_user(admin_api)
    created = admin_api.post("/groups", json={"name": group})
    assert created.status_code == 201
    assert created.json() == {"name": group, "members": []}
    assert_problem(admin_api.post("/groups", json={"name": group}), 409)

    for user in (second, first):
        assert admin_api.put(f"/groups/{group}/members/{user}").status_code == 204
    assert admin_api.put(f"/groups/{group}/members/{first}").status_code == 204  # idempotent
    assert admin_api.get(f"/groups/{group}").json() == {
        "name": group,
        "members": sorted([first, second]),
    }
    assert group in names(admin_api.get("/groups"))

    assert admin_api.delete(f"/groups/{group}/members/{first}").status_code == 204
    assert admin_api.get(f"/groups/{group}").json()["members"] == [second]
    assert_problem(admin_api.put(f"/groups/{group}/members/nobody-here"), 404)
    assert_problem(admin_api.put(f"/groups/{unique('none')}/members/{first}"), 404)

    assert admin_api.delete(f"/groups/{group}").status_code == 204
    assert_problem(admin_api.get(f"/groups/{group}"), 404)
    assert_problem(admin_api.delete(f"/groups/{group}"), 404)
    assert group not in names(admin_api.get("/groups"))


def test_group_names_are_checked(admin_api: httpx.Client) -> None:
    for bad in ("Caps", "", "has space", "x" * 65):
        assert_problem(admin_api.post("/groups", json={"name": bad}), 422)
    assert_problem(admin_api.post("/groups", json={}), 422)


def test_only_administrators_manage_groups(
    api_registry: RegistryProcess, admin_api: httpx.Client
) -> None:
    group = unique("team")
    admin_api.post("/groups", json={"name": group})
    user = create_user(admin_api)
    with api_client(api_registry, user, PASSWORD) as client:
        assert_problem(client.get("/groups"), 403)
        assert_problem(client.post("/groups", json={"name": unique("mine")}), 403)
        assert_problem(client.put(f"/groups/{group}/members/{user}"), 403)
        assert_problem(client.delete(f"/groups/{group}"), 403)
    assert admin_api.get(f"/groups/{group}").json()["members"] == []
