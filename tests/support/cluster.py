"""A two-node Moorage deployment on this machine, as it runs on two: one PostgreSQL, one S3
endpoint (moto), one Redis, two nodes with data directories of their own, and haproxy in front
(round robin per request, health checks on /readyz), every one a real process on a free
loopback port. `Cluster.url` is haproxy's address, which is also every node's public_url.

Before the S3 driver is part of the build, the nodes share one blob directory instead (a
symlink in each data directory), which the cluster reports as `storage == "shared-directory"`.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support.processes import spawn, terminate
from tests.support.server import RegistryProcess, free_port
from tests.support.services import PostgresServer, RedisServer, S3Server
from tests.support.tools import require_tool
from tests.support.wait import wait_until

# MOORAGE_TEST_CLUSTER=1: the `registry` fixture of the conformance-level tests is a cluster.
CLUSTER_VARIABLE = "MOORAGE_TEST_CLUSTER"
_serial = itertools.count()


def cluster_requested() -> bool:
    return os.environ.get(CLUSTER_VARIABLE, "") not in ("", "0")


def s3_driver_available() -> bool:
    from moorage.config import Settings

    return "s3_bucket" in Settings.model_fields


HAPROXY_CONFIG = """\
global
    maxconn 2000

defaults
    mode http
    option forwardfor
    option http-server-close
    # A connection refused by a dead node is retried on the other one at once (only failed
    # connections: a request a node may have received is never sent twice).
    retries 2
    option redispatch 1
    retry-on conn-failure
    timeout connect 5s
    # Blob uploads and pulls of large layers: long, but not endless.
    timeout client 15m
    timeout server 15m
    timeout http-request 60s
    timeout queue 60s
    # A readiness answer may take a while on a busy machine: a slow node is not a dead one
    # (a killed node refuses the connection at once, and is marked down after `fall` checks).
    timeout check 3s

frontend registry
    bind 127.0.0.1:{port}
    default_backend moorage

backend moorage
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 500ms fall 3 rise 1
{servers}
"""


@dataclass
class Haproxy:
    directory: Path
    backends: list[tuple[str, int]]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Haproxy:
        require_tool("haproxy")
        servers = "\n".join(
            f"    server {name} 127.0.0.1:{port} check" for name, port in self.backends
        )
        config = self.directory / "haproxy.cfg"
        config.write_text(HAPROXY_CONFIG.format(port=self.port, servers=servers))
        log = open(self.directory / "haproxy.log", "ab")  # noqa: SIM115 - handed to the child
        # -db: stay in the foreground, so the process group is haproxy's own.
        self.process = spawn(
            ["haproxy", "-db", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        wait_until(self._answers, 60, lambda: f"haproxy to forward:\n{self.logs()}")
        return self

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"haproxy exited with {self.process.returncode}:\n{self.logs()}")
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def logs(self) -> str:
        path = self.directory / "haproxy.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.process is not None:
            terminate(self.process)
            self.process = None


@dataclass
class Cluster:
    """Two nodes behind haproxy on shared PostgreSQL, S3 and Redis (the services are passed in,
    so one of each can serve several clusters)."""

    root: Path
    postgres: PostgresServer
    redis: RedisServer
    s3: S3Server | None = None
    workers: int = 1
    extra_env: dict[str, str] = field(default_factory=dict)
    nodes: list[RegistryProcess] = field(default_factory=list)
    haproxy: Haproxy | None = None
    env: dict[str, str] = field(default_factory=dict)
    _stack: ExitStack = field(default_factory=ExitStack)

    @property
    def storage(self) -> str:
        return "s3" if self.s3 is not None and s3_driver_available() else "shared-directory"

    @property
    def url(self) -> str:
        assert self.haproxy is not None
        return self.haproxy.url

    @property
    def host(self) -> str:
        assert self.haproxy is not None
        return f"127.0.0.1:{self.haproxy.port}"

    @property
    def port(self) -> int:
        assert self.haproxy is not None
        return self.haproxy.port

    @property
    def data_dir(self) -> Path:
        return self.root

    def start(self) -> Cluster:
        self.root.mkdir(parents=True, exist_ok=True)
        name = f"cluster_{os.getpid()}_{next(_serial)}"
        front_port = free_port()
        self.env = {
            "MOORAGE_DATABASE_URL": self.postgres.create_database(name),
            "MOORAGE_REDIS_URL": self.redis.url,
            "MOORAGE_PUBLIC_URL": f"http://127.0.0.1:{front_port}",
            # haproxy appends the client to X-Forwarded-For (option forwardfor).
            "MOORAGE_TRUSTED_PROXIES": "127.0.0.1",
            **self.extra_env,
        }
        if self.storage == "s3":
            assert self.s3 is not None
            self.env.update(
                {
                    "MOORAGE_STORAGE": "s3",
                    "MOORAGE_S3_BUCKET": self.s3.create_bucket(name.replace("_", "-")),
                    "MOORAGE_S3_ENDPOINT": self.s3.endpoint,
                    "MOORAGE_S3_REGION": self.s3.region,
                    "MOORAGE_S3_ACCESS_KEY": self.s3.access_key,
                    "MOORAGE_S3_SECRET_KEY": self.s3.secret_key,
                }
            )
        try:
            for index in range(2):
                data = self.root / f"node{'ab'[index]}" / "data"
                data.mkdir(parents=True)
                if self.storage == "shared-directory":
                    shared = self.root / "shared-storage"
                    shared.mkdir(exist_ok=True)
                    (data / "storage").symlink_to(shared, target_is_directory=True)
                # One after the other: the first migrates the database and creates the admin.
                node = RegistryProcess(data, workers=self.workers, env=dict(self.env))
                self.nodes.append(node.start())
                self._stack.callback(node.kill)
            self.haproxy = Haproxy(
                self.root, [("a", self.nodes[0].port), ("b", self.nodes[1].port)], port=front_port
            ).start()
            self._stack.callback(self.haproxy.stop)
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def a(self) -> RegistryProcess:
        return self.nodes[0]

    @property
    def b(self) -> RegistryProcess:
        return self.nodes[1]

    def node_logs(self) -> str:
        return "\n".join(f"--- node {i}\n{node.logs()}" for i, node in enumerate(self.nodes))

    def stop(self) -> None:
        self._stack.close()

    def __enter__(self) -> Cluster:
        return self if self.haproxy is not None else self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
        shutil.rmtree(self.root / "shared-storage", ignore_errors=True)


@contextmanager
def deployment(root: Path) -> Iterator[Cluster]:
    """A cluster with services of its own (PostgreSQL, Redis, S3), for a whole test session."""
    with (
        PostgresServer() as postgres,
        RedisServer() as redis,
        S3Server() as s3,
        Cluster(root, postgres, redis, s3) as cluster,
    ):
        yield cluster
