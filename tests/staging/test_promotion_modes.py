"""A project's mode applies to everything in flight, against a real server.

Upload sessions opened before a project became promotion-only are refused at their next step
(status, chunk, finish) with the promotion path and lose their bytes; mounts and manifests
that use blobs uploaded before are refused too. Promotion-only and proxy-cache exclude each
other in either order (API and CLI), a virtual project's promotion-only push member refuses
pushes made through it, and every refusal is audited.

The promise under test: a switch applies at once on the worker that made it and within 2 s
on every other; the tests poll for it (`eventually`) instead of sleeping.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

from moorage.cli import main
from tests.support.api import (
    PASSWORD,
    api_client,
    assert_problem,
    create_project,
    create_user,
    eventually,
    set_role,
)
from tests.support.auth import ADMIN_PASSWORD, ADMIN_USER, RegistryAuth
from tests.support.images import Image, tiny_image
from tests.support.oci import (
    assert_oci_error,
    digest_of,
    patch_chunk,
    push_blob,
    random_bytes,
    start_upload,
    with_digest,
)
from tests.support.server import RegistryProcess, database_url_for

PROMOTION_HINT = "accepts only promotions: POST /api/v1/promotions or `moorage promote`"
LOOPBACK_UPSTREAM = {"url": "http://127.0.0.1:9", "allowPrivateNetwork": True}
OCTETS = {"Content-Type": "application/octet-stream"}

_labels = iter(range(1_000_000))


# -- servers and clients


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    with RegistryProcess(tmp_path_factory.mktemp("modes") / "data").start() as process:
        yield process


@pytest.fixture
def admin(server: RegistryProcess) -> Iterator[httpx.Client]:
    with api_client(server) as http:
        yield http


def registry_client(server: RegistryProcess, username: str, password: str) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=60, auth=RegistryAuth(username, password))


@pytest.fixture(params=["developer", "administrator"])
def pusher(
    request: pytest.FixtureRequest, server: RegistryProcess, admin: httpx.Client
) -> Iterator[tuple[str, httpx.Client]]:
    """(username, /v2 client) of someone who may push: a developer, or a system administrator
    (whom promotion-only refuses too while break-glass is off)."""
    if request.param == "administrator":
        with registry_client(server, ADMIN_USER, ADMIN_PASSWORD) as client:
            yield ADMIN_USER, client
        return
    username = create_user(admin, "developer")
    with registry_client(server, username, PASSWORD) as client:
        yield username, client


# -- helpers


def put_stage(admin: httpx.Client, project: str, only: bool, stage: str | None = None) -> None:
    response = admin.put(f"/projects/{project}/stage", json={"stage": stage, "promotionOnly": only})
    assert response.status_code == 200, response.text


def audit(admin: httpx.Client, project: str, action: str) -> list[dict[str, Any]]:
    response = admin.get("/audit-logs", params={"project": project, "action": action, "limit": 100})
    assert response.status_code == 200, response.text
    entries: list[dict[str, Any]] = response.json()
    return entries


def denials(admin: httpx.Client, project: str, policy: str, count: int) -> list[dict[str, Any]]:
    """The project's policy:denied entries of `policy`, once `count` were written (batched)."""

    def found() -> list[dict[str, Any]]:
        return [
            entry
            for entry in audit(admin, project, "policy:denied")
            if entry["details"]["policy"] == policy
        ]

    eventually(lambda: len(found()) >= count, what=f"{count} {policy} denials audited")
    return found()


def assert_promotion_path(response: httpx.Response, project: str) -> None:
    message = assert_oci_error(response, 403, "DENIED")["message"]
    assert f"{project} {PROMOTION_HINT}" in message, message


def blob_absent(client: httpx.Client, repository: str, digest: str) -> bool:
    return client.head(f"/v2/{repository}/blobs/{digest}").status_code == 404


