"""Deleting a project with everything in it, against a real server with pushed images.

Every repository of the project goes (as `DELETE .../repositories/...` does, one audited
`repository:deleted` each), and so do its members, robots and configuration; proxy-cache and
virtual projects too. Blobs shared with another project still pull there, the name can be
created and pushed again from scratch, and `moorage fsck` finds nothing wrong.
"""

from __future__ import annotations

from collections.abc import Iterator

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
    with RegistryProcess(tmp_path_factory.mktemp("delete-project") / "data").start() as process:
        yield process


def test_a_deleted_project_takes_every_repository_with_it(
    server: RegistryProcess, admin: httpx.Client, v2: httpx.Client
) -> None:
    project, other = create_project(admin), create_project(admin)
    shared = random_bytes(256)
    names = [f"{project}/app", f"{project}/app/web", f"{project}/db"]
    pushed = {name: push_with_layer(v2, name, "v1", shared) for name in names}
    blobs = {name: layers_of(v2, name, "v1") for name in names}
    push_with_layer(v2, f"{other}/app", "v1", shared)
    member = create_user(admin, "member")
    set_role(admin, project, member, "developer")
    robot = admin.post(
        f"/projects/{project}/robots",
        json={"name": "ci", "permissions": [{"project": project, "actions": ["pull"]}]},
    )
    assert robot.status_code == 201, robot.text

    assert admin.delete(f"/projects/{project}").status_code == 204

    for name in names:
        assert_gone(v2, name, pushed[name], blobs[name])
    assert_problem(admin.get(f"/projects/{project}"), 404)
    pull_verified(v2, f"{other}/app", "v1")
    deleted = audit_entries(admin, project, "repository:deleted", len(names))
    assert sorted(entry["resource"] for entry in deleted) == sorted(names)
    audit_entries(admin, project, "project:delete")
    assert_problem(admin.delete(f"/projects/{project}"), 404)
    assert_fsck_clean(server)

    # The name starts from nothing: no members, no robots, no repositories.
    assert admin.post("/projects", json={"name": project}).status_code == 201
    assert admin.get(f"/projects/{project}/robots").json() == []
    assert member not in [m["name"] for m in admin.get(f"/projects/{project}/members").json()]
    assert v2.get(f"/v2/{project}/app/tags/list").status_code == 404
    push_with_layer(v2, f"{project}/app", "v2", random_bytes(64))
    assert v2.get(f"/v2/{project}/app/tags/list").json()["tags"] == ["v2"]


def test_only_project_administrators_may_delete_a_project(
    server: RegistryProcess, admin: httpx.Client, v2: httpx.Client
) -> None:
    project = create_project(admin)
    push_with_layer(v2, f"{project}/app", "v1", random_bytes(64))
    maintainer, owner = create_user(admin, "mnt"), create_user(admin, "own")
    set_role(admin, project, maintainer, "maintainer")
    set_role(admin, project, owner, "project-admin")

    every_action = ["pull", "push", "delete", "delete-repository"]
    robot = admin.post(
        f"/projects/{project}/robots",
        json={"name": "ci", "permissions": [{"project": project, "actions": every_action}]},
    )
    assert robot.status_code == 201, robot.text
    # A system administrator's token scoped to the project's repositories.
    scoped = admin.post(
        "/users/me/tokens",
        json={"name": unique("t"), "scopes": [{"project": project, "actions": every_action}]},
    )
    assert scoped.status_code == 201, scoped.text

    with api_client(server, maintainer, PASSWORD) as caller:
        assert_problem(caller.delete(f"/projects/{project}"), 403)
    with api_client(server, robot.json()["name"], robot.json()["secret"]) as caller:
        assert_problem(caller.delete(f"/projects/{project}"), 403)
    with bearer_client(server, scoped.json()["token"]) as caller:
        assert_problem(caller.delete(f"/projects/{project}"), 403)
    with httpx.Client(base_url=f"{server.url}/api/v1", timeout=30) as anonymous:
        assert_problem(anonymous.delete(f"/projects/{project}"), 401)
    pull_verified(v2, f"{project}/app", "v1")
    with api_client(server, owner, PASSWORD) as caller:
        assert caller.delete(f"/projects/{project}").status_code == 204
    assert v2.get(f"/v2/{project}/app/tags/list").status_code == 404


def test_a_virtual_project_goes_and_its_members_stay(admin: httpx.Client, v2: httpx.Client) -> None:
    member = create_project(admin)
    push_with_layer(v2, f"{member}/app", "v1", random_bytes(64))
    virtual = create_project(admin, "virtual")
    configured = admin.put(f"/projects/{virtual}/virtual", json={"members": [member]})
    assert configured.status_code == 200, configured.text
    pull_verified(v2, f"{virtual}/app", "v1")

    assert admin.delete(f"/projects/{virtual}").status_code == 204

    assert_problem(admin.get(f"/projects/{virtual}/virtual"), 404)
    assert v2.get(f"/v2/{virtual}/app/manifests/v1").status_code == 404
    pull_verified(v2, f"{member}/app", "v1")


