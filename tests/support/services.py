"""The servers of a scale-out deployment, each a real process on a free loopback port:
PostgreSQL (Debian's, initdb in a temporary directory), Redis (Debian's redis-server) and an
S3 endpoint (moto's standalone server). Nothing is mocked in-process.

Each is a context manager; `start()` returns once the server answers."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.support.processes import kill_group, spawn, terminate
from tests.support.server import free_port
from tests.support.tools import require_module, require_tool, unavailable
from tests.support.wait import wait_until

S3_ACCESS_KEY = "moorage-test-access"
S3_SECRET_KEY = "moorage-test-secret"  # moto accepts any credentials
S3_REGION = "us-east-1"


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def moto_server() -> str:
    """The project's own moto (its virtualenv's), before any other on PATH."""
    beside = Path(sys.executable).parent / "moto_server"
    return str(beside) if beside.exists() else (shutil.which("moto_server") or str(beside))


def postgres_bin() -> Path:
    """Debian keeps PostgreSQL's server programs in a per-version folder, outside PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        unavailable("PostgreSQL's server (Debian package postgresql) is not installed")
    return Path(found[-1]).parent


class _ServerProcess:
    """A server process started by `start()` and stopped when its `with` block ends."""

    process: subprocess.Popen[bytes] | None

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        if self.process is not None:
            terminate(self.process)
            self.process = None

    def __enter__(self) -> Self:
        return self.start() if self.process is None else self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@dataclass
class PostgresServer(_ServerProcess):
    """A throwaway PostgreSQL cluster. As root, initdb refuses to run: the cluster then
    belongs to the `postgres` account and its programs run through `runuser`."""

    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="moorage-pg-")))
    port: int = field(default_factory=free_port)
    user: str = "moorage"
    password: str = "moorage-test"
    process: subprocess.Popen[bytes] | None = None

    def _as_owner(self, command: list[str]) -> list[str]:
        if os.getuid() != 0:
            return command
        return ["runuser", "-u", "postgres", "--", *command]

    def start(self) -> PostgresServer:
        binaries = postgres_bin()
        data = self.directory / "data"
        password_file = self.directory / "password"
        password_file.write_text(self.password)
        if os.getuid() == 0:
            owner = pwd.getpwnam("postgres")
            for path in (self.directory, password_file):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        subprocess.run(
            self._as_owner(
                [
                    str(binaries / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    self.user,
                    "--pwfile",
                    str(password_file),
                    "--auth=scram-sha-256",
                    "--encoding=UTF8",
                    "--no-sync",
                ]
            ),
            check=True,
            capture_output=True,
        )
        self.process = spawn(
            self._as_owner(
                [
                    str(binaries / "postgres"),
                    "-D",
                    str(data),
                    "-p",
                    str(self.port),
                    "-k",
                    str(self.directory),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "fsync=off",  # throwaway data: durability is PostgreSQL's own promise
                    "-c",
                    "max_connections=300",
                ]
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: self._ready(), 60, "PostgreSQL to accept connections")
        return self

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"postgres exited with {self.process.returncode}")
        return _answers(self.port) and self._query("SELECT 1").strip() == "1"

    def _query(self, sql: str, database: str = "postgres") -> str:
        result = subprocess.run(
            [
                "psql",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                self.user,
                "-d",
                database,
                "-Atc",
                sql,
            ],
            env={**os.environ, "PGPASSWORD": self.password},
            capture_output=True,
            text=True,
            check=False,
        )
        return result.stdout if result.returncode == 0 else ""

    def create_database(self, name: str) -> str:
        """A new empty database; its SQLAlchemy URL (psycopg 3)."""
        result = subprocess.run(
            [
                *("psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user),
                *("-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c", f'CREATE DATABASE "{name}"'),
            ],
            env={**os.environ, "PGPASSWORD": self.password},
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        return self.url(name)

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        if self.process is not None:
            kill_group(self.process)
            self.process = None
        shutil.rmtree(self.directory, ignore_errors=True)


@dataclass
class RedisServer(_ServerProcess):
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        require_tool("redis-server")
        self.process = spawn(
            [
                *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--protected-mode", "no"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: _answers(self.port), 30, "redis-server to listen")
        return self


@dataclass
class S3Server(_ServerProcess):
    """moto's standalone S3 endpoint; it keeps everything in memory."""

    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    access_key: str = S3_ACCESS_KEY
    secret_key: str = S3_SECRET_KEY
    region: str = S3_REGION

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> S3Server:
        require_module("moto")
        server = moto_server()
        self.process = spawn(
            [server, "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: _answers(self.port), 60, "moto_server to listen")
        return self

    def create_bucket(self, name: str) -> str:
        """A new bucket (through the S3 API itself); its name."""
        import boto3

        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
        )
        client.create_bucket(Bucket=name)
        return name
