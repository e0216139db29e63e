"""Replication with two nodes of one deployment, both running the replication engine: a push on
either node is replicated once (one execution, one task, one manifest PUT at the remote), never
once per node. The remote is Debian's docker-registry; its access log counts the PUTs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.api import api_client, create_project, eventually, unique
from tests.support.auth import RegistryAuth
from tests.support.distribution import Distribution
from tests.support.nodes import BACKENDS, Nodes, metadata_url
from tests.support.oci import OCI_INDEX, OCI_MANIFEST, Pushed, push_image
from tests.support.server import RegistryProcess
from tests.support.services import PostgresServer, RedisServer

pytestmark = pytest.mark.tools("docker-registry", "redis-server")

IMAGES_PER_NODE = 3
ACCEPT = {"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"}


@pytest.fixture(params=BACKENDS)
def nodes(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[RegistryProcess]]:
    with contextlib.ExitStack() as stack:
        postgres = None
        if request.param == "postgresql":
            postgres = stack.enter_context(PostgresServer())
        redis = stack.enter_context(RedisServer())
        database = metadata_url(request.param, postgres)
        yield stack.enter_context(Nodes(tmp_path, redis.url, database))


def executions(admin: httpx.Client, rule: int) -> list[dict[str, Any]]:
    response = admin.get(f"/replication/rules/{rule}/executions")
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()
    return found


def test_pushes_on_both_nodes_are_replicated_once_each(
    upstream: Distribution, nodes: list[RegistryProcess]
) -> None:
    target = upstream  # the module's Distribution, here as the replication target
    with api_client(nodes[0]) as admin:
        project = create_project(admin, "replicated")
        endpoint = admin.post(
            "/replication/registries",
            json={
                "name": unique("remote"),
                "url": target.url,
                "allowPrivateNetwork": True,
                "kind": "distribution",
            },
        )
        assert endpoint.status_code == 201, endpoint.text
        rule = admin.post(
            "/replication/rules",
            json={
                "name": unique("rule"),
                "endpointId": endpoint.json()["id"],
                "direction": "push",
                "trigger": "event",
                "repositories": [f"{project}/**"],
            },
        )
        assert rule.status_code == 201, rule.text
        rule_id = int(rule.json()["id"])

    def push(index: int) -> tuple[str, Pushed]:
        node = nodes[index % 2]
        repository = f"{project}/app{index}"
        with httpx.Client(base_url=node.url, timeout=60, auth=RegistryAuth()) as client:
            return repository, push_image(client, repository, "v1")

    with ThreadPoolExecutor(4) as pool:
        pushed = list(pool.map(push, range(2 * IMAGES_PER_NODE)))

    with api_client(nodes[1]) as admin:

        def all_finished() -> bool:
            found = executions(admin, rule_id)
            return len(found) >= len(pushed) and all(
                run["status"] in ("succeeded", "failed", "partial") for run in found
            )

        eventually(all_finished, timeout=120, what="every execution to finish")
        runs = executions(admin, rule_id)
    assert len(runs) == len(pushed)
    assert {run["status"] for run in runs} == {"succeeded"}
    assert all((run["total"], run["succeeded"]) == (1, 1) for run in runs)
    for repository, image in pushed:
        assert target.requests("PUT", f"/v2/{repository}/manifests/v1", status=201) == 1
        with target.client() as remote:
            response = remote.head(f"/v2/{repository}/manifests/v1", headers=ACCEPT)
            assert response.status_code == 200, response.text
            assert response.headers["Docker-Content-Digest"] == image.digest
