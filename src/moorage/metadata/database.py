"""Engine creation, connection setup and schema migrations."""

from __future__ import annotations

import fcntl
import os
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.orm import Session
from sqlalchemy.pool import QueuePool

_MIGRATIONS = Path(__file__).parent / "migrations"
_WRITE = "moorage_write"
_SINGLE_READ = "moorage_single_read"


def sqlite_url(path: Path) -> str:
    return f"sqlite+pysqlite:///{path}"


class WriteGate:
    """Orders writers to one SQLite file: a thread lock, then an flock shared by all processes.

    Waiting here is a fair, blocking wait that wakes the moment the previous writer commits.
    Without it, writers wait in SQLite's busy handler, which polls with sleeps of up to 100 ms
    and so hands the lock over late and unfairly under load.
    """

    def __init__(self, lock_path: Path | None) -> None:
        self._lock_path = lock_path
        self._thread_lock = threading.Lock()
        self._fd: int | None = None
        self._pid = 0

    def _descriptor(self) -> int:
        # A descriptor inherited across fork() would share its lock with the parent: reopen.
        if self._fd is None or self._pid != os.getpid():
            assert self._lock_path is not None
            self._fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            self._pid = os.getpid()
        return self._fd

    @contextmanager
    def held(self) -> Iterator[None]:
        if self._lock_path is None:
            yield
            return
        with self._thread_lock:
            fd = self._descriptor()
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)


_GATES: weakref.WeakKeyDictionary[Engine, WriteGate] = weakref.WeakKeyDictionary()


def _sqlite_file(url: str) -> Path | None:
    path = url.split(":///", 1)[1] if ":///" in url else ""
    return Path(path) if path and path != ":memory:" else None


def make_engine(url: str, *, pool_size: int = 8, sqlite_synchronous: str = "FULL") -> Engine:
    """An engine whose write transactions take the write lock up front.

    On SQLite, `BEGIN IMMEDIATE` makes concurrent writers (threads and worker processes) wait
    on the busy timeout instead of failing with "database is locked" when a read transaction
    tries to upgrade. WAL lets readers proceed while one writer commits.
    """
    if not url.startswith("sqlite"):
        engine = create_engine(url, pool_size=pool_size, pool_pre_ping=True)
        _GATES[engine] = WriteGate(None)
        return engine

    engine = create_engine(
        url,
        poolclass=QueuePool,
        pool_size=pool_size,
        max_overflow=pool_size,
        connect_args={"check_same_thread": False, "timeout": 60},
    )
    database_file = _sqlite_file(url)
    _GATES[engine] = WriteGate(
        database_file.with_name(database_file.name + ".writelock") if database_file else None
    )

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        # pysqlite's own transaction handling is replaced by the "begin" hook below.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={sqlite_synchronous}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        options = connection.get_execution_options()
        if options.get(_SINGLE_READ, False):
            return  # one SELECT is consistent on its own: no BEGIN/COMMIT round trip
        connection.exec_driver_sql("BEGIN IMMEDIATE" if options.get(_WRITE, False) else "BEGIN")

    return engine


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    with _GATES[engine].held(), engine.connect() as connection:
        connection = connection.execution_options(**{_WRITE: True})
        with connection.begin():
            yield connection


@contextmanager
def write_session(engine: Engine) -> Iterator[Session]:
    """An ORM session on one write transaction (the write lock taken up front); flushed when the
    block ends, committed with the transaction."""
    with (
        write_transaction(engine) as connection,
        Session(bind=connection, expire_on_commit=False) as session,
    ):
        yield session
        session.flush()


@contextmanager
def single_read(engine: Engine) -> Iterator[Connection]:
    """A connection for exactly one SELECT (hot paths: no transaction statements around it)."""
    with engine.connect() as connection:
        yield connection.execution_options(**{_SINGLE_READ: True})


@contextmanager
def read_transaction(engine: Engine) -> Iterator[Connection]:
    with engine.connect() as connection, connection.begin():
        yield connection


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to `revision`, the newest by default (idempotent)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    sqlite = engine.dialect.name == "sqlite"
    with engine.connect() as connection:
        if sqlite:
            # A migration that rebuilds a table drops it and renames its copy; with foreign keys
            # on, the drop would cascade into every referencing table. The pragma is ignored
            # inside a transaction, so it is set before one begins; migrations that rebuild
            # check the foreign keys themselves before committing.
            _sqlite_foreign_keys(connection, on=False)
        try:
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
            connection.commit()
        finally:
            if sqlite:
                if connection.in_transaction():
                    connection.rollback()
                _sqlite_foreign_keys(connection, on=True)


def _sqlite_foreign_keys(connection: Connection, *, on: bool) -> None:
    # On the driver's connection: through SQLAlchemy the statement would begin a transaction.
    driver = connection.connection.driver_connection
    assert driver is not None
    driver.execute(f"PRAGMA foreign_keys={'ON' if on else 'OFF'}")
