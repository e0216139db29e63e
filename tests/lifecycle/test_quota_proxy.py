"""The size cap of a proxy-cache project against a real upstream (Debian's docker-registry):
never a refusal, but eviction of the least recently pulled cached artifacts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.api import api_client, create_project, eventually
from tests.support.auth import RegistryAuth
from tests.support.backends import query_database, server_database_url
from tests.support.distribution import Distribution
from tests.support.oci import OCI_INDEX, OCI_MANIFEST, Pushed, digest_of, push_image
from tests.support.server import RegistryProcess

pytestmark = pytest.mark.tools("docker-registry")

ACCEPT = {"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"}


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Distribution]:
    with Distribution(tmp_path_factory.mktemp("upstream")).start() as registry:
        yield registry


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    data = tmp_path_factory.mktemp("proxy-quota") / "data"
    env = {"MOORAGE_PULL_FLUSH_SECONDS": "0.1"}
    with RegistryProcess(data, workers=2, env=env).start() as process:
        yield process


def image_size(image: Pushed) -> int:
    document = json.loads(image.body)
    return int(document["config"]["size"]) + sum(int(x["size"]) for x in document["layers"])


def pull(client: httpx.Client, repository: str, tag: str) -> None:
    response = client.get(f"/v2/{repository}/manifests/{tag}", headers=ACCEPT)
    assert response.status_code == 200, response.text
    document = response.json()
    for descriptor in [document["config"], *document["layers"]]:
        blob = client.get(f"/v2/{repository}/blobs/{descriptor['digest']}")
        assert blob.status_code == 200, blob.text
        assert digest_of(blob.content) == descriptor["digest"]


def last_pull(server: RegistryProcess, repository: str) -> Any:
    rows = query_database(
        server_database_url(server.data_dir),
        "SELECT p.last_pulled_at FROM manifest_pulls p JOIN repositories r"
        " ON r.id = p.repository_id WHERE r.name = ?",
        repository,
    )
    return rows[0][0] if rows else None


def cached(server: RegistryProcess, repository: str) -> int:
    rows = query_database(
        server_database_url(server.data_dir),
        "SELECT COUNT(*) FROM repository_manifests m JOIN repositories r"
        " ON r.id = m.repository_id WHERE r.name = ?",
        repository,
    )
    return int(str(rows[0][0]))


def test_a_proxy_cache_over_its_cap_evicts_the_least_recently_pulled(
    upstream: Distribution, server: RegistryProcess
) -> None:
    with upstream.client() as client:
        images = {name: push_image(client, f"lib/{name}", "v1", layer_count=2) for name in "abc"}
    with api_client(server) as admin:
        project = create_project(admin, "cache")
        response = admin.put(
            f"/projects/{project}/proxy", json={"url": upstream.url, "allowPrivateNetwork": True}
        )
        assert response.status_code == 200, response.text
        sizes = {name: image_size(image) for name, image in images.items()}
        cap = sizes["a"] + sizes["b"] + sizes["c"] // 2
        response = admin.put(f"/projects/{project}/quota", json={"storageBytes": cap})
        assert response.status_code == 200, response.text
        with httpx.Client(base_url=server.url, timeout=60, auth=RegistryAuth()) as puller:
            pull(puller, f"{project}/lib/a", "v1")
            pull(puller, f"{project}/lib/b", "v1")
            for name in "ab":
                eventually(
                    lambda name=name: last_pull(server, f"{project}/lib/{name}") is not None,
                    what=f"{name}'s pull recorded",
                )
            first = last_pull(server, f"{project}/lib/a")
            pull(puller, f"{project}/lib/a", "v1")  # a is now the more recently pulled
            eventually(
                lambda: last_pull(server, f"{project}/lib/a") != first, what="a's second pull"
            )
            pull(puller, f"{project}/lib/c", "v1")  # over the cap: never refused
        eventually(lambda: cached(server, f"{project}/lib/b") == 0, what="b evicted")
        usage = admin.get(f"/projects/{project}/usage").json()
        assert usage["usage"] == {"storageBytes": sizes["a"] + sizes["c"], "artifacts": 2}
        assert cached(server, f"{project}/lib/a") == 1
        assert cached(server, f"{project}/lib/c") == 1
        eventually(
            lambda: (
                len(
                    admin.get(
                        "/audit-logs", params={"project": project, "action": "quota:evict"}
                    ).json()
                )
                == 1
            ),
            what="the eviction's audit entry",
        )
        entry = admin.get("/audit-logs", params={"project": project, "action": "quota:evict"})
        assert entry.json()[0]["details"] == {"manifests": 1, "freed": sizes["b"]}
        # An evicted artifact is fetched from the upstream again when pulled.
        with httpx.Client(base_url=server.url, timeout=60, auth=RegistryAuth()) as puller:
            pull(puller, f"{project}/lib/b", "v1")