def switched(client: httpx.Client, probe: str, project: str) -> Callable[[], bool]:
    """Whether a step of the probe session is refused yet: the switch has reached the worker."""

    def check() -> bool:
        response = client.get(probe)
        if response.status_code == 204:
            return False
        assert_promotion_path(response, project)
        return True

    return check


# -- upload sessions opened before the switch


def test_sessions_opened_before_the_switch_never_land(
    server: RegistryProcess, admin: httpx.Client, pusher: tuple[str, httpx.Client]
) -> None:
    username, v2 = pusher
    dev, prod = create_project(admin, "dev"), create_project(admin, "prod")
    if username != ADMIN_USER:
        set_role(admin, prod, username, "developer")
        set_role(admin, dev, username, "developer")
    repository = f"{prod}/app"
    whole, chunked = random_bytes(4096), random_bytes(8192)
    mounted = random_bytes(2048)
    image = tiny_image(f"modes-{next(_labels)}")
    # Before the switch: a session for a monolithic PUT, one with its first chunk in, one to
    # probe with, a blob to mount from dev, and an image's blobs already in prod.
    monolithic = start_upload(v2, repository)
    chunks = start_upload(v2, repository)
    first = patch_chunk(v2, chunks, chunked[:4096], 0)
    assert first.status_code == 202, first.text
    chunks = first.headers["Location"]
    probe = start_upload(v2, repository)
    mount_digest = push_blob(v2, f"{dev}/app", mounted)
    for blob in image.blobs:
        push_blob(v2, repository, blob.data)

    put_stage(admin, prod, True, "prod")
    eventually(switched(v2, probe, prod), what="the switch reached the worker")

    finished = v2.put(with_digest(monolithic, digest_of(whole)), content=whole, headers=OCTETS)
    assert_promotion_path(finished, prod)
    patched = patch_chunk(v2, chunks, chunked[4096:], 4096)
    assert_promotion_path(patched, prod)
    closed = v2.put(with_digest(chunks, digest_of(chunked)))
    assert_promotion_path(closed, prod)
    assert_promotion_path(v2.get(chunks), prod)
    mount = v2.post(
        f"/v2/{repository}/blobs/uploads/", params={"mount": mount_digest, "from": f"{dev}/app"}
    )
    assert_promotion_path(mount, prod)
    manifest = v2.put(
        f"/v2/{repository}/manifests/v1",
        content=image.manifest.data,
        headers={"Content-Type": image.manifest.media_type},
    )
    assert_promotion_path(manifest, prod)

    for digest in (digest_of(whole), digest_of(chunked), mount_digest, image.manifest.digest):
        assert blob_absent(v2, repository, digest), digest
    assert v2.get(f"/v2/{repository}/tags/list").json().get("tags") in (None, [])

    # The refused sessions lost their bytes: with the project ordinary again they are gone,
    # not resumable.
    put_stage(admin, prod, False, "prod")
    for session in (monolithic, chunks, probe):
        assert_oci_error(v2.get(session), 404, "BLOB_UPLOAD_UNKNOWN")

    entries = denials(admin, prod, "promotion-only", 7)
    assert {entry["actor"] for entry in entries} == {username}
    assert {entry["details"]["point"] for entry in entries} == {"push:blob", "push:manifest"}
    assert all(PROMOTION_HINT in entry["details"]["reason"] for entry in entries)


def test_a_single_request_upload_after_the_switch_is_refused(
    admin: httpx.Client, pusher: tuple[str, httpx.Client]
) -> None:
    username, v2 = pusher
    prod = create_project(admin, "prod")
    if username != ADMIN_USER:
        set_role(admin, prod, username, "developer")
    put_stage(admin, prod, True)
    data = random_bytes(1024)
    refused = v2.post(
        f"/v2/{prod}/app/blobs/uploads/", params={"digest": digest_of(data)}, content=data
    )
    assert_promotion_path(refused, prod)
    assert blob_absent(v2, f"{prod}/app", digest_of(data))


