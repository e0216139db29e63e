"""Readiness covers every shared part a request needs, with real servers stopped under a
running node: the load balancer's probe turns 503 naming the part, and 200 again once the part
is back. Liveness stays trivial: the process answers, whatever its parts do."""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import Callable, Iterator

import httpx
import psutil
import pytest

from tests.support.auth import RegistryAuth
from tests.support.processes import spawn
from tests.support.server import RegistryProcess
from tests.support.services import PostgresServer, RedisServer, S3Server, postgres_bin
from tests.support.wait import wait_until


@contextlib.contextmanager
def frozen(process: subprocess.Popen[bytes] | None) -> Iterator[None]:
    """SIGSTOP a server and every process it started (PostgreSQL's backends leave its process
    group): it keeps its sockets but answers nothing, the hardest failure for a probe (a
    refused connection fails fast; this one must time out)."""
    assert process is not None
    parent = psutil.Process(process.pid)
    members = [parent, *parent.children(recursive=True)]
    for member in members:
        member.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        for member in members:
            with contextlib.suppress(psutil.Error):
                member.send_signal(signal.SIGCONT)


def readiness(node: RegistryProcess) -> httpx.Response:
    return httpx.get(f"{node.url}/readyz", timeout=30)


def becomes(node: RegistryProcess, status: int) -> Callable[[], httpx.Response | None]:
    def check() -> httpx.Response | None:
        response = readiness(node)
        return response if response.status_code == status else None

    return check


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


def test_an_embedded_node_is_ready_and_says_what_it_checked(
    start_registry: Callable[..., RegistryProcess],
) -> None:
    node = start_registry()
    response = readiness(node)
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert response.json() == {"status": "ready", "checks": {"database": "ok", "storage": "ok"}}
    assert httpx.get(f"{node.url}/healthz").json() == {"status": "ok"}


def test_probes_need_no_credentials_and_refuse_other_methods(
    start_registry: Callable[..., RegistryProcess],
) -> None:
    node = start_registry()
    assert (
        httpx.get(f"{node.url}/readyz", headers={"Authorization": "Bearer junk"}).status_code == 200
    )
    assert httpx.post(f"{node.url}/readyz").status_code == 405


def test_a_frozen_postgresql_makes_the_node_unready_until_it_answers_again(
    postgres: PostgresServer, start_registry: Callable[..., RegistryProcess]
) -> None:
    url = postgres.create_database("readiness_frozen")
    node = start_registry(env={"MOORAGE_DATABASE_URL": url})
    assert readiness(node).json()["checks"]["database"] == "ok"
    with frozen(postgres.process):
        response = wait_until(becomes(node, 503), 60, "the node to become unready")
        body = response.json()
        assert body["status"] == "unavailable"
        assert body["checks"]["database"] == "timeout"
        assert body["checks"]["storage"] == "ok"
        assert postgres.password not in response.text
        # Probes keep answering while the database hangs, and the hung part holds up no other.
        for _ in range(3):
            again = readiness(node).json()["checks"]
            assert (again["database"], again["storage"]) == ("timeout", "ok")
        # Liveness does not depend on the parts: the process itself is fine.
        assert httpx.get(f"{node.url}/healthz", timeout=30).status_code == 200
    wait_until(becomes(node, 200), 60, "the node to become ready again")


@pytest.mark.tools("redis-server")
def test_a_stopped_redis_makes_the_node_unready_until_it_is_back(
    start_registry: Callable[..., RegistryProcess],
) -> None:
    redis = RedisServer().start()
    try:
        node = start_registry(env={"MOORAGE_REDIS_URL": redis.url})
        assert readiness(node).json()["checks"] == {
            "database": "ok",
            "storage": "ok",
            "redis": "ok",
        }
        redis.stop()
        response = wait_until(becomes(node, 503), 60, "the node to become unready")
        assert response.json()["checks"]["redis"] != "ok"
        assert response.json()["checks"]["database"] == "ok"
        assert httpx.get(f"{node.url}/healthz", timeout=30).status_code == 200
        redis = RedisServer(port=redis.port).start()
        wait_until(becomes(node, 200), 60, "the node to become ready again")
    finally:
        redis.stop()


@pytest.mark.tools("redis-server")
def test_a_frozen_redis_times_out(start_registry: Callable[..., RegistryProcess]) -> None:
    with RedisServer() as redis:
        node = start_registry(env={"MOORAGE_REDIS_URL": redis.url})
        wait_until(becomes(node, 200), 60, "the node to be ready")
        with frozen(redis.process):
            response = wait_until(becomes(node, 503), 60, "the node to become unready")
            assert response.json()["checks"]["redis"] in ("failed", "timeout")
        wait_until(becomes(node, 200), 60, "the node to become ready again")


