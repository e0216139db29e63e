"""Both metadata backends for in-process store tests: `metadata_url` gives a fresh, migrated
database on SQLite (a file in the test's directory) and on PostgreSQL (a database of its own on
the PostgreSQL this test process shares, see tests/support/server.py)."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from moorage.metadata.database import make_engine, migrate, sqlite_url
from tests.support.server import database_url_for, session_postgres

BACKENDS = ("sqlite", "postgresql")
_numbers = itertools.count()


def fresh_database_url(backend: str, directory: Path) -> str:
    """An empty database on `backend` (not migrated)."""
    if backend == "sqlite":
        return sqlite_url(directory / "moorage.db")
    return session_postgres().create_database(f"store_{os.getpid()}_{next(_numbers)}")


@pytest.fixture(params=BACKENDS)
def metadata_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def metadata_url(metadata_backend: str, tmp_path: Path) -> str:
    """A migrated database on each backend, for tests of store behaviour."""
    url = fresh_database_url(metadata_backend, tmp_path)
    engine = make_engine(url, pool_size=1)
    try:
        migrate(engine)
    finally:
        engine.dispose()
    return url


def server_database_url(data_dir: Path) -> str:
    """The database of a RegistryProcess on `data_dir`, whichever the test backend."""
    return database_url_for(data_dir) or sqlite_url(data_dir / "moorage.db")


def database_text(url: str) -> str:
    """Every row of every table, as text: for asserting that a secret is stored nowhere."""
    from moorage.metadata.schema import Base

    engine = make_engine(url, pool_size=1)
    try:
        with engine.connect() as connection:
            return "\n".join(
                f"{table.name}: {tuple(row)}"
                for table in Base.metadata.sorted_tables
                for row in connection.execute(table.select())
            )
    finally:
        engine.dispose()


def query_database(url: str, sql: str, *parameters: object) -> list[tuple[object, ...]]:
    """Run one SQL statement with `?` placeholders (as sqlite3 takes them) on either backend;
    its rows (committed, for a statement that changes rows)."""
    from sqlalchemy import text

    named: dict[str, object] = {}
    for index, value in enumerate(parameters):
        sql = sql.replace("?", f":p{index}", 1)
        named[f"p{index}"] = value
    engine = make_engine(url, pool_size=1)
    try:
        with engine.begin() as connection:
            result = connection.execute(text(sql), named)
            return [tuple(row) for row in result] if result.returns_rows else []
    finally:
        engine.dispose()
