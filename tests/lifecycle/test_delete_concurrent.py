"""Deleting a repository while clients push into it, against a real server (two workers).

A push racing the deletion lands wholly before it (and goes with it) or wholly after it (and
re-creates the repository); a push whose blobs were unlinked between its upload and its
manifest is refused with MANIFEST_BLOB_UNKNOWN, never answered with a server error, and the
client's retry succeeds. Afterwards every tag pulls with all its blobs, digest-verified, and
`moorage fsck` finds nothing wrong.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import pytest

from tests.lifecycle.deletion_support import (
    assert_fsck_clean,
    pull_verified,
    registry_client,
)
from tests.support.api import api_client, create_project
from tests.support.auth import ADMIN_PASSWORD, ADMIN_USER
from tests.support.oci import (
    OCI_CONFIG,
    OCI_LAYER,
    OCI_MANIFEST,
    digest_of,
    encode,
    image_manifest,
    push_blob_object,
    put_manifest,
    random_bytes,
)
from tests.support.server import RegistryProcess
from tests.support.wait import wait_until

PUSHERS = 4
DELETIONS = 6


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    data_dir = tmp_path_factory.mktemp("delete-concurrent") / "data"
    with RegistryProcess(data_dir, workers=2).start() as process:
        yield process


@dataclass
class Pushes:
    landed: list[str] = field(default_factory=list)  # tags answered 201
    refused: list[str] = field(default_factory=list)  # MANIFEST_BLOB_UNKNOWN, then retried
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)

    def count(self) -> int:
        with self.lock:
            return len(self.landed)


def push_until_it_lands(client: httpx.Client, repository: str, tag: str, pushes: Pushes) -> None:
    """Push a fresh image; on MANIFEST_BLOB_UNKNOWN (a deletion unlinked its blobs) push its
    blobs again and retry, as a client does."""
    config = push_blob_object(client, repository, OCI_CONFIG, encode({"tag": tag}))
    layer_bytes = random_bytes(512)
    for _ in range(20):
        layer = push_blob_object(client, repository, OCI_LAYER, layer_bytes)
        push_blob_object(client, repository, OCI_CONFIG, config.body)
        body = encode(image_manifest(config, [layer]))
        response = put_manifest(client, repository, tag, body, OCI_MANIFEST)
        if response.status_code == 201:
            assert response.headers["Docker-Content-Digest"] == digest_of(body)
            with pushes.lock:
                pushes.landed.append(tag)
            return
        assert response.status_code == 400, response.text
        assert response.json()["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN", response.text
        with pushes.lock:
            pushes.refused.append(tag)
    raise AssertionError(f"{repository}:{tag} never landed")


def pusher(server: RegistryProcess, repository: str, number: int, pushes: Pushes) -> int:
    with registry_client(server, ADMIN_USER, ADMIN_PASSWORD) as client:
        round_number = 0
        while not pushes.stop.is_set():
            push_until_it_lands(client, repository, f"p{number}-{round_number}", pushes)
            round_number += 1
        return round_number


def test_pushes_racing_deletions_leave_a_consistent_registry(server: RegistryProcess) -> None:
    with api_client(server) as admin, registry_client(server, ADMIN_USER, ADMIN_PASSWORD) as v2:
        project = create_project(admin)
        repository = f"{project}/app"
        pushes = Pushes()
        path = f"/projects/{project}/repositories/app"
        statuses: list[int] = []
        with ThreadPoolExecutor(PUSHERS) as pool:
            running = [pool.submit(pusher, server, repository, n, pushes) for n in range(PUSHERS)]
            try:
                for _ in range(DELETIONS):
                    seen = pushes.count()
                    wait_until(lambda seen=seen: pushes.count() > seen, 120, "a push to land")
                    response = admin.delete(path)
                    assert response.status_code in (200, 404), response.text
                    statuses.append(response.status_code)
                # PUSHERS + 1 landings after the last deletion answered: one pusher landed
                # twice, and its second push began after that deletion had committed.
                seen = pushes.count()
                wait_until(
                    lambda: pushes.count() > seen + PUSHERS, 120, "pushes after the deletions"
                )
            finally:
                pushes.stop.set()
            rounds = [future.result() for future in running]
        assert 200 in statuses
        assert all(rounds)

        # Whatever is left is whole: every tag pulls with every blob, digest-verified.
        tags = v2.get(f"/v2/{repository}/tags/list", params={"n": 10000})
        remaining = tags.json()["tags"] if tags.status_code == 200 else []
        assert set(remaining) <= set(pushes.landed)
        for tag in remaining:
            pull_verified(v2, repository, tag)
        assert remaining  # what landed after the last deletion
        assert_fsck_clean(server)

        # And a deletion now leaves nothing behind; the name then takes a clean push.
        assert admin.delete(path).status_code == 200
        assert v2.get(f"/v2/{repository}/tags/list").status_code == 404
        push_until_it_lands(v2, repository, "after", Pushes())
        pull_verified(v2, repository, "after")
        assert v2.get(f"/v2/{repository}/tags/list").json()["tags"] == ["after"]