def test_a_frozen_s3_endpoint_makes_the_node_unready_until_it_answers_again(
    start_registry: Callable[..., RegistryProcess],
) -> None:
    with S3Server() as s3:
        node = start_registry(
            env={
                "MOORAGE_STORAGE": "s3",
                "MOORAGE_S3_BUCKET": s3.create_bucket("readiness"),
                "MOORAGE_S3_ENDPOINT": s3.endpoint,
                "MOORAGE_S3_REGION": s3.region,
                "MOORAGE_S3_ACCESS_KEY": s3.access_key,
                "MOORAGE_S3_SECRET_KEY": s3.secret_key,
            }
        )
        assert readiness(node).json()["checks"]["storage"] == "ok"
        with frozen(s3.process):
            response = wait_until(becomes(node, 503), 60, "the node to become unready")
            body = response.json()
            assert body["checks"]["storage"] in ("timeout",) or body["checks"][
                "storage"
            ].startswith("failed")
            assert body["checks"]["database"] == "ok"
            assert s3.secret_key not in response.text
        wait_until(becomes(node, 200), 60, "the node to become ready again")


def test_a_deleted_bucket_makes_the_node_unready(
    start_registry: Callable[..., RegistryProcess],
) -> None:
    """A HEAD of the sentinel answers 404 both for a missing object and a missing bucket:
    the bucket's absence must not pass as "the sentinel is not stored"."""
    import boto3

    with S3Server() as s3:
        bucket = s3.create_bucket("vanishing")
        node = start_registry(
            env={
                "MOORAGE_STORAGE": "s3",
                "MOORAGE_S3_BUCKET": bucket,
                "MOORAGE_S3_ENDPOINT": s3.endpoint,
                "MOORAGE_S3_REGION": s3.region,
                "MOORAGE_S3_ACCESS_KEY": s3.access_key,
                "MOORAGE_S3_SECRET_KEY": s3.secret_key,
            }
        )
        assert readiness(node).status_code == 200
        client = boto3.client(
            "s3",
            endpoint_url=s3.endpoint,
            region_name=s3.region,
            aws_access_key_id=s3.access_key,
            aws_secret_access_key=s3.secret_key,
        )
        client.delete_bucket(Bucket=bucket)
        response = wait_until(becomes(node, 503), 60, "the node to become unready")
        assert response.json()["checks"]["storage"].startswith("failed")


def _stop_postgres(postgres: PostgresServer) -> None:
    """A fast shutdown (SIGINT to the postmaster: clients are disconnected), keeping the data."""
    assert postgres.process is not None
    runner = psutil.Process(postgres.process.pid)
    postmaster = next((child for child in runner.children() if "postgres" in child.name()), runner)
    postmaster.send_signal(signal.SIGINT)
    postgres.process.wait(60)
    postgres.process = None


def _start_postgres_again(postgres: PostgresServer) -> None:
    """The same cluster on the same port, as after a restart of the database server."""
    postgres.process = spawn(
        postgres._as_owner(
            [
                str(postgres_bin() / "postgres"),
                *("-D", str(postgres.directory / "data"), "-p", str(postgres.port)),
                *("-k", str(postgres.directory), "-c", "listen_addresses=127.0.0.1"),
                *("-c", "fsync=off", "-c", "max_connections=300"),
            ]
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_until(postgres._ready, 60, "PostgreSQL to accept connections again")


def test_a_stopped_postgresql_makes_the_node_unready_until_it_is_restarted(
    start_registry: Callable[..., RegistryProcess],
) -> None:
    with PostgresServer() as postgres:
        node = start_registry(env={"MOORAGE_DATABASE_URL": postgres.create_database("restarted")})
        wait_until(becomes(node, 200), 60, "the node to be ready")
        _stop_postgres(postgres)
        response = wait_until(becomes(node, 503), 60, "the node to become unready")
        assert response.json()["checks"]["database"].startswith("failed")
        assert postgres.password not in response.text
        assert httpx.get(f"{node.url}/healthz", timeout=30).status_code == 200
        _start_postgres_again(postgres)
        wait_until(becomes(node, 200), 60, "the node to become ready again")
        # And it serves again: pooled connections to the old server were replaced.
        with httpx.Client(base_url=node.url, timeout=60, auth=RegistryAuth()) as client:
            assert client.get("/v2/_catalog").status_code == 200
