"""Two Moorage nodes behind haproxy on one PostgreSQL, one S3 endpoint and one Redis
(tests/support/cluster.py): what one node does, the other sees; an upload moves between nodes,
survives a node killed with SIGKILL, and background work runs once in the deployment."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from tests.support.api import PASSWORD, api_client, create_project, create_user, set_role
from tests.support.auth import RegistryAuth
from tests.support.cluster import Cluster
from tests.support.distribution import Distribution
from tests.support.oci import (
    OCI_INDEX,
    OCI_MANIFEST,
    Pushed,
    digest_of,
    encode,
    image_manifest,
    push_blob_object,
    push_image,
    push_manifest,
    random_bytes,
    start_upload,
    with_digest,
)
from tests.support.server import RegistryProcess
from tests.support.services import PostgresServer, RedisServer, S3Server
from tests.support.wait import wait_until

pytestmark = pytest.mark.tools("haproxy", "redis-server")

ACCEPT = {"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"}
LAYER = "application/vnd.oci.image.layer.v1.tar"
MiB = 1 << 20


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with ExitStack() as stack:
        postgres = stack.enter_context(PostgresServer())
        redis = stack.enter_context(RedisServer())
        s3 = stack.enter_context(S3Server())
        root = tmp_path_factory.mktemp("cluster")
        yield stack.enter_context(Cluster(root, postgres, redis, s3))


@pytest.fixture
def both(cluster: Cluster) -> Cluster:
    """The cluster with both nodes running (a test may have killed one)."""
    for node in cluster.nodes:
        if node.process is None:
            node.start()
    return cluster


def v2(target: RegistryProcess | Cluster, **auth: str | None) -> httpx.Client:
    credentials = RegistryAuth(**auth) if auth else RegistryAuth()  # type: ignore[arg-type]
    return httpx.Client(base_url=target.url, timeout=300, auth=credentials)


def path_of(location: str) -> str:
    """An upload's Location names the public address (haproxy): keep its path and query, to
    send the next step to a node of our choosing."""
    url = httpx.URL(location)
    return url.raw_path.decode()


def assert_pulls(node: RegistryProcess | Cluster, repository: str, image: Pushed) -> None:
    with v2(node) as client:
        response = client.get(f"/v2/{repository}/manifests/{image.digest}", headers=ACCEPT)
        assert response.status_code == 200, response.text
        assert response.content == image.body
        document = json.loads(image.body)
        for descriptor in [document["config"], *document["layers"]]:
            blob = client.get(f"/v2/{repository}/blobs/{descriptor['digest']}")
            assert blob.status_code == 200, blob.text
            assert digest_of(blob.content) == descriptor["digest"]


def finish_image(client: httpx.Client, repository: str, layer: str, size: int, tag: str) -> Pushed:
    config = push_blob_object(
        client, repository, "application/vnd.oci.image.config.v1+json", encode({"t": tag})
    )
    layer_descriptor = Pushed(LAYER, layer, b"\0" * size)
    return push_manifest(
        client, repository, encode(image_manifest(config, [layer_descriptor])), OCI_MANIFEST, tag
    )


def test_the_front_balances_over_both_nodes(both: Cluster) -> None:
    assert both.haproxy is not None
    with httpx.Client(base_url=both.url, timeout=30) as client:
        for _ in range(6):
            assert client.get("/readyz").status_code == 200
    with api_client(both.a) as admin:  # a node's own address works as well as the front
        assert admin.get("/users/me").status_code == 200


def test_push_on_a_pull_on_b(both: Cluster, repo: str) -> None:
    with v2(both.a) as client:
        image = push_image(client, repo, "v1", layer_count=2)
    assert_pulls(both.b, repo, image)
    with v2(both.b) as client:
        assert client.get(f"/v2/{repo}/tags/list").json()["tags"] == ["v1"]
    assert_pulls(both, repo, image)


def test_a_chunked_upload_started_on_a_is_finished_on_b(both: Cluster, repo: str) -> None:
    data = random_bytes(3 * MiB + 17)
    digest = digest_of(data)
    with v2(both.a) as on_a, v2(both.b) as on_b:
        location = path_of(start_upload(on_a, repo))
        nodes = [on_a, on_b, on_a, on_b]
        for number, start in enumerate(range(0, len(data), MiB)):
            chunk = data[start : start + MiB]
            response = nodes[number % len(nodes)].patch(
                location,
                content=chunk,
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{start}-{start + len(chunk) - 1}",
                },
            )
            assert response.status_code == 202, response.text
            location = path_of(response.headers["Location"])
        status = on_a.get(location)
        assert status.status_code == 204
        assert status.headers["Range"] == f"0-{len(data) - 1}"
        finished = on_b.put(with_digest(location, digest))
        assert finished.status_code == 201, finished.text
        image = finish_image(on_b, repo, digest, len(data), "chunked")
    with v2(both.a) as on_a:
        blob = on_a.get(f"/v2/{repo}/blobs/{digest}")
        assert blob.status_code == 200
        assert digest_of(blob.content) == digest
    assert_pulls(both, repo, Pushed(image.media_type, image.digest, image.body))


def test_an_upload_survives_its_node_killed_mid_request(both: Cluster, repo: str) -> None:
    """kill -9 of node A while it receives a chunk: B reports how much was kept, the client
    sends the rest to B and the blob is whole."""
    data = random_bytes(6 * MiB)
    digest = digest_of(data)
    first = 2 * MiB
    sent_some = threading.Event()
    release = threading.Event()

    def stalled_body() -> Iterator[bytes]:
        yield data[first : first + MiB]
        sent_some.set()
        release.wait(120)  # until A is dead; the connection then fails
        yield data[first + MiB :]

    with v2(both.a) as on_a, v2(both.b) as on_b:
        location = path_of(start_upload(on_a, repo))
        response = on_a.patch(
            location,
            content=data[:first],
            headers={"Content-Type": "application/octet-stream", "Content-Range": f"0-{first - 1}"},
        )
        assert response.status_code == 202, response.text
        location = path_of(response.headers["Location"])
        with ThreadPoolExecutor(1) as pool:
            interrupted = pool.submit(
                on_a.patch,
                location,
                content=stalled_body(),
                headers={"Content-Type": "application/octet-stream"},
            )
            assert sent_some.wait(60)
            both.a.kill()
            release.set()
            with pytest.raises(httpx.HTTPError):
                interrupted.result(timeout=120)
        # B says how many bytes the session holds; the client resumes from there.
        status = on_b.get(location)
        assert status.status_code == 204, status.text
        kept = int(status.headers["Range"].split("-")[1]) + 1
        assert first <= kept <= len(data)
        rest = data[kept:]
        response = on_b.patch(
            path_of(status.headers["Location"]),
            content=rest,
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{kept}-{len(data) - 1}",
            },
        )
        assert response.status_code == 202, response.text
        finished = on_b.put(with_digest(path_of(response.headers["Location"]), digest))
        assert finished.status_code == 201, finished.text
        blob = on_b.get(f"/v2/{repo}/blobs/{digest}")
        assert digest_of(blob.content) == digest
    both.a.start()
    with v2(both.a) as on_a:
        assert digest_of(on_a.get(f"/v2/{repo}/blobs/{digest}").content) == digest


def test_a_permission_revoked_on_a_is_refused_on_b(both: Cluster) -> None:
    with api_client(both.a) as admin:
        project = create_project(admin, "revoke")
        user = create_user(admin, "revoked")
        set_role(admin, project, user, "developer")
    repository = f"{project}/app"
    with v2(both.a) as client:
        image = push_image(client, repository, "v1")

    def pull_on_b() -> int:
        # A fresh token each time: the question is what the node decides now.
        with v2(both.b, username=user, password=PASSWORD) as client:
            return client.get(f"/v2/{repository}/manifests/{image.digest}").status_code

    wait_until(lambda: pull_on_b() == 200, 30, "the member to pull on B")
    with api_client(both.a) as admin:
        response = admin.delete(f"/projects/{project}/members/user/{user}")
        assert response.status_code == 204, response.text
    revoked = time.monotonic()
    # The promise is 2 s; the bound here is a hang bound for a busy machine, and the
    # time taken is reported (bench/ measures it).
    wait_until(lambda: pull_on_b() in (401, 403, 404), 30, "B to refuse the former member")
    print(f"revocation on A refused on B after {time.monotonic() - revoked:.2f} s")


@pytest.mark.tools("docker-registry")
def test_twenty_clients_pull_one_uncached_proxy_blob_through_both_nodes_once(
    both: Cluster, tmp_path: Path
) -> None:
    with Distribution(tmp_path / "upstream").start() as upstream:
        data = random_bytes(16 * MiB)
        with upstream.client() as client:
            layer = push_blob_object(client, "lib/one", LAYER, data)
            config = push_blob_object(
                client, "lib/one", "application/vnd.oci.image.config.v1+json", b"{}"
            )
            push_manifest(
                client, "lib/one", encode(image_manifest(config, [layer])), OCI_MANIFEST, "v1"
            )
        with api_client(both.a) as admin:
            project = create_project(admin, "cache")
            body = {"url": upstream.url, "allowPrivateNetwork": True}
            assert admin.put(f"/projects/{project}/proxy", json=body).status_code == 200
        path = f"/v2/{project}/lib/one/blobs/{layer.digest}"

        def pull(index: int) -> str:
            target = [both, both.a, both.b][index % 3]
            digest = hashlib.sha256()
            with v2(target) as client, client.stream("GET", path) as response:
                assert response.status_code == 200, response.read()
                for chunk in response.iter_bytes(MiB):
                    digest.update(chunk)
            return "sha256:" + digest.hexdigest()

        with ThreadPoolExecutor(20) as pool:
            results = list(pool.map(pull, range(20)))
        assert results == [layer.digest] * 20
        assert upstream.requests("GET", f"/v2/lib/one/blobs/{layer.digest}", status=None) == 1


def test_a_scan_job_runs_once_in_the_deployment(both: Cluster) -> None:
    with api_client(both.a) as admin:
        project = create_project(admin, "scanned")
        response = admin.put(f"/projects/{project}/scan-settings", json={"scanOnPush": True})
        assert response.status_code == 200, response.text
        repository = f"{project}/app"
        with v2(both) as client:
            image = push_image(client, repository, "v1")

        def report() -> dict[str, object] | None:
            response = admin.get(f"/repositories/{repository}/manifests/{image.digest}/scan")
            body = response.json() if response.status_code == 200 else None
            if body and body.get("status") in ("Success", "Error"):
                return dict(body)
            return None

        wait_until(report, 120, "the scan to complete")
    # Both nodes run background jobs; the leased queue gives the job to one of them.
    completed = f"scan:completed repository={repository} digest={image.digest}"
    assert both.node_logs().count(completed) == 1, both.node_logs()[-4000:]


@pytest.mark.tools("docker-registry")
def test_a_replication_job_runs_once_in_the_deployment(both: Cluster, tmp_path: Path) -> None:
    with Distribution(tmp_path / "target").start() as target, api_client(both.a) as admin:
        project = create_project(admin, "replicated")
        body = {
            "name": f"remote-{project}",
            "url": target.url,
            "allowPrivateNetwork": True,
            "kind": "distribution",
        }
        endpoint = admin.post("/replication/registries", json=body)
        assert endpoint.status_code == 201, endpoint.text
        rule = admin.post(
            "/replication/rules",
            json={
                "name": f"rule-{project}",
                "endpointId": endpoint.json()["id"],
                "direction": "push",
                "trigger": "event",
                "repositories": [f"{project}/**"],
            },
        )
        assert rule.status_code == 201, rule.text
        with v2(both) as client:
            image = push_image(client, f"{project}/app", "v1")

        def succeeded() -> list[dict[str, object]] | None:
            runs = admin.get(f"/replication/rules/{rule.json()['id']}/executions").json()
            return runs if runs and all(r["status"] == "succeeded" for r in runs) else None

        runs = wait_until(succeeded, 120, "the replication to succeed")
        assert len(runs) == 1
        manifest_path = f"/v2/{project}/app/manifests/v1"
        assert target.requests("PUT", manifest_path, status=None) == 1
        with target.client() as remote:
            response = remote.get(f"/v2/{project}/app/manifests/{image.digest}", headers=ACCEPT)
            assert response.content == image.body


def test_pulls_through_the_front_go_on_while_a_node_is_killed(both: Cluster, repo: str) -> None:
    with v2(both) as client:
        image = push_image(client, repo, "v1")
    both.b.kill()
    # No wait for the health check: refused connections are retried on the other node.
    for _ in range(10):
        assert_pulls(both, repo, image)
    with httpx.Client(base_url=both.url, timeout=30) as client:
        wait_until(lambda: client.get("/readyz").status_code == 200, 30, "the front to answer")
    both.b.start()