def test_switching_break_glass_off_refuses_an_administrators_open_session(
    start_registry: Callable[..., RegistryProcess],
) -> None:
    server = start_registry(env={"MOORAGE_PROMOTION_BREAK_GLASS": "true"})
    with api_client(server) as admin, registry_client(server, ADMIN_USER, ADMIN_PASSWORD) as v2:
        prod = create_project(admin, "prod")
        put_stage(admin, prod, True, "prod")
        # With break-glass on, an administrator's session in a promotion-only project works...
        done = random_bytes(1024)
        push_blob(v2, f"{prod}/hotfix", done)
        assert not blob_absent(v2, f"{prod}/hotfix", digest_of(done))
        # ...and one left open is refused once break-glass is off.
        data = random_bytes(6000)
        session = start_upload(v2, f"{prod}/hotfix")
        first = patch_chunk(v2, session, data[:3000], 0)
        assert first.status_code == 202, first.text
        session = first.headers["Location"]
    server.env = {}
    server.restart()
    with api_client(server) as admin, registry_client(server, ADMIN_USER, ADMIN_PASSWORD) as v2:
        finished = v2.put(with_digest(session, digest_of(data)), content=data[3000:])
        assert_promotion_path(finished, prod)
        assert blob_absent(v2, f"{prod}/hotfix", digest_of(data))
        entries = denials(admin, prod, "promotion-only", 1)
        assert entries[-1]["actor"] == ADMIN_USER


# -- promotion-only and proxy-cache exclude each other


def test_a_proxy_cache_project_cannot_become_promotion_only(admin: httpx.Client) -> None:
    cache = create_project(admin, "cache")
    configured = admin.put(f"/projects/{cache}/proxy", json=LOOPBACK_UPSTREAM)
    assert configured.status_code == 200, configured.text
    body = assert_problem(
        admin.put(f"/projects/{cache}/stage", json={"stage": "prod", "promotionOnly": True}),
        409,
    )
    assert "proxy cache" in body["detail"]
    assert "promotion-only" in body["detail"]
    assert f"DELETE /api/v1/projects/{cache}/proxy" in body["detail"]
    stage = admin.get(f"/projects/{cache}/stage").json()
    assert stage["promotionOnly"] is False
    # A stage label alone does not make it promotion-only, so it is allowed.
    put_stage(admin, cache, False, "dev")
    (entry,) = denials(admin, cache, "proxy-cache", 1)
    assert entry["details"]["point"] == "configure:stage"
    assert entry["resource"] == f"project:{cache}"
    # Once it stops proxying, it can be promotion-only.
    assert admin.delete(f"/projects/{cache}/proxy").status_code == 204
    put_stage(admin, cache, True, "prod")


def test_a_promotion_only_project_cannot_become_a_proxy_cache(admin: httpx.Client) -> None:
    prod = create_project(admin, "prod")
    put_stage(admin, prod, True, "prod")
    body = assert_problem(admin.put(f"/projects/{prod}/proxy", json=LOOPBACK_UPSTREAM), 409)
    assert "promotion-only" in body["detail"]
    assert "proxy cache" in body["detail"]
    assert "promotionOnly false" in body["detail"]
    assert_problem(admin.get(f"/projects/{prod}/proxy"), 404)
    assert_problem(admin.post(f"/projects/{prod}/proxy/check"), 404)
    (entry,) = denials(admin, prod, "promotion-only", 1)
    assert entry["details"]["point"] == "configure:proxy"
    assert entry["actor"] == ADMIN_USER
    put_stage(admin, prod, False, "prod")
    configured = admin.put(f"/projects/{prod}/proxy", json=LOOPBACK_UPSTREAM)
    assert configured.status_code == 200, configured.text


