"""Account ids are never reused, and deleting an account deletes everything that names it:
approvals, project memberships, repository grants, group memberships, tokens. Through the real
server; the database is read beside it to see ids and rows the API does not show."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.api import (
    PASSWORD,
    api_client,
    assert_problem,
    create_project,
    create_user,
    set_role,
    unique,
)
from tests.support.auth import RegistryAuth
from tests.support.backends import query_database, server_database_url
from tests.support.images import push_image, tiny_image
from tests.support.server import RegistryProcess, database_url_for


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    with RegistryProcess(tmp_path_factory.mktemp("identity") / "data").start() as process:
        yield process


@pytest.fixture
def admin(server: RegistryProcess) -> Iterator[httpx.Client]:
    with api_client(server) as http:
        yield http


def query(server: RegistryProcess, sql: str, *parameters: Any) -> list[tuple[Any, ...]]:
    return query_database(server_database_url(server.data_dir), sql, *parameters)


_ID_OF = {
    "users": "SELECT id FROM users WHERE username = ?",
    "groups": "SELECT id FROM groups WHERE name = ?",
    "robots": "SELECT id FROM robots WHERE name = ?",
}

# Every row that can name an account of a kind, counted by (kind, id) or by id alone.
_NAMING = {
    "user": {
        "project_members": "SELECT COUNT(*) FROM project_members"
        " WHERE principal_kind = 'user' AND principal_id = ?",
        "repository_grants": "SELECT COUNT(*) FROM repository_grants"
        " WHERE principal_kind = 'user' AND principal_id = ?",
        "group_members": "SELECT COUNT(*) FROM group_members WHERE user_id = ?",
        "promotion_approvals": "SELECT COUNT(*) FROM promotion_approvals WHERE approver_id = ?",
        "personal_access_tokens": "SELECT COUNT(*) FROM personal_access_tokens WHERE user_id = ?",
    },
    "group": {
        "project_members": "SELECT COUNT(*) FROM project_members"
        " WHERE principal_kind = 'group' AND principal_id = ?",
        "repository_grants": "SELECT COUNT(*) FROM repository_grants"
        " WHERE principal_kind = 'group' AND principal_id = ?",
        "group_members": "SELECT COUNT(*) FROM group_members WHERE group_id = ?",
    },
    "robot": {
        "repository_grants": "SELECT COUNT(*) FROM repository_grants"
        " WHERE principal_kind = 'robot' AND principal_id = ?",
    },
}


def account_id(server: RegistryProcess, table: str, name: str) -> int:
    ((found,),) = query(server, _ID_OF[table], name)
    return int(found)


def rows_naming(server: RegistryProcess, kind: str, principal_id: int) -> dict[str, int]:
    """How many rows of each table still name the account."""
    return {
        table: int(query(server, sql, principal_id)[0][0]) for table, sql in _NAMING[kind].items()
    }


def approve(server: RegistryProcess, username: str, project: str, digest: str) -> None:
    with api_client(server, username, PASSWORD) as client:
        response = client.post(f"/projects/{project}/promotion-approvals", json={"digest": digest})
        assert response.status_code == 201, response.text


def promote(admin: httpx.Client, source: str, destination: str, **extra: Any) -> httpx.Response:
    return admin.post("/promotions", json={"source": source, "destination": destination, **extra})


def test_a_deleted_approver_no_longer_counts_even_when_a_new_account_takes_the_name(
    server: RegistryProcess, admin: httpx.Client
) -> None:
    source, destination = create_project(admin, "src"), create_project(admin, "dst")
    with httpx.Client(base_url=server.url, timeout=60, auth=RegistryAuth()) as v2:
        image = tiny_image(unique("approved"))
        push_image(v2, f"{source}/app", image, "v1")
    digest = image.manifest.digest
    first = create_user(admin, "appr")
    carol = create_user(admin, "carol")  # the newest account: the id SQLite used to hand out again
    for username in (first, carol):
        set_role(admin, destination, username, "maintainer")
    gate = {"kind": "approval", "count": 2, "role": "maintainer"}
    response = admin.put(f"/projects/{destination}/promotion-gates", json={"gates": [gate]})
    assert response.status_code == 200, response.text
    for username in (first, carol):
        approve(server, username, destination, digest)
    checked = promote(admin, f"{source}/app:v1", f"{destination}/app:v1", dryRun=True)
    assert checked.status_code == 200, checked.text
    assert "2 of 2 approvals" in checked.json()["gates"][0]["reason"]

    carol_id = account_id(server, "users", carol)
    assert admin.delete(f"/users/{carol}").status_code == 204
    assert rows_naming(server, "user", carol_id) == {
        "project_members": 0,
        "repository_grants": 0,
        "group_members": 0,
        "promotion_approvals": 0,
        "personal_access_tokens": 0,
    }
    # Neither the next account nor a new account with the same name is the deleted one.
    newcomer = create_user(admin, "newcomer")
    response = admin.post("/users", json={"username": carol, "password": PASSWORD})
    assert response.status_code == 201, response.text
    assert account_id(server, "users", newcomer) > carol_id
    assert account_id(server, "users", carol) > carol_id
    for username in (newcomer, carol):
        set_role(admin, destination, username, "maintainer")

    with api_client(server, first, PASSWORD) as client:
        listed = client.get(
            f"/projects/{destination}/promotion-approvals", params={"digest": digest}
        )
    assert [entry["approver"] for entry in listed.json()] == [first]
    body = assert_problem(promote(admin, f"{source}/app:v1", f"{destination}/app:v1"), 422)
    (reason,) = [e["message"] for e in body["errors"] if e["field"] == "gates.approval"]
    assert reason == f"1 of 2 approvals by maintainers: {first}"
    # The new carol's own approval counts: it is hers, not the deleted account's.
    approve(server, carol, destination, digest)
    promoted = promote(admin, f"{source}/app:v1", f"{destination}/app:v1")
    assert promoted.status_code == 201, promoted.text


def test_deleting_a_user_deletes_its_memberships_grants_groups_and_tokens(
    server: RegistryProcess, admin: httpx.Client
) -> None:
    project, group = create_project(admin), unique("team")
    user = create_user(admin, "leaving")
    assert admin.post("/groups", json={"name": group}).status_code == 201
    assert admin.put(f"/groups/{group}/members/{user}").status_code == 204
    set_role(admin, project, user, "developer")
    grant = {"kind": "user", "name": user, "pattern": "app/*", "actions": ["delete"]}
    assert admin.post(f"/projects/{project}/grants", json=grant).status_code == 201
    with api_client(server, user, PASSWORD) as client:
        token = client.post("/users/me/tokens", json={"name": "ci"})
        assert token.status_code == 201, token.text
        approval = client.post(
            f"/projects/{project}/promotion-approvals", json={"digest": "sha256:" + "a" * 64}
        )
        assert approval.status_code == 201, approval.text
    user_id = account_id(server, "users", user)
    assert all(rows_naming(server, "user", user_id).values())

    assert admin.delete(f"/users/{user}").status_code == 204
    assert not any(rows_naming(server, "user", user_id).values())
    assert admin.get(f"/groups/{group}").json()["members"] == []
    members = admin.get(f"/projects/{project}/members").json()
    assert user not in [member["name"] for member in members]
    assert admin.get(f"/projects/{project}/grants").json() == []

    # The same name again is a new account that inherits nothing.
    response = admin.post("/users", json={"username": user, "password": PASSWORD})
    assert response.status_code == 201, response.text
    renewed = account_id(server, "users", user)
    assert renewed > user_id
    assert not any(rows_naming(server, "user", renewed).values())


def test_deleting_a_group_deletes_its_memberships_and_grants(
    server: RegistryProcess, admin: httpx.Client
) -> None:
    project, group, user = create_project(admin), unique("crew"), create_user(admin)
    assert admin.post("/groups", json={"name": group}).status_code == 201
    assert admin.put(f"/groups/{group}/members/{user}").status_code == 204
    response = admin.put(f"/projects/{project}/members/group/{group}", json={"role": "guest"})
    assert response.status_code == 200, response.text
    grant = {"kind": "group", "name": group, "pattern": "**", "actions": ["push"]}
    assert admin.post(f"/projects/{project}/grants", json=grant).status_code == 201
    group_id = account_id(server, "groups", group)
    assert all(rows_naming(server, "group", group_id).values())

    assert admin.delete(f"/groups/{group}").status_code == 204
    assert not any(rows_naming(server, "group", group_id).values())
    assert admin.post("/groups", json={"name": group}).status_code == 201
    assert account_id(server, "groups", group) > group_id
    assert admin.get(f"/groups/{group}").json()["members"] == []
    assert admin.get(f"/projects/{project}/grants").json() == []
    members = admin.get(f"/projects/{project}/members").json()
    assert group not in [member["name"] for member in members]


def test_deleting_a_robot_deletes_its_grants_and_its_id_is_not_given_out_again(
    server: RegistryProcess, admin: httpx.Client
) -> None:
    project = create_project(admin)
    permissions = [{"project": project, "actions": ["pull"]}]
    created = admin.post(
        f"/projects/{project}/robots", json={"name": "ci", "permissions": permissions}
    )
    assert created.status_code == 201, created.text
    name = created.json()["name"]
    grant = {"kind": "robot", "name": name, "pattern": "app/*", "actions": ["push"]}
    assert admin.post(f"/projects/{project}/grants", json=grant).status_code == 201
    robot_id = account_id(server, "robots", name)
    assert rows_naming(server, "robot", robot_id)["repository_grants"] == 1

    assert admin.delete(f"/projects/{project}/robots/ci").status_code == 204
    assert not any(rows_naming(server, "robot", robot_id).values())
    again = admin.post(
        f"/projects/{project}/robots", json={"name": "ci", "permissions": permissions}
    )
    assert again.status_code == 201, again.text
    assert account_id(server, "robots", name) > robot_id
    assert admin.get(f"/projects/{project}/grants").json() == []


def test_account_tables_never_reuse_ids(server: RegistryProcess) -> None:
    if database_url_for(server.data_dir) is not None:
        pytest.skip("SQLite's AUTOINCREMENT: PostgreSQL's sequences never hand an id out twice")
    schema = dict(query(server, "SELECT name, sql FROM sqlite_master WHERE type = 'table'"))
    for table in ("users", "groups", "robots"):
        assert "AUTOINCREMENT" in schema[table], table
    assert "REFERENCES users (id) ON DELETE CASCADE" in schema["promotion_approvals"]
