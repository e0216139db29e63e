"""Many clients doing the same thing at the same moment: every request succeeds, state is sane.

Each scenario runs against a one-worker and a two-worker server, so both threads in one process
and separate processes race on the same rows and files.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import httpx
import pytest

from tests.support.auth import RegistryAuth
from tests.support.images import (
    Blob,
    bearer,
    fetch_blob,
    fetch_manifest,
    push_blob,
    push_blob_chunked,
    push_token,
    registry_token,
    tiny_image,
)
from tests.support.server import RegistryProcess, stored_keys

CLIENTS = 20
T = TypeVar("T")


@pytest.fixture(scope="module", params=[1, 2], ids=["1-worker", "2-workers"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RegistryProcess]:
    process = RegistryProcess(
        tmp_path_factory.mktemp("concurrency") / "data", workers=request.param
    )
    process.start()
    try:
        yield process
    finally:
        code = process.stop()
    assert code == 0


def all_at_once(
    action: Callable[[httpx.Client], T], server: RegistryProcess, repository: str
) -> list[T]:
    """Run `action` on CLIENTS threads, each with its own connection, released together.

    The token is fetched first, so no client spends the race asking the token service.
    """
    barrier = threading.Barrier(CLIENTS)
    headers = bearer(push_token(server.url, repository))

    def one_client(_: int) -> T:
        with httpx.Client(base_url=server.url, timeout=120, headers=headers) as client:
            # Connect before the barrier so the requests really overlap.
            assert client.get("/v2/").status_code == 200
            barrier.wait(timeout=60)
            return action(client)

    with ThreadPoolExecutor(CLIENTS) as pool:
        return list(pool.map(one_client, range(CLIENTS)))


def upload_files(server: RegistryProcess) -> set[str]:
    return {name.partition("/")[0] for name in stored_keys(server.data_dir, "uploads")}


def blob_files(server: RegistryProcess, blob: Blob) -> list[str]:
    hex_part = blob.digest.removeprefix("sha256:")
    return [name for name in stored_keys(server.data_dir, "blobs") if hex_part in name]


def assert_single_intact_blob(
    server: RegistryProcess, repository: str, blob: Blob, uploads_before: set[str]
) -> None:
    with httpx.Client(base_url=server.url, timeout=60, auth=RegistryAuth()) as client:
        assert fetch_blob(client, repository, blob.digest) == blob.data
        head = client.head(f"/v2/{repository}/blobs/{blob.digest}")
        assert int(head.headers["Content-Length"]) == blob.size
    assert len(blob_files(server, blob)) == 1
    # Every racing upload was committed or cleaned up: no session file is left behind.
    assert upload_files(server) == uploads_before


def test_same_blob_pushed_monolithically_by_many_clients(server: RegistryProcess) -> None:
    repository = f"race/mono-{server.workers}"
    blob = Blob("application/octet-stream", os.urandom(2 * 1024 * 1024 + 5))
    before = upload_files(server)

    all_at_once(lambda client: push_blob(client, repository, blob), server, repository)

    assert_single_intact_blob(server, repository, blob, before)


def test_same_blob_pushed_in_chunks_by_many_clients(server: RegistryProcess) -> None:
    repository = f"race/chunked-{server.workers}"
    blob = Blob("application/octet-stream", os.urandom(1024 * 1024 + 77))
    before = upload_files(server)

    all_at_once(
        lambda client: push_blob_chunked(client, repository, blob, pieces=4), server, repository
    )

    assert_single_intact_blob(server, repository, blob, before)


def test_different_manifests_to_one_tag(server: RegistryProcess) -> None:
    repository = f"race/tag-{server.workers}"
    images = [tiny_image(f"{repository}-{number}") for number in range(CLIENTS)]
    with httpx.Client(base_url=server.url, timeout=60, auth=RegistryAuth()) as client:
        for image in images:
            for blob in image.blobs:
                push_blob(client, repository, blob)
    pending = iter(images)
    lock = threading.Lock()

    def push_next(client: httpx.Client) -> int:
        with lock:
            image = next(pending)
        response = client.put(
            f"/v2/{repository}/manifests/latest",
            content=image.manifest.data,
            headers={"Content-Type": image.manifest.media_type},
        )
        return response.status_code

    assert all_at_once(push_next, server, repository) == [201] * CLIENTS

    by_digest = {image.manifest.digest: image for image in images}
    with httpx.Client(base_url=server.url, timeout=60, auth=RegistryAuth()) as client:
        response = fetch_manifest(client, repository, "latest")
        winner = by_digest[response.headers["Docker-Content-Digest"]]
        assert response.content == winner.manifest.data
        for blob in winner.blobs:
            assert fetch_blob(client, repository, blob.digest) == blob.data
        tags = client.get(f"/v2/{repository}/tags/list").json()["tags"]
        assert tags == ["latest"]
        for image in images:  # every manifest was stored, tagged or not
            assert fetch_manifest(client, repository, image.manifest.digest).content == (
                image.manifest.data
            )


def test_same_manifest_pushed_by_many_clients(server: RegistryProcess) -> None:
    repository = f"race/same-{server.workers}"
    image = tiny_image(repository)
    with httpx.Client(base_url=server.url, timeout=60, auth=RegistryAuth()) as client:
        for blob in image.blobs:
            push_blob(client, repository, blob)

    def push(client: httpx.Client) -> tuple[int, str]:
        response = client.put(
            f"/v2/{repository}/manifests/stable",
            content=image.manifest.data,
            headers={"Content-Type": image.manifest.media_type},
        )
        return response.status_code, response.headers.get("Docker-Content-Digest", "")

    assert all_at_once(push, server, repository) == [(201, image.manifest.digest)] * CLIENTS

    with httpx.Client(base_url=server.url, timeout=60, auth=RegistryAuth()) as client:
        for reference in ("stable", image.manifest.digest):
            response = fetch_manifest(client, repository, reference)
            assert response.headers["Docker-Content-Digest"] == image.manifest.digest
            assert response.content == image.manifest.data
        assert client.get(f"/v2/{repository}/tags/list").json()["tags"] == ["stable"]
        # An anonymous catalog is answered (filtered to public projects) without a challenge,
        # so the administrator's token is sent up front.
        catalog_token = registry_token(server.url, "registry:catalog:*")
        response = client.get("/v2/_catalog", headers=bearer(catalog_token))
        assert response.status_code == 200, response.text
        catalog = response.json()["repositories"]
        assert catalog.count(repository) == 1