def test_concurrent_mode_changes_never_leave_both(
    server: RegistryProcess, admin: httpx.Client
) -> None:
    projects = [create_project(admin, "race") for _ in range(8)]

    def make_promotion_only(project: str) -> int:
        with api_client(server) as client:
            return client.put(
                f"/projects/{project}/stage", json={"promotionOnly": True}
            ).status_code

    def make_proxy(project: str) -> int:
        with api_client(server) as client:
            return client.put(f"/projects/{project}/proxy", json=LOOPBACK_UPSTREAM).status_code

    with ThreadPoolExecutor(max_workers=4) as pool:
        stages = [pool.submit(make_promotion_only, project) for project in projects]
        proxies = [pool.submit(make_proxy, project) for project in projects]
        outcomes = [(s.result(), p.result()) for s, p in zip(stages, proxies, strict=True)]
    for project, outcome in zip(projects, outcomes, strict=True):
        assert sorted(outcome) == [200, 409], (project, outcome)
        only = admin.get(f"/projects/{project}/stage").json()["promotionOnly"]
        proxied = admin.get(f"/projects/{project}/proxy").status_code == 200
        assert only != proxied, (project, only, proxied)


def test_the_cli_refuses_a_proxy_on_a_promotion_only_project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [key for key in os.environ if key.startswith("MOORAGE_")]:
        monkeypatch.delenv(name)
    data_dir = tmp_path / "data"
    if (database_url := database_url_for(data_dir)) is not None:
        monkeypatch.setenv("MOORAGE_DATABASE_URL", database_url)  # the server's, below
    runner = CliRunner()

    def moorage(*args: str, code: int = 0) -> Result:
        result = runner.invoke(main, [*args, "--data-dir", str(data_dir)])
        assert result.exit_code == code, (result.output, result.exception)
        return result

    proxy = ("--url", "http://127.0.0.1:9", "--allow-private-network")
    moorage("project", "create", "prod")
    moorage("project", "create", "hub")
    moorage("project", "proxy", "hub", *proxy)
    server = RegistryProcess(data_dir).start()
    try:
        with api_client(server) as admin:
            put_stage(admin, "prod", True, "prod")
            refused = moorage("project", "proxy", "prod", *proxy, code=1)
            assert "promotion-only" in refused.output
            assert_problem(admin.get("/projects/prod/proxy"), 404)
            body = assert_problem(
                admin.put("/projects/hub/stage", json={"promotionOnly": True}), 409
            )
            assert "moorage project proxy-remove hub" in body["detail"]
            # The refusal made by the CLI is in the audit log too.
            (entry,) = denials(admin, "prod", "promotion-only", 1)
            assert entry["details"]["point"] == "configure:proxy"
    finally:
        server.stop()


# -- virtual projects


def test_a_virtual_projects_promotion_only_push_member_refuses_pushes_through_it(
    server: RegistryProcess, admin: httpx.Client
) -> None:
    team, virtual = create_project(admin, "team"), create_project(admin, "all")
    configured = admin.put(
        f"/projects/{virtual}/virtual", json={"members": [team], "pushMember": team}
    )
    assert configured.status_code == 200, configured.text
    data = random_bytes(2048)
    image: Image = tiny_image(f"virtual-{next(_labels)}")
    with registry_client(server, ADMIN_USER, ADMIN_PASSWORD) as v2:
        eventually(
            lambda: v2.post(f"/v2/{virtual}/app/blobs/uploads/").status_code == 202,
            what="the virtual project routes pushes",
        )
        session = start_upload(v2, f"{virtual}/app")
        put_stage(admin, team, True, "prod")
        finished = v2.put(with_digest(session, digest_of(data)), content=data, headers=OCTETS)
        assert_promotion_path(finished, team)
        assert_promotion_path(v2.post(f"/v2/{virtual}/app/blobs/uploads/"), team)
        manifest = v2.put(
            f"/v2/{virtual}/app/manifests/v1",
            content=image.manifest.data,
            headers={"Content-Type": image.manifest.media_type},
        )
        assert_promotion_path(manifest, team)
        assert blob_absent(v2, f"{team}/app", digest_of(data))
    assert len(denials(admin, team, "promotion-only", 3)) >= 3
