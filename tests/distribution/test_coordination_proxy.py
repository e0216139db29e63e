"""Single flight of proxy-cache fetches across two nodes sharing one database (SQLite or
PostgreSQL), one blob store and one Redis (each node with its own lock files, so only Redis can
order them), against a real upstream (Debian's docker-registry). The upstream's access log
counts the fetches."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.support.api import api_client, create_project, unique
from tests.support.auth import RegistryAuth
from tests.support.distribution import Distribution
from tests.support.nodes import BACKENDS, Nodes, metadata_url
from tests.support.oci import (
    OCI_INDEX,
    OCI_MANIFEST,
    Pushed,
    encode,
    image_manifest,
    push_blob_object,
    push_manifest,
    random_bytes,
)
from tests.support.server import RegistryProcess
from tests.support.services import PostgresServer, RedisServer

pytestmark = pytest.mark.tools("docker-registry", "redis-server")

ACCEPT = {"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"}
LAYER = "application/vnd.oci.image.layer.v1.tar"


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


@pytest.fixture(params=BACKENDS)
def nodes(
    request: pytest.FixtureRequest, tmp_path: Path, redis_server: RedisServer
) -> Iterator[list[RegistryProcess]]:
    database = None
    if request.param == "postgresql":
        database = metadata_url("postgresql", request.getfixturevalue("postgres"))
    # Two workers each: single flight inside a node, across its workers and across nodes.
    with Nodes(tmp_path, redis_server.url, database, workers=2) as started:
        yield started


def make_proxy(node: RegistryProcess, upstream: Distribution) -> str:
    with api_client(node) as admin:
        project = create_project(admin, "cache")
        body = {"url": upstream.url, "allowPrivateNetwork": True}
        response = admin.put(f"/projects/{project}/proxy", json=body)
        assert response.status_code == 200, response.text
    return project


def upstream_image(upstream: Distribution, repository: str, size: int) -> tuple[Pushed, str]:
    """An image with one layer of `size` random bytes; (the layer, its sha256 hex)."""
    data = random_bytes(size)
    with upstream.client() as client:
        layer = push_blob_object(client, repository, LAYER, data)
        config = push_blob_object(
            client, repository, "application/vnd.oci.image.config.v1+json", encode({"a": 1})
        )
        push_manifest(
            client, repository, encode(image_manifest(config, [layer])), OCI_MANIFEST, "v1"
        )
    return layer, hashlib.sha256(data).hexdigest()


def pull_blob(node: RegistryProcess, path: str) -> str:
    digest = hashlib.sha256()
    with (
        httpx.Client(base_url=node.url, timeout=300, auth=RegistryAuth()) as client,
        client.stream("GET", path) as response,
    ):
        assert response.status_code == 200, response.read()
        for chunk in response.iter_bytes(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def test_twenty_clients_through_two_nodes_fetch_a_manifest_and_a_blob_once(
    upstream: Distribution, nodes: list[RegistryProcess]
) -> None:
    project = make_proxy(nodes[0], upstream)
    # The upstream serves every test of the module: a name of this test's own.
    name = unique("lib/shared")
    layer, expected = upstream_image(upstream, name, 32 * 1024 * 1024)

    def pull_manifest(index: int) -> str:
        node = nodes[index % 2]
        with httpx.Client(base_url=node.url, timeout=300, auth=RegistryAuth()) as client:
            response = client.get(f"/v2/{project}/{name}/manifests/v1", headers=ACCEPT)
            assert response.status_code == 200, response.text
            return response.headers["Docker-Content-Digest"]

    with ThreadPoolExecutor(20) as pool:
        manifests = set(pool.map(pull_manifest, range(20)))
    assert len(manifests) == 1
    assert upstream.requests("GET", f"/v2/{name}/manifests/v1") == 1

    path = f"/v2/{project}/{name}/blobs/{layer.digest}"
    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(lambda index: pull_blob(nodes[index % 2], path), range(20)))
    assert results == [expected] * 20
    assert upstream.requests("GET", f"/v2/{name}/blobs/{layer.digest}") == 1


def test_a_node_killed_while_it_fetches_hands_the_fetch_to_the_other(
    upstream: Distribution, nodes: list[RegistryProcess]
) -> None:
    project = make_proxy(nodes[0], upstream)
    # Far larger than the socket buffers: a client that stops reading stalls the fetch.
    name = unique("lib/killed")
    layer, expected = upstream_image(upstream, name, 64 * 1024 * 1024)
    path = f"/v2/{project}/{name}/blobs/{layer.digest}"
    for node in nodes:
        with httpx.Client(base_url=node.url, timeout=300, auth=RegistryAuth()) as client:
            assert client.get(f"/v2/{project}/{name}/manifests/v1").status_code == 200

    leader, other = nodes
    with (
        httpx.Client(base_url=leader.url, timeout=300, auth=RegistryAuth()) as client,
        client.stream("GET", path) as stalled,
        ThreadPoolExecutor(1) as pool,
    ):
        assert stalled.status_code == 200
        next(stalled.iter_bytes(1 << 20))  # the leader holds the lock and is fetching
        waiting = pool.submit(pull_blob, other, path)
        leader.kill()  # kill -9: no release; its lease runs out
        # The waiter takes over once the lease expires and fetches a complete, verified copy.
        assert waiting.result(timeout=300) == expected
    assert upstream.requests("GET", f"/v2/{name}/blobs/{layer.digest}", status=None) == 2
    leader.start()
    assert pull_blob(leader, path) == expected
    assert upstream.requests("GET", f"/v2/{name}/blobs/{layer.digest}", status=None) == 2
