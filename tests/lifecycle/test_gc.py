"""Online garbage collection through the API: what goes, what stays, dry runs, options, audit."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from moorage.domain.digest import Digest
from tests.lifecycle.gc_support import plant_blob, run_gc, storage_of, stored_blobs
from tests.support.api import PASSWORD, api_client, create_user, eventually
from tests.support.auth import RegistryAuth
from tests.support.backends import query_database, server_database_url
from tests.support.oci import (
    OCI_INDEX,
    OCI_MANIFEST,
    assert_oci_error,
    digest_of,
    encode,
    image_manifest,
    push_blob,
    push_image,
    push_image_parts,
    push_manifest,
    random_bytes,
    start_upload,
)
from tests.support.server import RegistryProcess, command_environment
from tests.support.wait import wait_until


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    data = tmp_path_factory.mktemp("gc") / "data"
    with RegistryProcess(data, env={"MOORAGE_PULL_FLUSH_SECONDS": "0.2"}).start() as started:
        yield started


def _blobs_of(manifest: bytes) -> set[str]:
    import json

    document = json.loads(manifest)
    return {document["config"]["digest"], *(layer["digest"] for layer in document["layers"])}


def test_a_deleted_images_blobs_go_and_a_kept_images_blobs_stay(
    server: RegistryProcess, admin: httpx.Client, v2: httpx.Client, repo: str
) -> None:
    kept = push_image(v2, repo, "kept", layer_count=2)
    gone = push_image(v2, repo, "gone", layer_count=2)
    assert v2.delete(f"/v2/{repo}/manifests/{gone.digest}").status_code == 202
    before = stored_blobs(server.data_dir)
    assert _blobs_of(gone.body) <= before

    run = run_gc(admin, graceSeconds=0)

    assert run["status"] == "finished", run
    after = stored_blobs(server.data_dir)
    assert not (_blobs_of(gone.body) & after)
    assert _blobs_of(kept.body) <= after
    assert run["counts"]["blobs"] >= 3
    assert run["counts"]["bytes"] >= sum(1 for _ in range(3))
    pulled = v2.get(f"/v2/{repo}/manifests/kept", headers={"Accept": OCI_MANIFEST})
    assert pulled.status_code == 200
    for blob in _blobs_of(kept.body):
        response = v2.get(f"/v2/{repo}/blobs/{blob}")
        assert response.status_code == 200
        assert digest_of(response.content) == blob
    for blob in _blobs_of(gone.body):
        assert_oci_error(v2.get(f"/v2/{repo}/blobs/{blob}"), 404, "BLOB_UNKNOWN")


def test_a_blob_another_repository_still_uses_stays(
    server: RegistryProcess, admin: httpx.Client, v2: httpx.Client, repo: str
) -> None:
    other = f"{repo}-other"
    first = push_image(v2, repo, "v1")
    mounted = _blobs_of(first.body)
    for blob in mounted:
        response = v2.post(f"/v2/{other}/blobs/uploads/?mount={blob}&from={repo}")
        assert response.status_code == 201, response.text
    config = sorted(mounted)[0]
    layers = sorted(mounted)[1:]
    import json

    document = json.loads(first.body)
    push_manifest(v2, other, first.body, OCI_MANIFEST, "v1")
    assert document["config"]["digest"] in mounted
    assert v2.delete(f"/v2/{repo}/manifests/{first.digest}").status_code == 202

    run_gc(admin, graceSeconds=0)

    assert mounted <= stored_blobs(server.data_dir)
    for blob in [config, *layers]:
        assert v2.get(f"/v2/{other}/blobs/{blob}").status_code == 200
        # The repository the manifest left no longer links them.
        assert v2.head(f"/v2/{repo}/blobs/{blob}").status_code == 404


def test_a_dry_run_removes_nothing_and_counts_what_the_real_run_then_removes(
    server: RegistryProcess, admin: httpx.Client, v2: httpx.Client, repo: str
) -> None:
    run_gc(admin, graceSeconds=0)  # whatever earlier tests left
    gone = push_image(v2, repo, "gone", layer_count=3)
    assert v2.delete(f"/v2/{repo}/manifests/{gone.digest}").status_code == 202
    # A dry run sees the manifest row and the links now; the blobs behind them only once
    # those are gone (that is what the real run does first), so: two dry runs around a real
    # one that removes only the rows and links would differ; compare each stage instead.
    before = stored_blobs(server.data_dir)

    dry = run_gc(admin, graceSeconds=0, dryRun=True)

    assert dry["status"] == "finished"
    assert dry["dryRun"] is True
    assert stored_blobs(server.data_dir) == before
    assert dry["counts"].get("manifest_rows", 0) == 1
    assert dry["counts"].get("links", 0) == 4
    real = run_gc(admin, graceSeconds=0)
    assert real["counts"].get("manifest_rows", 0) == dry["counts"]["manifest_rows"]
    assert real["counts"].get("links", 0) == dry["counts"]["links"]
    assert real["counts"].get("blobs", 0) == 4
    assert not (_blobs_of(gone.body) & stored_blobs(server.data_dir))


def test_untagged_manifests_go_only_when_asked_and_never_a_child_or_a_live_referrer(
    server: RegistryProcess, admin: httpx.Client, v2: httpx.Client, repo: str
) -> None:
    untagged = push_image(v2, repo)
    tagged = push_image(v2, repo, "tagged")
    signature = push_image(v2, repo, subject=tagged, artifact_type="application/example.sig")
    child_a = push_image(v2, repo)
    child_b = push_image(v2, repo)
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [child_a.descriptor(), child_b.descriptor()],
    }
    push_manifest(v2, repo, encode(index), OCI_INDEX, "multi")
    orphan_referrer = push_image(v2, repo, subject=untagged, artifact_type="application/x.sig")

    without = run_gc(admin, graceSeconds=0)
    assert without["counts"].get("untagged_manifests", 0) == 0
    assert v2.head(f"/v2/{repo}/manifests/{untagged.digest}").status_code == 200

    with_option = run_gc(admin, graceSeconds=0, deleteUntagged=True)

    # The untagged image, then (next pass) its referrer, whose subject is gone.
    assert with_option["counts"]["untagged_manifests"] == 2
    for gone in (untagged, orphan_referrer):
        assert_oci_error(v2.get(f"/v2/{repo}/manifests/{gone.digest}"), 404, "MANIFEST_UNKNOWN")
    for kept in (tagged, signature, child_a, child_b):
        response = v2.get(f"/v2/{repo}/manifests/{kept.digest}", headers={"Accept": OCI_MANIFEST})
        assert response.status_code == 200, kept.digest
        for blob in _blobs_of(kept.body):
            assert v2.get(f"/v2/{repo}/blobs/{blob}").status_code == 200
    referrers = v2.get(f"/v2/{repo}/referrers/{tagged.digest}").json()["manifests"]
    assert [item["digest"] for item in referrers] == [signature.digest]


def test_untagged_manifests_younger_than_the_grace_period_stay(
    admin: httpx.Client, v2: httpx.Client, repo: str
) -> None:
    fresh = push_image(v2, repo)
    run = run_gc(admin, graceSeconds=3600, deleteUntagged=True)
    assert run["status"] == "finished"
    assert v2.head(f"/v2/{repo}/manifests/{fresh.digest}").status_code == 200


def test_an_uploaded_blob_no_manifest_uses_stays_for_the_grace_period(
    server: RegistryProcess, admin: httpx.Client, v2: httpx.Client, repo: str
) -> None:
    """The first half of a push (its blobs) is not garbage while the grace period runs."""
    data = random_bytes(300)
    digest = push_blob(v2, repo, data)
    run_gc(admin, graceSeconds=3600)
    assert digest in stored_blobs(server.data_dir)
    assert v2.get(f"/v2/{repo}/blobs/{digest}").content == data


def test_objects_in_storage_that_no_row_records_are_removed(
    server: RegistryProcess, admin: httpx.Client
) -> None:
    planted = plant_blob(server.data_dir, b"left behind by a crash: " + os.urandom(16))
    assert planted in stored_blobs(server.data_dir)

    dry = run_gc(admin, graceSeconds=0, dryRun=True)
    assert dry["counts"]["orphans"] >= 1
    assert planted in stored_blobs(server.data_dir)
    run = run_gc(admin, graceSeconds=0)

    assert run["counts"]["orphans"] >= 1
    assert planted not in stored_blobs(server.data_dir)


def test_expired_upload_sessions_are_removed(
    start_registry: Callable[..., RegistryProcess], repo: str
) -> None:
    server = start_registry(env={"MOORAGE_UPLOAD_EXPIRY_SECONDS": "1"})
    with (
        api_client(server) as admin,
        httpx.Client(base_url=server.url, timeout=60, auth=RegistryAuth()) as v2,
    ):
        location = start_upload(v2, repo)

        def expired() -> bool:
            run = run_gc(admin, graceSeconds=0)
            return run["counts"].get("uploads", 0) >= 1

        # The session expires one second after its last change (this server's setting).
        wait_until(expired, 60, lambda: "the idle upload session to be collected")
        response = v2.patch(
            location, content=b"more", headers={"Content-Type": "application/octet-stream"}
        )
        assert_oci_error(response, 404, "BLOB_UPLOAD_UNKNOWN")


def test_a_blob_pushed_again_after_its_collection_is_stored_again(
    server: RegistryProcess, admin: httpx.Client, v2: httpx.Client, repo: str
) -> None:
    config, layers = push_image_parts(v2, repo)
    document = image_manifest(config, layers)
    pushed = push_manifest(v2, repo, encode(document), OCI_MANIFEST, "v1")
    assert v2.delete(f"/v2/{repo}/manifests/{pushed.digest}").status_code == 202
    run_gc(admin, graceSeconds=0)
    assert layers[0].digest not in stored_blobs(server.data_dir)

    assert push_blob(v2, repo, layers[0].body) == layers[0].digest
    assert push_blob(v2, repo, config.body) == config.digest
    push_manifest(v2, repo, encode(document), OCI_MANIFEST, "v1")

    response = v2.get(f"/v2/{repo}/blobs/{layers[0].digest}")
    assert response.status_code == 200
    assert digest_of(response.content) == layers[0].digest


def test_a_run_is_listed_with_its_counts_and_audited(
    admin: httpx.Client,
) -> None:
    run = run_gc(admin, graceSeconds=0, dryRun=True)
    listed = admin.get("/system/gc/runs", params={"limit": 5})
    assert listed.status_code == 200
    assert run["id"] in [item["id"] for item in listed.json()]
    mine: list[dict[str, Any]] = []

    def audited() -> bool:
        entries = admin.get("/audit-logs", params={"action": "gc:run"}).json()
        mine[:] = [entry for entry in entries if entry["resource"] == f"gc:{run['id']}"]
        return bool(mine)

    eventually(audited, what="the run's audit entry")
    assert len(mine) == 1
    assert mine[0]["details"]["dry_run"] is True
    assert mine[0]["details"]["status"] == "finished"


def test_bad_requests_get_problem_json(admin: httpx.Client) -> None:
    for body in (
        {"graceSeconds": -1},
        {"graceSeconds": "0"},
        {"dryRun": "yes"},
        {"resume": "../../etc"},
        {"unknown": True},
    ):
        response = admin.post("/system/gc", json=body)
        assert response.status_code in (400, 422), (body, response.text)
        assert response.headers["Content-Type"].startswith("application/problem+json")
    assert admin.get("/system/gc/runs/gc-20260101000000-00000000").status_code == 404
    assert admin.get("/system/gc/runs", params={"limit": 1000}).status_code in (400, 422)
    not_resumable = admin.post("/system/gc", json={"resume": "gc-20260101000000-00000000"})
    assert not_resumable.status_code == 409


def test_only_administrators_may_collect(server: RegistryProcess, admin: httpx.Client) -> None:
    user = create_user(admin)
    with api_client(server, user, PASSWORD) as client:
        assert client.post("/system/gc", json={}).status_code == 403
        assert client.get("/system/gc/runs").status_code == 403
    with api_client(server, None) as anonymous:
        assert anonymous.post("/system/gc", json={}).status_code == 401


def test_the_command_line_collects_with_a_summary(
    server: RegistryProcess, v2: httpx.Client, repo: str, tmp_path: Path
) -> None:
    gone = push_image(v2, repo, "gone")
    assert v2.delete(f"/v2/{repo}/manifests/{gone.digest}").status_code == 202
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "moorage",
            "gc",
            "--data-dir",
            str(server.data_dir),
            "--grace-seconds",
            "0",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=command_environment(server.data_dir),
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    import json

    summary = json.loads(result.stdout)
    assert summary["status"] == "finished"
    assert summary["counts"]["blobs"] >= 2
    assert not (_blobs_of(gone.body) & stored_blobs(server.data_dir))


def test_a_schedule_starts_runs_by_itself(
    start_registry: Callable[..., RegistryProcess],
) -> None:
    server = start_registry(env={"MOORAGE_GC_SCHEDULE": "* * * * *"})
    scheduled: list[dict[str, Any]] = []
    with api_client(server) as admin:

        def ran() -> bool:
            runs = admin.get("/system/gc/runs").json()
            scheduled[:] = [run for run in runs if run["trigger"] == "schedule"]
            return any(run["status"] == "finished" for run in scheduled)

        # The next whole minute, and the run after it.
        wait_until(ran, 150, lambda: f"a scheduled run to finish: {scheduled}")
    assert scheduled[0]["requestedBy"] == "moorage"


def test_a_schedule_that_is_not_cron_is_refused_at_start(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "moorage", "migrate", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        env={**command_environment(tmp_path), "MOORAGE_GC_SCHEDULE": "every day"},
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert "gc_schedule" in result.stderr


def test_the_pull_times_of_a_deleted_manifest_go(
    server: RegistryProcess, admin: httpx.Client, v2: httpx.Client, repo: str
) -> None:
    pulled = push_image(v2, repo, "v1")
    response = v2.get(f"/v2/{repo}/manifests/v1", headers={"Accept": OCI_MANIFEST})
    assert response.status_code == 200
    database = server_database_url(server.data_dir)
    query = "SELECT count(*) FROM manifest_pulls WHERE digest = ?"

    def recorded() -> bool:
        return query_database(database, query, pulled.digest)[0][0] == 1

    wait_until(recorded, 30, lambda: "the pull to be recorded")
    assert v2.delete(f"/v2/{repo}/manifests/{pulled.digest}").status_code == 202
    run = run_gc(admin, graceSeconds=0)
    assert run["counts"]["pull_rows"] >= 1
    assert query_database(database, query, pulled.digest)[0][0] == 0


def test_a_blob_whose_bytes_went_between_lookup_and_read_answers_blob_unknown(
    server: RegistryProcess, v2: httpx.Client, repo: str
) -> None:
    """What a pull of an unreferenced blob sees when a collection removes it meanwhile (here:
    the bytes removed behind the registry's back): an OCI error, not a dropped connection."""
    data = random_bytes(2048)
    digest = push_blob(v2, repo, data)
    storage_of(server.data_dir).delete_blob(Digest.parse(digest))
    response = v2.get(f"/v2/{repo}/blobs/{digest}")
    assert_oci_error(response, 404, "BLOB_UNKNOWN")
    ranged = v2.get(f"/v2/{repo}/blobs/{digest}", headers={"Range": "bytes=0-9"})
    assert_oci_error(ranged, 404, "BLOB_UNKNOWN")
