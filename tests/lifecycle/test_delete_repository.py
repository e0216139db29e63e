"""Deleting a repository with everything in it, against a real server with pushed images.

After the deletion the name answers as if it never existed (catalog, tags, manifests, blobs:
404 with OCI error JSON), a blob another repository shares still pulls there, the name takes
a new push, and `moorage fsck` finds nothing wrong. Who may delete: `delete-repository` on the
repository (maintainers, project admins, system administrators, robots and tokens that carry
it); everyone else is refused before anything is read. Promotion-only projects refuse unless
break-glass lets a system administrator through, audited.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.lifecycle.deletion_support import (
    assert_fsck_clean,
    assert_gone,
    audit_entries,
    layers_of,
    moorage,
    pull_verified,
    push_with_layer,
    registry_client,
)
from tests.support.api import (
    PASSWORD,
    api_client,
    assert_problem,
    bearer_client,
    create_project,
    create_user,
    set_role,
    unique,
)
from tests.support.auth import ADMIN_PASSWORD, ADMIN_USER
from tests.support.oci import random_bytes
from tests.support.server import RegistryProcess


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    with RegistryProcess(tmp_path_factory.mktemp("delete-repository") / "data").start() as process:
        yield process


def delete_path(repository: str) -> str:
    project, _, name = repository.partition("/")
    return f"/projects/{project}/repositories/{name}"


def test_a_deleted_repository_answers_as_if_it_never_existed(
    server: RegistryProcess, admin: httpx.Client, v2: httpx.Client
) -> None:
    project = create_project(admin)
    repository, neighbour = f"{project}/app", f"{project}/keep"
    shared = random_bytes(256)
    first = push_with_layer(v2, repository, "v1", shared)
    second = push_with_layer(v2, repository, "v2", random_bytes(256))
    push_with_layer(v2, neighbour, "v1", shared)
    blobs = layers_of(v2, repository, "v1") + layers_of(v2, repository, "v2")

    response = admin.delete(delete_path(repository))

    assert response.status_code == 200, response.text
    assert response.json() == {"name": repository, "tags": 2, "manifests": 2, "blobs": 4}
    assert_gone(v2, repository, first, blobs)
    assert v2.get(f"/v2/{repository}/manifests/{second.digest}").status_code == 404
    # The shared layer is still the neighbour's, and pulls there verified.
    pull_verified(v2, neighbour, "v1")
    (entry,) = audit_entries(admin, project, "repository:deleted")
    assert entry["resource"] == repository
    assert entry["actor"] == ADMIN_USER
    assert entry["result"] == "success"
    assert_problem(admin.delete(delete_path(repository)), 404)
    assert_fsck_clean(server)


def test_the_name_takes_a_new_push_after_the_deletion(
    admin: httpx.Client, v2: httpx.Client
) -> None:
    project = create_project(admin)
    repository = f"{project}/app"
    old = push_with_layer(v2, repository, "v1", random_bytes(256))
    push_with_layer(v2, repository, "old-only", random_bytes(256))
    assert admin.delete(delete_path(repository)).status_code == 200

    new = push_with_layer(v2, repository, "v1", random_bytes(256))

    assert v2.get(f"/v2/{repository}/tags/list").json()["tags"] == ["v1"]
    pull_verified(v2, repository, "v1")
    assert v2.head(f"/v2/{repository}/manifests/v1").headers["Docker-Content-Digest"] == (
        new.digest
    )
    assert v2.get(f"/v2/{repository}/manifests/{old.digest}").status_code == 404


def test_names_with_many_segments_and_their_neighbours(
    admin: httpx.Client, v2: httpx.Client
) -> None:
    project = create_project(admin)
    names = [f"{project}/a", f"{project}/a/b", f"{project}/a/b/c", f"{project}/a-b"]
    for name in names:
        push_with_layer(v2, name, "v1", random_bytes(64))

    assert admin.delete(delete_path(f"{project}/a/b")).status_code == 200

    catalog = v2.get("/v2/_catalog", params={"n": 10000}).json()["repositories"]
    assert [n for n in catalog if n.startswith(f"{project}/")] == [
        f"{project}/a",
        f"{project}/a-b",
        f"{project}/a/b/c",
    ]
    for name in (f"{project}/a", f"{project}/a/b/c", f"{project}/a-b"):
        pull_verified(v2, name, "v1")


@pytest.mark.parametrize(
    "path",
    [
        "/projects/{project}/repositories/missing",
        "/projects/{project}/repositories/app/missing",
        "/projects/no-such-project-{project}/repositories/app",
    ],
)
def test_unknown_repositories_are_not_found(admin: httpx.Client, path: str) -> None:
    project = create_project(admin)
    assert_problem(admin.delete(path.format(project=project)), 404)


@pytest.mark.parametrize("name", ["App", "app//x", "app/", "-app", "a" * 300])
def test_invalid_names_are_refused_as_problems(admin: httpx.Client, name: str) -> None:
    project = create_project(admin)
    response = admin.delete(f"/projects/{project}/repositories/{name}")
    assert response.status_code in (400, 404), response.text
    assert_problem(response, response.status_code)


# -- who may delete


def _robot(admin: httpx.Client, project: str, actions: list[str]) -> tuple[str, str]:
    body = {
        "name": unique("r"),
        "permissions": [{"project": project, "actions": actions}],
    }
    created = admin.post(f"/projects/{project}/robots", json=body)
    assert created.status_code == 201, created.text
    return created.json()["name"], created.json()["secret"]


def _token(server: RegistryProcess, username: str, scopes: list[dict[str, Any]] | None) -> str:
    with api_client(server, username, PASSWORD) as client:
        body: dict[str, Any] = {"name": unique("t")}
        if scopes is not None:
            body["scopes"] = scopes
        created = client.post("/users/me/tokens", json=body)
        assert created.status_code == 201, created.text
        token: str = created.json()["token"]
        return token


def test_only_callers_holding_delete_repository_may_delete(
    server: RegistryProcess, admin: httpx.Client, v2: httpx.Client
) -> None:
    project = create_project(admin)
    repository = f"{project}/app"
    push_with_layer(v2, repository, "v1", random_bytes(64))
    path = delete_path(repository)
    developer, maintainer, outsider = (create_user(admin, p) for p in ("dev", "mnt", "out"))
    set_role(admin, project, developer, "developer")
    set_role(admin, project, maintainer, "maintainer")
    pusher, pusher_secret = _robot(admin, project, ["pull", "push", "delete"])
    deleter, deleter_secret = _robot(admin, project, ["pull", "delete-repository"])
    # A maintainer's token scoped to pulls, and one scoped to another project.
    pulls_only = _token(server, maintainer, [{"project": project, "actions": ["pull"]}])
    elsewhere = _token(server, maintainer, [{"project": "other", "actions": ["delete-repository"]}])

    with httpx.Client(base_url=f"{server.url}/api/v1", timeout=30) as anonymous:
        assert_problem(anonymous.delete(path), 401)
    for username, password in (
        (developer, PASSWORD),
        (outsider, PASSWORD),
        (pusher, pusher_secret),
    ):
        with api_client(server, username, password) as caller:
            assert_problem(caller.delete(path), 403)
    for token in (pulls_only, elsewhere):
        with bearer_client(server, token) as caller:
            assert_problem(caller.delete(path), 403)
    pull_verified(v2, repository, "v1")  # every refusal left it whole

    with api_client(server, deleter, deleter_secret) as robot:
        assert robot.delete(path).status_code == 200
    push_with_layer(v2, repository, "v1", random_bytes(64))
    with api_client(server, maintainer, PASSWORD) as caller:
        assert caller.delete(path).status_code == 200
    (entry, *_) = audit_entries(admin, project, "repository:deleted", 2)
    assert {e["actor"] for e in audit_entries(admin, project, "repository:deleted", 2)} == {
        deleter,
        maintainer,
    }
    assert entry["resource"] == repository


def test_a_virtual_project_holds_nothing_to_delete(admin: httpx.Client, v2: httpx.Client) -> None:
    member = create_project(admin)
    push_with_layer(v2, f"{member}/app", "v1", random_bytes(64))
    virtual = create_project(admin, "virtual")
    configured = admin.put(f"/projects/{virtual}/virtual", json={"members": [member]})
    assert configured.status_code == 200, configured.text

    assert_problem(admin.delete(f"/projects/{virtual}/repositories/app"), 403)
    pull_verified(v2, f"{member}/app", "v1")


# -- immutable tags


def test_a_repository_holding_an_immutable_tag_is_not_deleted(
    admin: httpx.Client, v2: httpx.Client
) -> None:
    """Its manifests could not be deleted one by one either; the rule's own project admin can
    remove the rule first, or delete the whole project (rules included)."""
    project = create_project(admin)
    repository, free = f"{project}/app", f"{project}/tools"
    push_with_layer(v2, repository, "v1.0", random_bytes(64))
    push_with_layer(v2, repository, "latest", random_bytes(64))
    push_with_layer(v2, free, "latest", random_bytes(64))
    rules = {"rules": [{"repositories": "app", "tags": "v*"}]}
    assert admin.put(f"/projects/{project}/immutable-tag-rules", json=rules).status_code == 200

    body = assert_problem(admin.delete(delete_path(repository)), 409)

    assert "v1.0" in body["detail"]
    assert "immutable" in body["detail"]
    pull_verified(v2, repository, "v1.0")
    pull_verified(v2, repository, "latest")
    (denied,) = audit_entries(admin, project, "policy:denied")
    assert denied["details"]["policy"] == "immutable-tags"
    assert denied["details"]["point"] == "delete:repository"
    assert admin.delete(delete_path(free)).status_code == 200  # no rule covers it
    assert admin.delete(f"/projects/{project}").status_code == 204
    assert v2.get(f"/v2/{repository}/tags/list").status_code == 404


# -- promotion-only projects


def _promotion_only(admin: httpx.Client, project: str) -> None:
    response = admin.put(
        f"/projects/{project}/stage", json={"stage": "prod", "promotionOnly": True}
    )
    assert response.status_code == 200, response.text


def test_promotion_only_projects_refuse_deletion_without_break_glass(
    admin: httpx.Client, v2: httpx.Client
) -> None:
    project = create_project(admin)
    repository = f"{project}/app"
    push_with_layer(v2, repository, "v1", random_bytes(64))
    _promotion_only(admin, project)

    body = assert_problem(admin.delete(delete_path(repository)), 409)

    assert "promotion-only" in body["detail"]
    pull_verified(v2, repository, "v1")


def test_break_glass_lets_only_a_system_administrator_delete_and_audits_it(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    data_dir = tmp_path_factory.mktemp("break-glass") / "data"
    environment = {"MOORAGE_PROMOTION_BREAK_GLASS": "true"}
    with (
        RegistryProcess(data_dir, env=environment).start() as server,
        api_client(server) as admin,
        registry_client(server, ADMIN_USER, ADMIN_PASSWORD) as v2,
    ):
        project = create_project(admin)
        repository = f"{project}/app"
        push_with_layer(v2, repository, "v1", random_bytes(64))
        project_admin = create_user(admin, "padmin")
        set_role(admin, project, project_admin, "project-admin")
        _promotion_only(admin, project)

        with api_client(server, project_admin, PASSWORD) as caller:
            assert_problem(caller.delete(delete_path(repository)), 409)
        pull_verified(v2, repository, "v1")

        assert admin.delete(delete_path(repository)).status_code == 200

        (glass,) = audit_entries(admin, project, "promotion:break-glass")
        assert glass["actor"] == ADMIN_USER
        assert glass["resource"] == repository
        assert glass["details"] == {"operation": "delete"}
        audit_entries(admin, project, "repository:deleted")
        assert v2.get(f"/v2/{repository}/tags/list").status_code == 404


# -- the command line


def test_the_command_line_asks_first_and_audits_the_operator(
    server: RegistryProcess, admin: httpx.Client, v2: httpx.Client
) -> None:
    project = create_project(admin)
    repository = f"{project}/app/web"
    pushed = push_with_layer(v2, repository, "v1", random_bytes(64))
    blobs = layers_of(v2, repository, "v1")

    declined = moorage(server, "repository", "delete", repository, stdin="n\n")
    assert declined.returncode != 0
    pull_verified(v2, repository, "v1")

    done = moorage(server, "repository", "delete", repository, "--yes")
    assert done.returncode == 0, done.stderr
    assert (
        f"deleted repository {repository}: 1 tag(s), 1 manifest(s), 2 blob link(s)" in done.stdout
    )
    assert_gone(v2, repository, pushed, blobs)
    (entry,) = audit_entries(admin, project, "repository:deleted")
    assert entry["actorKind"] == "system"

    missing = moorage(server, "repository", "delete", repository, "--yes")
    assert missing.returncode == 1
    assert "not found" in missing.stderr
    unqualified = moorage(server, "repository", "delete", project, "--yes")
    assert unqualified.returncode == 2
    assert "PROJECT/REPOSITORY" in unqualified.stderr
