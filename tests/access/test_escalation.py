"""Nobody hands out more than they hold; revoked or changed credentials stop working; public
projects can be read by anyone who may pull from them."""

from __future__ import annotations

import httpx

from tests.support.api import (
    PASSWORD,
    api_client,
    assert_problem,
    create_project,
    create_user,
    eventually,
    set_role,
)
from tests.support.server import RegistryProcess


def _custom_role(admin: httpx.Client, name: str, actions: list[str]) -> str:
    response = admin.put(f"/roles/{name}", json={"actions": actions})
    assert response.status_code in (200, 201), response.text
    return name


def test_a_robot_manager_cannot_mint_a_robot_stronger_than_themselves(
    admin_api: httpx.Client, api_registry: RegistryProcess
) -> None:
    project = create_project(admin_api, "esc")
    role = _custom_role(admin_api, "robot-keeper", ["pull", "read-project", "manage-robots"])
    keeper = create_user(admin_api, "keeper")
    set_role(admin_api, project, keeper, role)
    with api_client(api_registry, keeper, PASSWORD) as api:
        pushing = {
            "name": "ci",
            "permissions": [{"project": project, "repositories": "**", "actions": ["push"]}],
        }
        assert_problem(api.post(f"/projects/{project}/robots", json=pushing), 403)
        pulling = {
            "name": "ci",
            "permissions": [{"project": project, "repositories": "**", "actions": ["pull"]}],
        }
        assert api.post(f"/projects/{project}/robots", json=pulling).status_code == 201
        widened = {
            "permissions": [
                {"project": project, "repositories": "**", "actions": ["pull", "delete"]}
            ]
        }
        assert_problem(api.patch(f"/projects/{project}/robots/ci", json=widened), 403)


def test_a_member_manager_cannot_raise_anyone_above_themselves(
    admin_api: httpx.Client, api_registry: RegistryProcess
) -> None:
    project = create_project(admin_api, "esc")
    role = _custom_role(admin_api, "gatekeeper", ["pull", "read-project", "manage-members"])
    gatekeeper = create_user(admin_api, "gate")
    friend = create_user(admin_api, "friend")
    set_role(admin_api, project, gatekeeper, role)
    with api_client(api_registry, gatekeeper, PASSWORD) as api:
        promote_self = api.put(
            f"/projects/{project}/members/user/{gatekeeper}", json={"role": "project-admin"}
        )
        assert_problem(promote_self, 403)
        assert_problem(
            api.put(f"/projects/{project}/members/user/{friend}", json={"role": "developer"}), 403
        )
        assert (
            api.put(
                f"/projects/{project}/members/user/{friend}", json={"role": "limited-guest"}
            ).status_code
            == 200
        )
        grant = {"kind": "user", "name": friend, "pattern": "**", "actions": ["push"]}
        assert_problem(api.post(f"/projects/{project}/grants", json=grant), 403)


def test_a_project_admin_may_grant_what_they_hold(
    admin_api: httpx.Client, api_registry: RegistryProcess
) -> None:
    project = create_project(admin_api, "esc")
    owner = create_user(admin_api, "owner")
    set_role(admin_api, project, owner, "project-admin")
    with api_client(api_registry, owner, PASSWORD) as api:
        robot = {
            "name": "deploy",
            "permissions": [
                {"project": project, "repositories": "app/**", "actions": ["pull", "push"]}
            ],
        }
        assert api.post(f"/projects/{project}/robots", json=robot).status_code == 201


def test_a_revoked_token_and_a_changed_password_stop_working(
    admin_api: httpx.Client, api_registry: RegistryProcess
) -> None:
    user = create_user(admin_api, "revoke")
    with api_client(api_registry, user, PASSWORD) as api:
        created = api.post("/users/me/tokens", json={"name": "cli"})
        assert created.status_code == 201, created.text
        token = created.json()["token"]
        with api_client(api_registry, user, token) as via_token:
            assert via_token.get("/users/me").status_code == 200
            assert api.delete("/users/me/tokens/cli").status_code == 204
            eventually(lambda: via_token.get("/users/me").status_code == 401, what="token refused")
        new_password = PASSWORD + "-changed"
        changed = api.put(
            "/users/me/password", json={"currentPassword": PASSWORD, "newPassword": new_password}
        )
        assert changed.status_code in (200, 204), changed.text
        eventually(lambda: api.get("/users/me").status_code == 401, what="old password refused")
    with api_client(api_registry, user, new_password) as api:
        assert api.get("/users/me").status_code == 200


def test_a_public_project_is_readable_by_a_non_member(
    admin_api: httpx.Client, api_registry: RegistryProcess
) -> None:
    public = create_project(admin_api, "pub", public=True)
    private = create_project(admin_api, "priv")
    outsider = create_user(admin_api, "outsider")
    with api_client(api_registry, outsider, PASSWORD) as api:
        assert api.get(f"/projects/{public}").status_code == 200
        assert_problem(api.get(f"/projects/{private}"), 403)
        assert_problem(api.get(f"/projects/{public}/members"), 403)


def _push_session(server: RegistryProcess, repository: str, user: str) -> httpx.Response:
    token = httpx.get(
        f"{server.url}/service/token",
        params={"service": "moorage", "scope": f"repository:{repository}:pull,push"},
        auth=(user, PASSWORD),
    ).json()["token"]
    return httpx.post(
        f"{server.url}/v2/{repository}/blobs/uploads/", headers={"Authorization": f"Bearer {token}"}
    )


def test_a_push_into_a_missing_project_is_denied_naming_it_unless_creation_is_open(
    admin_api: httpx.Client, api_registry: RegistryProcess
) -> None:
    user = create_user(admin_api, "creator")
    project = f"{user}-new"
    refused = _push_session(api_registry, f"{project}/app", user)
    assert refused.status_code == 403
    error = refused.json()["errors"][0]
    assert error["code"] == "DENIED"
    assert project in error["message"]
    assert_problem(admin_api.get(f"/projects/{project}"), 404)

    assert (
        admin_api.patch("/settings", json={"projectCreation": "authenticated"}).status_code == 200
    )
    try:
        eventually(
            lambda: _push_session(api_registry, f"{project}/app", user).status_code == 202,
            what="push allowed once project creation is open",
        )
        assert admin_api.get(f"/projects/{project}").json()["public"] is False
        members = admin_api.get(f"/projects/{project}/members").json()
        assert {"kind": "user", "name": user, "role": "project-admin"} in members
    finally:
        admin_api.patch("/settings", json={"projectCreation": "admins"})
