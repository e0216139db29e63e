"""Two Moorage nodes of one deployment on this machine: one metadata database, one blob store
and one Redis, but each node with its own data directory (so its own lock files): only the
shared services can coordinate them, as on two machines."""

from __future__ import annotations

import itertools
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.server import RegistryProcess
from tests.support.services import PostgresServer

BACKENDS = ["sqlite", "postgresql"]
_databases = itertools.count()


def metadata_url(backend: str, postgres: PostgresServer | None) -> str | None:
    """A new database on `backend` for one deployment (None: SQLite in the shared folder)."""
    if backend == "sqlite":
        return None
    assert postgres is not None
    return postgres.create_database(f"nodes_{next(_databases)}")


@dataclass
class Nodes:
    root: Path
    redis_url: str | None
    database_url: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    workers: int = 1
    nodes: list[RegistryProcess] = field(default_factory=list)
    _stack: ExitStack = field(default_factory=ExitStack)

    def start(self, count: int = 2) -> list[RegistryProcess]:
        shared = self.root / "shared"
        (shared / "storage").mkdir(parents=True, exist_ok=True)
        env = {
            "MOORAGE_DATABASE_URL": self.database_url
            or f"sqlite+pysqlite:///{shared / 'moorage.db'}",
            **self.env,
        }
        if self.redis_url is not None:
            env["MOORAGE_REDIS_URL"] = self.redis_url
        for index in range(count):
            data = self.root / f"node{index}" / "data"
            data.mkdir(parents=True)
            # Blobs are shared (as S3 would be); everything else of the data directory is not.
            (data / "storage").symlink_to(shared / "storage", target_is_directory=True)
            # One after the other: the first migrates the database and creates the admin.
            node = RegistryProcess(data, workers=self.workers, env=env)
            self.nodes.append(self._stack.enter_context(node))
        return self.nodes

    def stop(self) -> None:
        self._stack.close()

    def __enter__(self) -> list[RegistryProcess]:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
