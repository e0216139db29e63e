"""Quotas against a real server: real blobs and manifests pushed over /v2, usage and limits
through /api/v1, refusals as OCI `DENIED` naming the quota and the usage, announcements in the
audit log, and concurrent pushers that never take a project over its quota.

The server runs two workers, so a refusal decided in one process must hold against pushes
landing in the other (on PostgreSQL with MOORAGE_TEST_DATABASE=postgresql: across connections
serialised by the project's advisory lock).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
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
    eventually,
)
from tests.support.auth import RegistryAuth
from tests.support.oci import (
    OCI_CONFIG,
    OCI_LAYER,
    OCI_MANIFEST,
    assert_oci_error,
    digest_of,
    encode,
    image_manifest,
    push_blob,
    push_blob_chunked,
    push_blob_in_one_post,
    push_blob_object,
    push_manifest,
    put_manifest,
    random_bytes,
    start_upload,
    with_digest,
)
from tests.support.server import RegistryProcess, command_environment

WARNING_PERCENT = 50


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    data = tmp_path_factory.mktemp("quotas") / "data"
    env = {"MOORAGE_QUOTA_WARNING_PERCENT": str(WARNING_PERCENT)}
    with RegistryProcess(data, workers=2, env=env).start() as process:
        yield process


@pytest.fixture
def api(server: RegistryProcess) -> Iterator[httpx.Client]:
    with api_client(server) as client:
        yield client


def project_with(api: httpx.Client, **limits: int) -> str:
    project = create_project(api, "quota")
    response = api.put(f"/projects/{project}/quota", json=limits)
    assert response.status_code == 200, response.text
    return project


def usage(api: httpx.Client, project: str) -> dict[str, Any]:
    response = api.get(f"/projects/{project}/usage")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def put_blob(client: httpx.Client, repo: str, data: bytes) -> httpx.Response:
    location = start_upload(client, repo)
    return client.put(
        with_digest(location, digest_of(data)),
        content=data,
        headers={"Content-Type": "application/octet-stream"},
    )


def audit(api: httpx.Client, project: str, action: str) -> list[dict[str, Any]]:
    response = api.get("/audit-logs", params={"project": project, "action": action, "limit": 100})
    assert response.status_code == 200, response.text
    entries: list[dict[str, Any]] = response.json()
    return entries


def test_a_blob_over_the_storage_quota_is_denied_with_quota_and_usage(
    api: httpx.Client, v2: httpx.Client
) -> None:
    project = project_with(api, storageBytes=1000)
    push_blob(v2, f"{project}/app", random_bytes(600))
    refused = put_blob(v2, f"{project}/app", random_bytes(500))
    error = assert_oci_error(refused, 403, "DENIED")
    assert error["message"] == (
        f"project {project}: storage quota 1000 B, used 600 B, this blob 500 B"
    )
    assert error["detail"] == {
        "project": project,
        "quota": "storage",
        "limit": 1000,
        "used": 600,
        "adding": 500,
    }
    # Every way of completing an upload is refused the same way.
    assert_oci_error(push_blob_in_one_post(v2, f"{project}/app", random_bytes(401)), 403, "DENIED")
    with pytest.raises(AssertionError, match="DENIED"):
        push_blob_chunked(v2, f"{project}/other", random_bytes(401), chunk_size=100)
    push_blob(v2, f"{project}/app", random_bytes(400))  # exactly up to the limit
    assert usage(api, project)["usage"] == {"storageBytes": 1000, "artifacts": 0}
    # Audit entries are written in batches: wait for the batch.
    eventually(lambda: len(audit(api, project, "policy:denied")) == 3, what="three denials")
    denials = audit(api, project, "policy:denied")
    assert {entry["details"]["policy"] for entry in denials} == {"quota"}


def test_a_blob_shared_by_repositories_of_a_project_counts_once(
    api: httpx.Client, v2: httpx.Client
) -> None:
    project = project_with(api, storageBytes=1000)
    shared = random_bytes(700)
    push_blob(v2, f"{project}/a", shared)
    push_blob(v2, f"{project}/b", shared)  # uploaded again: the project holds it already
    mounted = v2.post(
        f"/v2/{project}/c/blobs/uploads/",
        params={"mount": digest_of(shared), "from": f"{project}/a"},
    )
    assert mounted.status_code == 201, mounted.text
    assert usage(api, project)["usage"]["storageBytes"] == 700
    assert usage(api, project)["percent"] == 70.0


def test_mounting_into_a_full_project_is_refused(api: httpx.Client, v2: httpx.Client) -> None:
    full = project_with(api, storageBytes=100)
    source = create_project(api, "source")
    push_blob(v2, f"{full}/app", random_bytes(100))
    elsewhere = random_bytes(10)
    push_blob(v2, f"{source}/app", elsewhere)
    refused = v2.post(
        f"/v2/{full}/app/blobs/uploads/",
        params={"mount": digest_of(elsewhere), "from": f"{source}/app"},
    )
    error = assert_oci_error(refused, 403, "DENIED")
    assert error["message"] == f"project {full}: storage quota 100 B, used 100 B, this blob 10 B"
    assert v2.head(f"/v2/{full}/app/blobs/{digest_of(elsewhere)}").status_code == 404


def test_a_manifest_over_the_artifact_quota_is_denied(api: httpx.Client, v2: httpx.Client) -> None:
    project = project_with(api, artifacts=1)
    repo = f"{project}/app"
    config = push_blob_object(v2, repo, OCI_CONFIG, encode({"n": 1}))
    layer = push_blob_object(v2, repo, OCI_LAYER, random_bytes(64))
    other = push_blob_object(v2, repo, OCI_LAYER, random_bytes(64))
    first = encode(image_manifest(config, [layer]))
    push_manifest(v2, repo, first, OCI_MANIFEST, "1.0")
    push_manifest(v2, repo, first, OCI_MANIFEST, "latest")  # a new tag of it adds nothing
    refused = put_manifest(v2, repo, "2.0", encode(image_manifest(config, [other])), OCI_MANIFEST)
    error = assert_oci_error(refused, 403, "DENIED")
    assert error["message"] == f"project {project}: artifact quota 1, used 1, this push adds 1"
    assert v2.get(f"/v2/{repo}/manifests/2.0").status_code == 404
    assert usage(api, project)["usage"]["artifacts"] == 1
    # Deleting the artifact makes room again.
    deleted = v2.delete(f"/v2/{repo}/manifests/{digest_of(first)}")
    assert deleted.status_code == 202, deleted.text
    push_manifest(v2, repo, encode(image_manifest(config, [other])), OCI_MANIFEST, "2.0")


def test_the_warning_and_the_first_refusal_are_announced_once(
    api: httpx.Client, v2: httpx.Client
) -> None:
    project = project_with(api, storageBytes=1000)
    repo = f"{project}/app"
    push_blob(v2, repo, random_bytes(300))  # 30%
    push_blob(v2, repo, random_bytes(300))  # 60%: over the warning threshold
    eventually(lambda: len(audit(api, project, "quota:warning")) == 1, what="the warning")
    push_blob(v2, repo, random_bytes(100))  # 70%: still over, no second warning
    for _ in range(2):
        assert_oci_error(put_blob(v2, repo, random_bytes(400)), 403, "DENIED")
    eventually(lambda: len(audit(api, project, "quota:exceeded")) == 1, what="the refusal")
    eventually(lambda: usage(api, project)["state"] == "exceeded", what="the state")
    eventually(lambda: len(audit(api, project, "policy:denied")) == 2, what="both denials")
    warning = audit(api, project, "quota:warning")
    assert len(warning) == 1
    assert warning[0]["details"] == {
        "quota": "storage",
        "limit": 1000,
        "used": 600,
        "percent": 60.0,
    }
    assert len(audit(api, project, "quota:exceeded")) == 1


def test_limits_are_set_by_administrators_and_checked(
    server: RegistryProcess, api: httpx.Client
) -> None:
    project = create_project(api, "limits")
    assert usage(api, project)["limits"] == {"storageBytes": None, "artifacts": None}
    for bad in ({"storageBytes": -1}, {"storageBytes": "1 GiB"}, {"bytes": 1}, {"artifacts": 1.5}):
        assert_problem(api.put(f"/projects/{project}/quota", json=bad), 422)
    assert_problem(api.put("/projects/no-such-project/quota", json={"artifacts": 1}), 404)
    assert_problem(api.get("/projects/no-such-project/usage"), 404)
    user = create_user(api, "quota-admin")
    response = api.put(f"/projects/{project}/members/user/{user}", json={"role": "project-admin"})
    assert response.status_code == 200, response.text
    with api_client(server, user, PASSWORD) as member:
        eventually(lambda: member.get(f"/projects/{project}/usage").status_code == 200)
        # A project administrator reads the usage but may not raise their own quota.
        assert_problem(member.put(f"/projects/{project}/quota", json={"artifacts": 0}), 403)
        assert_problem(member.delete(f"/projects/{project}/quota"), 403)
        assert_problem(member.post("/system/quotas/recount"), 403)
    set_ = api.put(f"/projects/{project}/quota", json={"storageBytes": 0, "artifacts": 5})
    assert set_.json()["projectLimits"] == {"storageBytes": 0, "artifacts": 5}
    assert set_.json()["limits"] == {"storageBytes": None, "artifacts": 5}
    cleared = api.delete(f"/projects/{project}/quota")
    assert cleared.json()["projectLimits"] == {"storageBytes": None, "artifacts": None}
    eventually(lambda: len(audit(api, project, "quota:clear")) == 1, what="the audit batch")
    assert [e["details"] for e in audit(api, project, "quota:set")] == [
        {"bytes": 0, "artifacts": 5}
    ]


def test_concurrent_pushers_never_take_a_project_over_its_quota(
    server: RegistryProcess, api: httpx.Client
) -> None:
    blob_size = 1000
    limit = 25 * blob_size + 500  # room for 25 blobs, not 26
    project = project_with(api, storageBytes=limit)
    accepted: list[int] = []
    refused: list[int] = []
    failures: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def pusher(n: int) -> None:
        with httpx.Client(base_url=server.url, timeout=60, auth=RegistryAuth()) as client:
            start.wait()
            for _ in range(6):
                response = put_blob(client, f"{project}/r{n % 3}", random_bytes(blob_size))
                with lock:
                    if response.status_code == 201:
                        accepted.append(blob_size)
                    elif response.status_code == 403:
                        refused.append(blob_size)
                    else:
                        failures.append(f"{response.status_code} {response.text}")

    threads = [threading.Thread(target=pusher, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert len(accepted) == 25
    assert len(refused) == 48 - 25
    assert usage(api, project)["usage"]["storageBytes"] == sum(accepted) <= limit
    recount = api.post("/system/quotas/recount")
    assert recount.status_code == 200, recount.text
    assert recount.json() == {"corrected": []}


def moorage(server: RegistryProcess, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "moorage", *arguments, "--data-dir", str(server.data_dir)],
        env=command_environment(server.data_dir),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_moorage_quota_show_set_clear_recount(
    server: RegistryProcess, api: httpx.Client, v2: httpx.Client
) -> None:
    project = create_project(api, "cli")
    push_blob(v2, f"{project}/app", random_bytes(100))
    done = moorage(server, "quota", "set", project, "--storage-bytes", "400", "--artifacts", "3")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"set the quotas of {project}")
    shown = moorage(server, "quota", "show", project, "--output", "json")
    assert shown.returncode == 0, shown.stderr
    body = json.loads(shown.stdout)
    assert body["usage"] == {"storageBytes": 100, "artifacts": 0}
    assert body["limits"] == {"storageBytes": 400, "artifacts": 3}
    assert body["percent"] == 25.0
    # The server sees the limit the command set.
    assert_oci_error(put_blob(v2, f"{project}/app", random_bytes(301)), 403, "DENIED")
    recount = moorage(server, "quota", "recount", "--output", "json")
    assert recount.returncode == 0, recount.stderr
    assert json.loads(recount.stdout) == {"corrected": []}
    cleared = moorage(server, "quota", "clear", project, "--output", "json")
    assert cleared.returncode == 0, cleared.stderr
    push_blob(v2, f"{project}/app", random_bytes(301))
    missing = moorage(server, "quota", "set", "no-such-project", "--artifacts", "1")
    assert missing.returncode != 0
    assert "project no-such-project not found" in missing.stderr
