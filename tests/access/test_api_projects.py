"""Projects, members, grants, roles and settings through the management API, with the access
rules that keep a project's people out of other projects."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support.api import (
    PASSWORD,
    all_pages,
    api_client,
    assert_problem,
    create_project,
    create_user,
    eventually,
    names,
    set_role,
    unique,
)
from tests.support.auth import ADMIN_USER
from tests.support.server import RegistryProcess


@pytest.fixture
def user_api(api_registry: RegistryProcess, admin_api: httpx.Client) -> Iterator[httpx.Client]:
    """A fresh user without any role, signed in with Basic authentication."""
    with api_client(api_registry, create_user(admin_api), PASSWORD) as client:
        yield client


def _username(client: httpx.Client) -> str:
    return str(client.get("/users/me").json()["username"])


def test_admin_creates_reads_changes_and_deletes_a_project(admin_api: httpx.Client) -> None:
    name = unique("crud")
    created = admin_api.post("/projects", json={"name": name})
    assert created.status_code == 201
    assert created.json() == {
        "name": name,
        "public": False,
        "createdBy": ADMIN_USER,
        "stage": None,
        "promotionOnly": False,
    }
    assert admin_api.get(f"/projects/{name}").json() == created.json()
    # The creator administers the project.
    members = admin_api.get(f"/projects/{name}/members").json()
    assert members == [{"kind": "user", "name": ADMIN_USER, "role": "project-admin"}]

    assert admin_api.patch(f"/projects/{name}", json={"public": True}).json()["public"] is True
    assert admin_api.patch(f"/projects/{name}", json={}).json()["public"] is True
    assert name in [p["name"] for p in all_pages(admin_api, "/projects", 100)]

    assert admin_api.delete(f"/projects/{name}").status_code == 204
    assert_problem(admin_api.get(f"/projects/{name}"), 404)
    assert_problem(admin_api.delete(f"/projects/{name}"), 404)


def test_project_names_are_checked(admin_api: httpx.Client) -> None:
    for bad in ("Upper", "a/b", "-dash", "", "x" * 256):
        assert_problem(admin_api.post("/projects", json={"name": bad}), 422)
    assert_problem(admin_api.post("/projects", json={"name": "ok", "public": "yes"}), 422)
    name = create_project(admin_api)
    assert_problem(admin_api.post("/projects", json={"name": name}), 409)


def test_the_project_list_shows_what_the_caller_may_read(
    admin_api: httpx.Client, user_api: httpx.Client
) -> None:
    mine = create_project(admin_api, "mine")
    public = create_project(admin_api, "open", public=True)
    hidden = create_project(admin_api, "hidden")
    set_role(admin_api, mine, _username(user_api), "limited-guest")

    def visible() -> set[str]:
        return {p["name"] for p in all_pages(user_api, "/projects", 2)}

    eventually(lambda: {mine, public} <= visible(), what="member sees its projects")
    assert hidden not in visible()
    assert {mine, public, hidden} <= {p["name"] for p in all_pages(admin_api, "/projects", 3)}
    assert_problem(user_api.get(f"/projects/{hidden}"), 403)
    assert user_api.get(f"/projects/{mine}").status_code == 200


def test_a_project_admin_cannot_touch_another_project(
    admin_api: httpx.Client, user_api: httpx.Client
) -> None:
    own, other = create_project(admin_api, "own"), create_project(admin_api, "other")
    set_role(admin_api, own, _username(user_api), "project-admin")
    bystander = create_user(admin_api)

    eventually(
        lambda: user_api.patch(f"/projects/{own}", json={"public": True}).status_code == 200,
        what="project admin manages own project",
    )
    assert user_api.put(
        f"/projects/{own}/members/user/{bystander}", json={"role": "guest"}
    ).is_success

    assert_problem(user_api.get(f"/projects/{other}"), 403)
    assert_problem(user_api.patch(f"/projects/{other}", json={"public": True}), 403)
    assert_problem(user_api.delete(f"/projects/{other}"), 403)
    assert_problem(user_api.get(f"/projects/{other}/members"), 403)
    assert_problem(
        user_api.put(f"/projects/{other}/members/user/{bystander}", json={"role": "guest"}), 403
    )
    assert_problem(user_api.get(f"/projects/{other}/grants"), 403)
    assert_problem(user_api.get(f"/projects/{other}/robots"), 403)
    assert_problem(user_api.get(f"/projects/{other}/audit-logs"), 403)
    robot = {"name": "ci", "permissions": [{"project": other, "actions": ["pull"]}]}
    assert_problem(user_api.post(f"/projects/{other}/robots", json=robot), 403)
    # A robot of its own project cannot be given access to the other project either.
    assert (
        "cannot be granted"
        in assert_problem(user_api.post(f"/projects/{own}/robots", json=robot), 403)["detail"]
    )
    everywhere = {"name": "ci", "permissions": [{"project": "*", "actions": ["pull"]}]}
    assert_problem(user_api.post(f"/projects/{own}/robots", json=everywhere), 403)
    assert_problem(user_api.get("/robots"), 403)
    assert_problem(user_api.put("/roles/sneaky", json={"actions": ["pull"]}), 403)
    assert other not in {p["name"] for p in all_pages(user_api, "/projects", 100)}


def test_a_developer_cannot_manage_members(admin_api: httpx.Client, user_api: httpx.Client) -> None:
    project = create_project(admin_api)
    me = _username(user_api)
    set_role(admin_api, project, me, "developer")
    eventually(
        lambda: user_api.get(f"/projects/{project}/members").status_code == 200,
        what="developer reads members",
    )
    assert_problem(
        user_api.put(f"/projects/{project}/members/user/{me}", json={"role": "project-admin"}), 403
    )
    assert_problem(user_api.delete(f"/projects/{project}/members/user/{ADMIN_USER}"), 403)
    assert_problem(user_api.get(f"/projects/{project}/grants"), 403)
    grant = {"kind": "user", "name": me, "pattern": "**", "actions": ["delete"]}
    assert_problem(user_api.post(f"/projects/{project}/grants", json=grant), 403)
    assert_problem(user_api.patch(f"/projects/{project}", json={"public": True}), 403)
    assert_problem(user_api.get(f"/projects/{project}/robots"), 403)
    assert user_api.get(f"/projects/{project}/audit-logs").status_code == 200


def test_members_are_set_listed_changed_and_removed(admin_api: httpx.Client) -> None:
    project = create_project(admin_api)
    user = create_user(admin_api)
    group = unique("team")
    admin_api.post("/groups", json={"name": group})
    base = f"/projects/{project}/members"

    set_user = admin_api.put(f"{base}/user/{user}", json={"role": "developer"})
    assert set_user.json() == {"kind": "user", "name": user, "role": "developer"}
    admin_api.put(f"{base}/group/{group}", json={"role": "guest"})
    admin_api.put(f"{base}/user/{user}", json={"role": "maintainer"})
    assert admin_api.get(base).json() == [
        {"kind": "group", "name": group, "role": "guest"},
        {"kind": "user", "name": ADMIN_USER, "role": "project-admin"},
        {"kind": "user", "name": user, "role": "maintainer"},
    ]

    assert (
        "unknown role"
        in assert_problem(admin_api.put(f"{base}/user/{user}", json={"role": "overlord"}), 400)[
            "detail"
        ]
    )
    assert_problem(admin_api.put(f"{base}/user/nobody-at-all", json={"role": "guest"}), 404)
    assert_problem(admin_api.put(f"{base}/robot/{user}", json={"role": "guest"}), 404)
    assert_problem(
        admin_api.put(f"/projects/{unique('gone')}/members/user/{user}", json={"role": "guest"}),
        404,
    )

    assert admin_api.delete(f"{base}/user/{user}").status_code == 204
    assert admin_api.delete(f"{base}/group/{group}").status_code == 204
    assert names(admin_api.get(base)) == [ADMIN_USER]


def test_a_group_role_reaches_its_members(admin_api: httpx.Client, user_api: httpx.Client) -> None:
    project, group = create_project(admin_api), unique("team")
    assert admin_api.post("/groups", json={"name": group}).status_code == 201
    admin_api.put(f"/projects/{project}/members/group/{group}", json={"role": "guest"})
    assert_problem(user_api.get(f"/projects/{project}"), 403)
    added = admin_api.put(f"/groups/{group}/members/{_username(user_api)}")
    assert added.status_code == 204
    eventually(
        lambda: user_api.get(f"/projects/{project}").status_code == 200,
        what="group member reads the project",
    )


def test_grants_are_added_listed_and_withdrawn(admin_api: httpx.Client) -> None:
    project, user, group = create_project(admin_api), create_user(admin_api), unique("g")
    admin_api.post("/groups", json={"name": group})
    robot = admin_api.post(
        f"/projects/{project}/robots",
        json={"name": "ci", "permissions": [{"project": project, "actions": ["pull"]}]},
    ).json()["name"]
    base = f"/projects/{project}/grants"

    added = [
        admin_api.post(base, json={"kind": kind, "name": name, "pattern": "app/*", "actions": acts})
        for kind, name, acts in (
            ("user", user, ["push", "pull"]),
            ("group", group, ["delete"]),
            ("robot", robot, ["push"]),
        )
    ]
    assert [response.status_code for response in added] == [201, 201, 201]
    assert added[0].json()["actions"] == ["pull", "push"]
    listed = admin_api.get(base).json()
    assert [(g["kind"], g["name"], g["pattern"]) for g in listed] == [
        ("user", user, "app/*"),
        ("group", group, "app/*"),
        ("robot", robot, "app/*"),
    ]

    assert_problem(
        admin_api.post(
            base, json={"kind": "user", "name": user, "pattern": "a/***", "actions": ["pull"]}
        ),
        400,
    )
    assert_problem(
        admin_api.post(base, json={"kind": "user", "name": user, "pattern": "a/*", "actions": []}),
        422,
    )
    assert_problem(
        admin_api.post(
            base, json={"kind": "user", "name": "no-such-user", "pattern": "*", "actions": ["pull"]}
        ),
        404,
    )
    grant_id = added[0].json()["id"]
    assert admin_api.delete(f"{base}/{grant_id}").status_code == 204
    assert_problem(admin_api.delete(f"{base}/{grant_id}"), 404)
    assert_problem(admin_api.delete(f"{base}/{2**63}"), 404)
    assert_problem(admin_api.delete(f"{base}/{2**80}"), 404)
    assert_problem(admin_api.delete(f"{base}/not-a-number"), 404)
    assert len(admin_api.get(base).json()) == 2


def test_roles_are_listed_and_custom_roles_managed(
    admin_api: httpx.Client, user_api: httpx.Client
) -> None:
    roles = {role["name"]: role for role in user_api.get("/roles").json()}
    assert {"limited-guest", "guest", "developer", "maintainer", "project-admin"} <= set(roles)
    assert roles["developer"]["builtIn"] is True
    assert "push" in roles["developer"]["actions"]

    name = unique("auditor")
    defined = admin_api.put(
        f"/roles/{name}", json={"actions": ["read-project", "read-audit"], "description": "reads"}
    )
    assert defined.json() == {
        "name": name,
        "builtIn": False,
        "actions": ["read-audit", "read-project"],
        "description": "reads",
    }
    listed = {role["name"]: role for role in user_api.get("/roles").json()}
    assert listed[name]["description"] == "reads"
    assert_problem(user_api.put(f"/roles/{name}", json={"actions": ["pull"]}), 403)
    assert_problem(user_api.delete(f"/roles/{name}"), 403)

    project = create_project(admin_api)
    set_role(admin_api, project, _username(user_api), name)
    eventually(
        lambda: user_api.get(f"/projects/{project}/audit-logs").status_code == 200,
        what="custom role grants read-audit",
    )
    assert_problem(admin_api.delete(f"/roles/{name}"), 409)
    admin_api.delete(f"/projects/{project}/members/user/{_username(user_api)}")
    assert admin_api.delete(f"/roles/{name}").status_code == 204
    assert_problem(admin_api.delete(f"/roles/{name}"), 404)

    assert_problem(admin_api.put("/roles/developer", json={"actions": ["pull"]}), 400)
    assert_problem(admin_api.delete("/roles/developer"), 409)
    assert_problem(admin_api.put(f"/roles/{unique('r')}", json={"actions": ["fly"]}), 422)


def test_settings_decide_who_may_create_projects(
    admin_api: httpx.Client, user_api: httpx.Client
) -> None:
    assert admin_api.get("/settings").json() == {"projectCreation": "admins"}
    assert_problem(user_api.get("/settings"), 403)
    assert_problem(user_api.post("/projects", json={"name": unique("mine")}), 403)
    try:
        changed = admin_api.patch("/settings", json={"projectCreation": "authenticated"})
        assert changed.json() == {"projectCreation": "authenticated"}
        name = unique("mine")
        eventually(
            lambda: user_api.post("/projects", json={"name": name}).status_code == 201,
            what="user creates a project",
        )
        members = user_api.get(f"/projects/{name}/members").json()
        assert members == [{"kind": "user", "name": _username(user_api), "role": "project-admin"}]
        assert_problem(user_api.patch("/settings", json={"projectCreation": "admins"}), 403)
    finally:
        admin_api.patch("/settings", json={"projectCreation": "admins"})
    assert_problem(admin_api.patch("/settings", json={"projectCreation": "everyone"}), 422)
    assert_problem(admin_api.patch("/settings", json={"colour": "blue"}), 422)
    assert admin_api.patch("/settings", json={}).json() == {"projectCreation": "admins"}
