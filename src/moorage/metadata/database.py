"""Engine creation, connection setup and schema migrations."""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Select,
    column,
    create_engine,
    event,
    func,
    inspect,
    make_url,
    select,
    table,
    text,
)
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import Session
from sqlalchemy.pool import QueuePool

from moorage.metadata.errors import DatabaseUnavailableError

_MIGRATIONS = Path(__file__).parent / "migrations"
_WRITE = "moorage_write"
_SINGLE_READ = "moorage_single_read"

# PostgreSQL advisory lock keys. Every write transaction holds WRITERS: exclusively by default
# (one writer across all nodes, as SQLite's write lock gives), or shared when it names the keys
# it serialises on, so that only writers of the same keys wait for each other.
WRITERS = "moorage:writers"
_MIGRATIONS_KEY = "moorage:migrations"
_STARTUP_KEY = "moorage:startup"
PG_CONNECT_TIMEOUT_SECONDS = 10


def sqlite_url(path: Path) -> str:
    return f"sqlite+pysqlite:///{path}"


def masked_url(url: str) -> str:
    """`url` with its password replaced by ***: the form that may be printed or logged."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparsable database URL>"


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory lock key for `name` (the same on every node)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def is_postgresql(engine: Engine | Connection) -> bool:
    return engine.dialect.name == "postgresql"


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
        return _server_engine(url, pool_size)

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


def _server_engine(url: str, pool_size: int) -> Engine:
    """A pooled engine for a database server (PostgreSQL): connections are checked before use
    (a node outlives database restarts and failovers), bounded in number, and named in
    pg_stat_activity."""
    connect_args: dict[str, Any] = {}
    if make_url(url).get_backend_name() == "postgresql":
        connect_args = {
            "connect_timeout": PG_CONNECT_TIMEOUT_SECONDS,
            "application_name": f"moorage[{os.getpid()}]",
        }
    engine = create_engine(
        url,
        pool_size=pool_size,
        max_overflow=max(2, pool_size // 2),
        pool_timeout=30,
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args=connect_args,
        hide_parameters=True,
        # psycopg closes a cursor that returns no rows, and with it the row count of an
        # INSERT ... ON CONFLICT DO NOTHING (-1): the stores read it to learn who won.
        execution_options={"preserve_rowcount": True},
    )
    _GATES[engine] = WriteGate(None)
    return engine


@contextmanager
def write_transaction(
    engine: Engine, *, serialise_on: Iterable[str] | None = None
) -> Iterator[Connection]:
    """One write transaction.

    On SQLite it holds the single write lock, whatever `serialise_on` says. On PostgreSQL it
    holds the WRITERS advisory lock: exclusively when `serialise_on` is None, so the block is
    as atomic as on SQLite; shared when the block names the keys it serialises on (each taken
    exclusively, in a fixed order), and then the block's own statements (row locks, SKIP
    LOCKED, ON CONFLICT) must make it correct against other writers of other keys.
    """
    with _GATES[engine].held(), engine.connect() as connection:
        connection = connection.execution_options(**{_WRITE: True})
        with connection.begin():
            if is_postgresql(connection):
                _take_locks(connection, serialise_on)
            yield connection


def _take_locks(connection: Connection, serialise_on: Iterable[str] | None) -> None:
    # Taken first, before any snapshot: under READ COMMITTED every later statement then sees
    # everything the previous holder committed.
    if serialise_on is None:
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key(WRITERS)})
        return
    connection.execute(
        text("SELECT pg_advisory_xact_lock_shared(:key)"), {"key": lock_key(WRITERS)}
    )
    serialise(connection, *serialise_on)


def serialise(connection: Connection, *names: str) -> None:
    """Inside a write transaction on PostgreSQL: wait for, and hold until commit, the advisory
    locks of `names` (sorted, so two transactions never wait for each other in a cycle). No-op
    on SQLite, whose write transactions are serial already."""
    if not is_postgresql(connection):
        return
    for key in sorted({lock_key(name) for name in names}):
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


@contextmanager
def write_session(
    engine: Engine, *, serialise_on: Iterable[str] | None = None
) -> Iterator[Session]:
    """An ORM session on one write transaction (the write lock taken up front); flushed when the
    block ends, committed with the transaction."""
    with (
        write_transaction(engine, serialise_on=serialise_on) as connection,
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


@contextmanager
def _reaching(engine: Engine) -> Iterator[None]:
    """Turn a failure to reach the database into one line naming it (password masked)."""
    try:
        yield
    except OperationalError as error:
        where = engine.url.render_as_string(hide_password=True)
        raise DatabaseUnavailableError(f"cannot use the database {where}: {error.orig}") from None


@contextmanager
def startup_lock(engine: Engine) -> Iterator[None]:
    """PostgreSQL: nodes starting together prepare the database (schema, first signing key,
    first account) one at a time, so the later ones find it prepared. No-op on SQLite, where
    one supervisor prepares before its workers fork."""
    if not is_postgresql(engine):
        yield
        return
    key = {"key": lock_key(_STARTUP_KEY)}
    with _reaching(engine), engine.connect() as connection:
        connection.execute(text("SELECT pg_advisory_lock(:key)"), key)
        connection.commit()
        try:
            yield
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), key)
            connection.commit()


def has_schema(engine: Engine) -> bool:
    """Whether the database holds a registry (a migrated schema), without changing it."""
    with _reaching(engine), engine.connect() as connection:
        return inspect(connection).has_table("alembic_version")


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to `revision`, the newest by default (idempotent)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    sqlite = engine.dialect.name == "sqlite"
    with _reaching(engine), engine.connect() as connection:
        if sqlite:
            # A migration that rebuilds a table drops it and renames its copy; with foreign keys
            # on, the drop would cascade into every referencing table. The pragma is ignored
            # inside a transaction, so it is set before one begins; migrations that rebuild
            # check the foreign keys themselves before committing.
            _sqlite_foreign_keys(connection, on=False)
        elif is_postgresql(connection):
            # Nodes starting together migrate one after another; the later ones find the
            # schema current. Held until the migration's one transaction commits.
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key(_MIGRATIONS_KEY)}
            )
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


def reset_sequences(connection: Connection) -> None:
    """After rows were copied in with their ids (PostgreSQL): move every table's id sequence
    past the highest id present, so the next insert never collides with a copied row."""
    if not is_postgresql(connection):
        return
    owned = connection.execute(
        text(
            "SELECT c.relname, a.attname, pg_get_serial_sequence(quote_ident(c.relname),"
            " a.attname) FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.relkind = 'r' AND n.nspname = current_schema() AND a.attnum > 0"
            " AND NOT a.attisdropped"
            " AND pg_get_serial_sequence(quote_ident(c.relname), a.attname) IS NOT NULL"
        )
    ).all()
    for table_name, column_name, sequence in owned:
        highest: Select[Any] = select(func.max(column(column_name))).select_from(table(table_name))
        connection.execute(
            select(func.setval(sequence, func.coalesce(highest.scalar_subquery(), 0) + 1, False))
        )
