"""Start the real `moorage serve` process on a free loopback port and talk HTTP to it."""

from __future__ import annotations

import atexit
import hashlib
import os
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from tests.support.auth import ADMIN_PASSWORD
from tests.support.processes import kill_group, spawn, terminate
from tests.support.wait import wait_until

if TYPE_CHECKING:
    from tests.support.services import PostgresServer

# MOORAGE_TEST_DATABASE=postgresql: every RegistryProcess keeps its metadata in a database of
# its own on one PostgreSQL started once per test process; unset (or sqlite): the default.
TEST_DATABASE = os.environ.get("MOORAGE_TEST_DATABASE", "sqlite")
_postgres: PostgresServer | None = None
_databases: dict[Path, str] = {}


def session_postgres() -> PostgresServer:
    """The PostgreSQL of this test process, started on first use and stopped at exit."""
    global _postgres
    if _postgres is None:
        from tests.support.services import PostgresServer

        _postgres = PostgresServer().start()
        atexit.register(_postgres.stop)
    return _postgres


def database_url_for(data_dir: Path) -> str | None:
    """The database URL a server on `data_dir` uses under the test backend (None: SQLite)."""
    if TEST_DATABASE != "postgresql":
        return None
    key = data_dir.resolve()
    if key not in _databases:
        name = "t_" + hashlib.sha256(str(key).encode()).hexdigest()[:20]
        _databases[key] = session_postgres().create_database(name)
    return _databases[key]


def command_environment(data_dir: Path) -> dict[str, str]:
    """The environment for a `moorage` command on `data_dir` (fsck, migrate, the CLI): no
    MOORAGE_ settings of the caller's, and the test backend's database and bucket when they
    are not the defaults."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MOORAGE_")}
    database_url = database_url_for(data_dir)
    if database_url is not None:
        environment["MOORAGE_DATABASE_URL"] = database_url
    environment.update(storage_environment_for(data_dir))
    return environment


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RegistryProcess:
    """One Moorage server process; restartable on the same port and data directory."""

    data_dir: Path
    workers: int = 1
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    scheme: str = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        """host:port, the way registry clients (skopeo, podman) name a registry."""
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> RegistryProcess:
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}-{self.port}.log"
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
        command = [
            sys.executable,
            "-m",
            "moorage",
            "serve",
            "--listen",
            self.host,
            "--data-dir",
            str(self.data_dir),
            "--workers",
            str(self.workers),
            *self.extra_args,
        ]
        environment = {k: v for k, v in os.environ.items() if not k.startswith("MOORAGE_")}
        environment["MOORAGE_ADMIN_PASSWORD"] = ADMIN_PASSWORD
        database_url = database_url_for(self.data_dir)
        if database_url is not None and not any("database" in a for a in self.extra_args):
            environment["MOORAGE_DATABASE_URL"] = database_url
        environment.update(storage_environment_for(self.data_dir))
        environment.update(self.env)
        self.process = spawn(command, stdout=log, stderr=subprocess.STDOUT, env=environment)
        log.close()
        try:
            wait_until(self._started, timeout, lambda: f"moorage to start:\n{self.logs()}")
        except BaseException:
            self.kill()
            raise
        return self

    def _started(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"moorage exited with {self.process.returncode}:\n{self.logs()}")
        try:
            return self._ready()
        except (httpx.HTTPError, OSError):
            return False

    def _ready(self) -> bool:
        if self.scheme == "https":
            # Client certificates may be required: a completed TLS handshake is not needed,
            # the port accepting connections is enough.
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        return httpx.get(f"{self.url}/v2/", timeout=1).status_code in (200, 401)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def stop(self, timeout: float = 30.0) -> int:
        """Graceful stop (SIGTERM), then nothing of the process group left; the exit code."""
        if self.process is None:
            return 0
        process, self.process = self.process, None
        return terminate(process, timeout)

    def kill(self) -> None:
        """kill -9 the server and every worker it forked."""
        if self.process is None:
            return
        process, self.process = self.process, None
        kill_group(process)

    def __enter__(self) -> RegistryProcess:
        return self if self.process is not None else self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def restart(self) -> RegistryProcess:
        if self.process is not None:
            self.stop()
        return self.start()


# MOORAGE_TEST_STORAGE=s3: every server keeps its blobs in a bucket of its own (one per data
# directory, so a restart finds its blobs) on one moto server for the whole test session.
_s3_server: Any = None


def storage_environment_for(data_dir: Path) -> dict[str, str]:
    if os.environ.get("MOORAGE_TEST_STORAGE", "filesystem") != "s3":
        return {}
    global _s3_server
    from tests.support.services import S3Server  # services imports this module

    if _s3_server is None:
        _s3_server = S3Server().start()
    bucket = "moorage-" + hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:20]
    marker = data_dir.parent / f".{data_dir.name}.bucket"
    if not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        _s3_server.create_bucket(bucket)
        marker.write_text(bucket)
    return {
        "MOORAGE_STORAGE": "s3",
        "MOORAGE_S3_BUCKET": bucket,
        "MOORAGE_S3_ENDPOINT": _s3_server.endpoint,
        "MOORAGE_S3_REGION": _s3_server.region,
        "MOORAGE_S3_ACCESS_KEY": _s3_server.access_key,
        "MOORAGE_S3_SECRET_KEY": _s3_server.secret_key,
    }


def stored_keys(data_dir: Path, under: str) -> list[str]:
    """Names stored under `under` ("uploads", "blobs"): files, or keys in the S3 bucket."""
    environment = storage_environment_for(data_dir)
    if not environment:
        root = data_dir / "storage" / under
        return [str(path.relative_to(root)) for path in root.rglob("*") if path.is_file()]
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=environment["MOORAGE_S3_ENDPOINT"],
        region_name=environment["MOORAGE_S3_REGION"],
        aws_access_key_id=environment["MOORAGE_S3_ACCESS_KEY"],
        aws_secret_access_key=environment["MOORAGE_S3_SECRET_KEY"],
    )
    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket=environment["MOORAGE_S3_BUCKET"], Prefix=f"{under}/"
    )
    return [item["Key"][len(under) + 1 :] for page in pages for item in page.get("Contents", [])]
