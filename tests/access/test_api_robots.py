"""Robot accounts through the management API: project robots, system robots, and their secrets."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import httpx

from tests.support.api import (
    PASSWORD,
    api_client,
    assert_problem,
    create_project,
    create_user,
    eventually,
    names,
    set_role,
    unique,
)
from tests.support.auth import basic_header, parse_challenge
from tests.support.server import RegistryProcess


def _works(server: RegistryProcess, name: str, secret: str) -> bool:
    with api_client(server, name, secret) as robot:
        return robot.get("/roles").status_code == 200


def _refused(server: RegistryProcess, name: str, secret: str) -> bool:
    with api_client(server, name, secret) as robot:
        return robot.get("/roles").status_code == 401


def test_a_project_admin_runs_a_robot_through_its_whole_life(
    api_registry: RegistryProcess, admin_api: httpx.Client
) -> None:
    project = create_project(admin_api)
    owner = create_user(admin_api)
    set_role(admin_api, project, owner, "project-admin")
    rules = [{"project": project, "repositories": "app/**", "actions": ["pull", "push"]}]
    with api_client(api_registry, owner, PASSWORD) as client:
        base = f"/projects/{project}/robots"
        eventually(lambda: client.get(base).status_code == 200, what="owner manages robots")
        created = client.post(
            base,
            json={"name": "ci", "description": "builds", "permissions": rules, "expiresInDays": 7},
        )
        assert created.status_code == 201
        robot = created.json()
        name, secret = robot["name"], robot["secret"]
        assert name == f"robot${project}+ci"
        assert robot["permissions"] == rules
        assert robot["createdBy"] == owner
        assert robot["disabled"] is False
        expires = datetime.fromisoformat(robot["expiresAt"])
        assert abs(expires - (datetime.now(UTC) + timedelta(days=7))) < timedelta(minutes=5)
        assert_problem(client.post(base, json={"name": "ci", "permissions": rules}), 409)

        listed = client.get(base)
        assert names(listed) == [name]
        assert "secret" not in listed.json()[0]
        assert secret not in listed.text
        assert secret not in client.get(f"{base}/ci").text

        assert _works(api_registry, name, secret)
        assert client.get(f"{base}/ci").json()["lastUsedAt"] is not None

        rotated = client.post(f"{base}/ci/rotate")
        assert rotated.status_code == 200
        new_secret = rotated.json()["secret"]
        assert rotated.json()["name"] == name
        assert new_secret != secret
        assert _works(api_registry, name, new_secret)
        eventually(lambda: _refused(api_registry, name, secret), what="old secret refused")

        disabled = client.patch(f"{base}/ci", json={"disabled": True})
        assert disabled.json()["disabled"] is True
        eventually(lambda: _refused(api_registry, name, new_secret), what="disabled robot refused")
        client.patch(f"{base}/ci", json={"disabled": False})
        eventually(lambda: _works(api_registry, name, new_secret), what="enabled robot works")

        narrower = [{"project": project, "repositories": "app/api", "actions": ["pull"]}]
        changed = client.patch(f"{base}/ci", json={"permissions": narrower})
        assert changed.json()["permissions"] == narrower

        assert client.delete(f"{base}/ci").status_code == 204
        assert_problem(client.get(f"{base}/ci"), 404)
        assert_problem(client.post(f"{base}/ci/rotate"), 404)
        eventually(lambda: _refused(api_registry, name, new_secret), what="deleted robot refused")


def test_a_robot_cannot_be_moved_into_another_project(admin_api: httpx.Client) -> None:
    project, other = create_project(admin_api), create_project(admin_api)
    base = f"/projects/{project}/robots"
    admin_api.post(
        base, json={"name": "ci", "permissions": [{"project": project, "actions": ["pull"]}]}
    )
    elsewhere = [{"project": other, "actions": ["pull"]}]
    assert_problem(admin_api.patch(f"{base}/ci", json={"permissions": elsewhere}), 403)
    # Another project's robot is not reachable through this project's path.
    assert_problem(admin_api.get(f"/projects/{other}/robots/ci"), 404)
    assert_problem(admin_api.get("/robots/ci"), 404)


def test_robot_input_is_checked(admin_api: httpx.Client) -> None:
    project = create_project(admin_api)
    base = f"/projects/{project}/robots"
    rule = {"project": project, "actions": ["pull"]}
    assert_problem(admin_api.post(base, json={"name": "ci", "permissions": []}), 422)
    assert_problem(admin_api.post(base, json={"name": "Bad Name", "permissions": [rule]}), 422)
    assert_problem(
        admin_api.post(base, json={"name": "ci", "permissions": [rule], "secret": "x"}), 422
    )
    too_long = {"name": "ci", "permissions": [rule], "expiresInDays": 100_000}
    assert_problem(admin_api.post(base, json=too_long), 422)
    assert_problem(
        admin_api.post(
            f"/projects/{unique('none')}/robots", json={"name": "ci", "permissions": [rule]}
        ),
        404,
    )


def test_a_developer_cannot_manage_robots(
    api_registry: RegistryProcess, admin_api: httpx.Client
) -> None:
    project = create_project(admin_api)
    developer = create_user(admin_api)
    set_role(admin_api, project, developer, "developer")
    with api_client(api_registry, developer, PASSWORD) as client:
        rule = [{"project": project, "actions": ["pull"]}]
        assert_problem(
            client.post(f"/projects/{project}/robots", json={"name": "x", "permissions": rule}), 403
        )
        assert_problem(client.get(f"/projects/{project}/robots"), 403)


def test_system_robots_are_managed_by_administrators(
    api_registry: RegistryProcess, admin_api: httpx.Client
) -> None:
    short = unique("sync")
    rules = [
        {"project": "*", "repositories": "**", "actions": ["pull"]},
        {"project": "mirror", "repositories": "**", "actions": ["push"]},
    ]
    created = admin_api.post("/robots", json={"name": short, "permissions": rules})
    assert created.status_code == 201
    name, secret = created.json()["name"], created.json()["secret"]
    assert name == f"robot${short}"
    assert created.json()["permissions"] == rules
    listed = admin_api.get("/robots")
    assert name in names(listed)
    assert secret not in listed.text
    assert admin_api.get(f"/robots/{short}").json()["name"] == name
    assert _works(api_registry, name, secret)

    user = create_user(admin_api)
    with api_client(api_registry, user, PASSWORD) as client:
        assert_problem(client.get("/robots"), 403)
        assert_problem(
            client.post("/robots", json={"name": unique("x"), "permissions": rules}), 403
        )
        assert_problem(client.post(f"/robots/{short}/rotate"), 403)

    new_secret = admin_api.post(f"/robots/{short}/rotate").json()["secret"]
    eventually(lambda: _refused(api_registry, name, secret), what="old secret refused")
    assert _works(api_registry, name, new_secret)
    assert admin_api.delete(f"/robots/{short}").status_code == 204
    eventually(lambda: _refused(api_registry, name, new_secret), what="deleted robot refused")


def test_a_robot_signs_in_to_the_token_service_with_its_secret(
    api_registry: RegistryProcess, admin_api: httpx.Client
) -> None:
    project = create_project(admin_api)
    robot = admin_api.post(
        f"/projects/{project}/robots",
        json={"name": "puller", "permissions": [{"project": project, "actions": ["pull"]}]},
    ).json()
    challenge = httpx.get(f"{api_registry.url}/v2/").headers["WWW-Authenticate"]
    realm = parse_challenge(challenge)["realm"]
    response = httpx.get(
        realm,
        params={"service": "moorage", "scope": f"repository:{project}/app:pull,push"},
        headers={"Authorization": basic_header(robot["name"], robot["secret"])},
    )
    assert response.status_code == 200
    payload = response.json()["token"].split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    # The robot asked for push too; its allow-list grants only pull.
    assert claims["access"] == [
        {"type": "repository", "name": f"{project}/app", "actions": ["pull"]}
    ]