def test_a_proxy_cache_project_goes_with_what_it_cached(
    tmp_path_factory: pytest.TempPathFactory, server: RegistryProcess, admin: httpx.Client
) -> None:
    upstream_dir = tmp_path_factory.mktemp("upstream") / "data"
    with (
        RegistryProcess(upstream_dir).start() as upstream,
        api_client(upstream) as upstream_admin,
        registry_client(upstream, ADMIN_USER, ADMIN_PASSWORD) as upstream_v2,
        registry_client(server, ADMIN_USER, ADMIN_PASSWORD) as v2,
    ):
        library = create_project(upstream_admin, "lib", public=True)
        push_with_layer(upstream_v2, f"{library}/app", "v1", random_bytes(256))
        cache = create_project(admin, "cache")
        body = {"url": upstream.url, "allowPrivateNetwork": True}
        assert admin.put(f"/projects/{cache}/proxy", json=body).status_code == 200
        cached = f"{cache}/{library}/app"
        pull_verified(v2, cached, "v1")
        catalog = v2.get("/v2/_catalog", params={"n": 10000}).json()["repositories"]
        assert cached in catalog

        assert admin.delete(f"/projects/{cache}").status_code == 204

        (entry,) = audit_entries(admin, cache, "repository:deleted")
        assert entry["resource"] == cached
        assert_problem(admin.get(f"/projects/{cache}/proxy"), 404)
        catalog = v2.get("/v2/_catalog", params={"n": 10000}).json()["repositories"]
        assert cached not in catalog
        assert v2.get(f"/v2/{cached}/manifests/v1").status_code == 404
    assert_fsck_clean(server)


def test_promotion_only_projects_refuse_deletion_without_break_glass(
    server: RegistryProcess, admin: httpx.Client, v2: httpx.Client
) -> None:
    project = create_project(admin)
    push_with_layer(v2, f"{project}/app", "v1", random_bytes(64))
    stage = {"stage": "prod", "promotionOnly": True}
    assert admin.put(f"/projects/{project}/stage", json=stage).status_code == 200

    body = assert_problem(admin.delete(f"/projects/{project}"), 409)
    assert "promotion-only" in body["detail"]
    refused = moorage(server, "project", "delete", project, "--yes")
    assert refused.returncode == 1
    assert "promotion-only" in refused.stderr

    pull_verified(v2, f"{project}/app", "v1")
    assert admin.get(f"/projects/{project}").status_code == 200


def test_break_glass_lets_a_system_administrator_delete_a_promotion_only_project(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    data_dir = tmp_path_factory.mktemp("project-break-glass") / "data"
    with (
        RegistryProcess(data_dir, env={"MOORAGE_PROMOTION_BREAK_GLASS": "true"}).start() as server,
        api_client(server) as admin,
        registry_client(server, ADMIN_USER, ADMIN_PASSWORD) as v2,
    ):
        project = create_project(admin)
        push_with_layer(v2, f"{project}/app", "v1", random_bytes(64))
        owner = create_user(admin, "own")
        set_role(admin, project, owner, "project-admin")
        stage = {"stage": "prod", "promotionOnly": True}
        assert admin.put(f"/projects/{project}/stage", json=stage).status_code == 200

        with api_client(server, owner, PASSWORD) as caller:
            assert_problem(caller.delete(f"/projects/{project}"), 409)
        assert admin.delete(f"/projects/{project}").status_code == 204

        (glass,) = audit_entries(admin, project, "promotion:break-glass")
        assert glass["actor"] == ADMIN_USER
        assert glass["resource"] == f"project:{project}"
        assert glass["details"] == {"operation": "delete"}
        audit_entries(admin, project, "repository:deleted")
        assert v2.get(f"/v2/{project}/app/tags/list").status_code == 404


def test_the_command_line_deletes_the_repositories_too(
    server: RegistryProcess, admin: httpx.Client, v2: httpx.Client
) -> None:
    project = create_project(admin)
    pushed = push_with_layer(v2, f"{project}/app", "v1", random_bytes(64))
    blobs = layers_of(v2, f"{project}/app", "v1")

    declined = moorage(server, "project", "delete", project, stdin="n\n")
    assert declined.returncode != 0
    pull_verified(v2, f"{project}/app", "v1")

    done = moorage(server, "project", "delete", project, "--yes")
    assert done.returncode == 0, done.stderr
    assert f"deleted project {project}" in done.stdout
    assert_gone(v2, f"{project}/app", pushed, blobs)
    (entry,) = audit_entries(admin, project, "repository:deleted")
    assert entry["actorKind"] == "system"
    missing = moorage(server, "project", "delete", project, "--yes")
    assert missing.returncode == 1
    assert "not found" in missing.stderr
