"""kill -9 in the middle of real work, restart on the same data, and check nothing is lost or torn.

An acknowledged push must survive; an interrupted upload must be resumable from exactly the
bytes that reached storage; a blob must never be visible unless it is complete and verified.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.support.auth import RegistryAuth
from tests.support.images import (
    BackgroundRequest,
    Blob,
    HeldBody,
    bearer,
    fetch_blob,
    fetch_manifest,
    file_size,
    finish_upload,
    patch_chunk,
    push_blob,
    push_blob_chunked,
    push_manifest,
    push_token,
    sha256_digest,
    start_upload,
    stored_size,
    tiny_image,
    upload_id,
)
from tests.support.server import RegistryProcess, command_environment
from tests.support.wait import wait_until

WORKERS = pytest.mark.parametrize("workers", [1, 2], ids=["1-worker", "2-workers"])
# These watch and damage the files of the filesystem driver; the storage contract suite
# covers the same promises for every driver.
FILESYSTEM_ONLY = pytest.mark.skipif(
    os.environ.get("MOORAGE_TEST_STORAGE", "filesystem") != "filesystem",
    reason="inspects the filesystem driver's files",
)


def upload_file(server: RegistryProcess, location: str) -> Path:
    return server.data_dir / "storage" / "uploads" / upload_id(location)


@FILESYSTEM_ONLY
@WORKERS
def test_upload_resumes_after_kill_during_patch(
    start_registry: Callable[..., RegistryProcess], workers: int
) -> None:
    server = start_registry(workers=workers)
    repository = "crash/resume"
    data = os.urandom(3 * 1024 * 1024 + 4321)
    first_chunk = 512 * 1024
    held_at = first_chunk + 700 * 1024  # bytes of the interrupted PATCH that reach the server

    with httpx.Client(base_url=server.url, timeout=60, auth=RegistryAuth()) as client:
        location = start_upload(client, repository)
        location = patch_chunk(client, location, data[:first_chunk], 0).headers["Location"]

    # Stream the rest without a length (chunked), hold it part way, and kill the server there.
    body = HeldBody(data[first_chunk:], hold_at=held_at - first_chunk)
    request = BackgroundRequest(
        server.url,
        "PATCH",
        location,
        content=iter(body),
        # The session is the administrator's: only the subject that opened it may continue it.
        headers={
            "Content-Type": "application/octet-stream",
            **bearer(push_token(server.url, repository)),
        },
    )
    stored = upload_file(server, location)
    wait_until(lambda: file_size(stored) == held_at, message="the streamed bytes to reach storage")
    server.kill()
    body.release.set()
    request.join()
    assert request.response is None
    assert isinstance(request.error, httpx.TransportError)

    server.start()
    with httpx.Client(base_url=server.url, timeout=60, auth=RegistryAuth()) as client:
        status = client.get(location)
        assert status.status_code == 204, status.text
        offset = stored_size(status.headers["Range"])
        assert offset == held_at
        middle = offset + (len(data) - offset) // 2
        resumed = patch_chunk(client, status.headers["Location"], data[offset:middle], offset)
        finish_upload(
            client, resumed.headers["Location"], sha256_digest(data), data[middle:], middle
        )
        assert fetch_blob(client, repository, sha256_digest(data)) == data
    assert not stored.exists()


@dataclass
class PushLog:
    """What a pusher did: acknowledged pushes must survive, attempted blobs must not be torn."""

    acknowledged: list[tuple[str, str]] = field(default_factory=list)  # (tag, manifest digest)
    attempted: list[Blob] = field(default_factory=list)
    unexpected: list[BaseException] = field(default_factory=list)


def push_until_stopped(
    base_url: str, repository: str, name: str, log: PushLog, killed: threading.Event
) -> None:
    """Push small images (one blob monolithic, one chunked, then the tagged manifest) forever."""
    with httpx.Client(base_url=base_url, timeout=30, auth=RegistryAuth()) as client:
        for number in range(100_000):
            tag = f"{name}-{number}"
            image = tiny_image(f"{repository}-{tag}")
            config, layer = image.config, image.layers[0]
            try:
                log.attempted.extend([config, layer])
                push_blob(client, repository, config)
                push_blob_chunked(client, repository, layer, pieces=3)
                digest = push_manifest(client, repository, tag, image.manifest)
                log.acknowledged.append((tag, digest))
            except (httpx.TransportError, AssertionError) as error:
                if not killed.is_set():
                    log.unexpected.append(error)
                return


def assert_every_stored_blob_is_whole(server: RegistryProcess) -> None:
    """No torn blob: every file in the blob store hashes to the digest it is stored under."""
    root = server.data_dir / "storage" / "blobs" / "sha256"
    for blob_file in root.glob("*/*"):
        assert sha256_digest(blob_file.read_bytes()) == f"sha256:{blob_file.name}"


def assert_listed_manifests_are_complete(client: httpx.Client, repository: str) -> list[str]:
    tags: list[str] = client.get(f"/v2/{repository}/tags/list").json()["tags"]
    for tag in tags:
        by_tag = fetch_manifest(client, repository, tag)
        digest = by_tag.headers["Docker-Content-Digest"]
        assert sha256_digest(by_tag.content) == digest
        assert fetch_manifest(client, repository, digest).content == by_tag.content
        manifest = by_tag.json()
        for descriptor in [manifest["config"], *manifest["layers"]]:
            content = fetch_blob(client, repository, descriptor["digest"])
            assert sha256_digest(content) == descriptor["digest"]
            assert len(content) == descriptor["size"]
    return tags


def run_fsck(data_dir: Path) -> subprocess.CompletedProcess[str]:
    environment = command_environment(data_dir)  # the test backend's database and bucket
    return subprocess.run(
        [sys.executable, "-m", "moorage", "fsck", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        env=environment,
        check=False,
    )


@WORKERS
def test_kill_during_bulk_push_loses_nothing_acknowledged(
    start_registry: Callable[..., RegistryProcess], workers: int
) -> None:
    server = start_registry(workers=workers)
    repository = f"crash/bulk-{workers}"
    log = PushLog()
    killed = threading.Event()
    # Two pushers on their own connections, so with two workers both are busy at the kill.
    pushers = [
        threading.Thread(
            target=push_until_stopped,
            args=(server.url, repository, name, log, killed),
            daemon=True,
        )
        for name in ("a", "b")
    ]
    for pusher in pushers:
        pusher.start()
    wait_until(
        lambda: len(log.acknowledged) >= 30 or not all(p.is_alive() for p in pushers),
        message="30 pushed images",
    )
    killed.set()
    server.kill()
    for pusher in pushers:
        pusher.join(60)
        assert not pusher.is_alive()
    assert log.unexpected == []
    assert len(log.acknowledged) >= 30

    server.start()
    with httpx.Client(base_url=server.url, timeout=60, auth=RegistryAuth()) as client:
        tags = assert_listed_manifests_are_complete(client, repository)
        for tag, digest in log.acknowledged:
            assert tag in tags
            assert fetch_manifest(client, repository, tag).headers["Docker-Content-Digest"] == (
                digest
            )
        for blob in log.attempted:
            response = client.get(f"/v2/{repository}/blobs/{blob.digest}")
            assert response.status_code in (200, 404), response.text
            if response.status_code == 200:
                assert response.content == blob.data
    assert_every_stored_blob_is_whole(server)
    assert server.stop() == 0

    fsck = run_fsck(server.data_dir)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert "0 problem(s) found" in fsck.stdout


def blob_path(server: RegistryProcess, digest: str) -> Path:
    hex_part = digest.removeprefix("sha256:")
    return server.data_dir / "storage" / "blobs" / "sha256" / hex_part[:2] / hex_part


@FILESYSTEM_ONLY
def test_fsck_reports_missing_and_truncated_blobs(
    start_registry: Callable[..., RegistryProcess],
) -> None:
    server = start_registry()
    image = tiny_image("fsck-damage")
    with httpx.Client(base_url=server.url, timeout=60, auth=RegistryAuth()) as client:
        for blob in image.blobs:
            push_blob(client, "fsck/damaged", blob)
        push_manifest(client, "fsck/damaged", "v1", image.manifest)
    assert server.stop() == 0
    assert run_fsck(server.data_dir).returncode == 0

    blob_path(server, image.config.digest).unlink()
    with open(blob_path(server, image.layers[0].digest), "r+b") as layer_file:
        layer_file.truncate(10)

    fsck = run_fsck(server.data_dir)
    assert fsck.returncode == 1
    assert "2 problem(s) found" in fsck.stdout
    assert f"blob {image.config.digest} is recorded but missing" in fsck.stdout
    assert f"blob {image.layers[0].digest} is 10 bytes in storage" in fsck.stdout


@pytest.mark.parametrize("exists", [True, False], ids=["empty-dir", "missing-dir"])
def test_fsck_of_a_directory_without_a_registry_fails(tmp_path: Path, exists: bool) -> None:
    data_dir = tmp_path / "not-a-registry"
    if exists:
        data_dir.mkdir()

    fsck = run_fsck(data_dir)

    assert fsck.returncode == 1, fsck.stdout + fsck.stderr
    assert "holds no registry database" in fsck.stdout
    assert "Traceback" not in fsck.stderr
    # Checking must not create a registry where there was none.
    if exists:
        assert list(data_dir.iterdir()) == []
    else:
        assert not data_dir.exists()
