"""Copying every row of one metadata database into another (`moorage migrate-data`).

Rows keep their ids; tables are copied parents first (foreign-key order), in primary-key order,
in batches. A row whose primary key is already in the target is left alone, so an interrupted
copy can run again and finish. Times are handed over as aware UTC: SQLite keeps them naive (and
UTC), and PostgreSQL would read a naive time in its session's zone, which would move every
timestamp and break the audit chain's hashes.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, Engine, Integer, Table, func, inspect, select, text
from sqlalchemy.dialects import postgresql, sqlite

from moorage.metadata.schema import Base

BATCH_ROWS = 1000

# Tables of the migration tool and of the database engine, not of the registry.
_NOT_REGISTRY_TABLES = frozenset({"alembic_version", "sqlite_sequence"})


@dataclass(frozen=True, slots=True)
class TableCopy:
    name: str
    source_rows: int
    inserted: int


def registry_tables() -> list[Table]:
    """Every table of the schema, each after the tables its foreign keys point at."""
    return list(Base.metadata.sorted_tables)


# Counters the target's triggers rebuild from the copied links (see
# `moorage.metadata.lifecycle.quota_triggers`): copying them as well would count twice.
DERIVED_TABLES = frozenset({"quota_usage", "quota_project_blobs"})


def copied_tables() -> list[Table]:
    """The tables whose rows are copied and counted: all but the derived counters."""
    return [table for table in registry_tables() if table.name not in DERIVED_TABLES]


def unknown_tables(engine: Engine) -> list[str]:
    """Tables in `engine` that the schema does not know: data the copy would leave behind."""
    known = {table.name for table in registry_tables()} | _NOT_REGISTRY_TABLES
    return sorted(set(inspect(engine).get_table_names()) - known)


def row_counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as connection:
        return {
            table.name: int(
                connection.execute(select(func.count()).select_from(table)).scalar_one()
            )
            for table in copied_tables()
        }


def seeded_tables() -> dict[str, int]:
    """Rows the migrations themselves write (singletons such as the vulnerability database
    pointer): a target holding only these is empty."""
    from moorage.metadata.database import make_engine, migrate, sqlite_url

    with tempfile.TemporaryDirectory(prefix="moorage-seed-") as directory:
        engine = make_engine(sqlite_url(Path(directory) / "seed.db"), pool_size=1)
        try:
            migrate(engine)
            return {name: rows for name, rows in row_counts(engine).items() if rows}
        finally:
            engine.dispose()


def copy_tables(
    source: Engine,
    target: Engine,
    progress: Callable[[str, int], None] = lambda _table, _rows: None,
    replace: frozenset[str] = frozenset(),
) -> list[TableCopy]:
    """Copy every row; `progress(table, rows)` after each batch. Each table is one transaction.
    The tables in `replace` (seeded by the migrations) take the source's rows instead of
    keeping their own."""
    copies = []
    for table in copied_tables():
        inserted = 0
        read = 0
        with source.connect() as reading, target.begin() as writing:
            if table.name in replace:
                writing.execute(table.delete())
            for batch in _batches(reading.execute(select(table).order_by(*table.primary_key))):
                rows = [_portable(table, row) for row in batch]
                result = writing.execute(_insert_ignoring_present(target, table), rows)
                inserted += max(result.rowcount, 0)
                read += len(rows)
                progress(table.name, len(rows))
        copies.append(TableCopy(table.name, read, inserted))
    return copies


def _batches(result: Any) -> Iterator[list[Any]]:
    while batch := result.fetchmany(BATCH_ROWS):
        yield batch


def _portable(table: Table, row: Any) -> dict[str, Any]:
    values = dict(row._mapping)
    for column in table.columns:
        value = values.get(column.name)
        if (
            isinstance(value, datetime)
            and value.tzinfo is None
            and isinstance(column.type, DateTime)
            and column.type.timezone
        ):
            values[column.name] = value.replace(tzinfo=UTC)
    return values


def _insert_ignoring_present(engine: Engine, table: Table) -> Any:
    if engine.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    if engine.dialect.name == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    raise ValueError(f"cannot copy into a {engine.dialect.name} database")


def reset_sequences(source: Engine, target: Engine) -> list[str]:
    """Make PostgreSQL's sequences continue after the copied ids, and after every id SQLite's
    AUTOINCREMENT ever handed out (account ids are never reused, deleted ones included)."""
    if target.dialect.name != "postgresql":
        return []
    used = _sqlite_sequences(source)
    reset = []
    with target.begin() as connection:
        for table in registry_tables():
            for column in table.primary_key.columns:
                if not isinstance(column.type, Integer) or column.autoincrement is False:
                    continue
                sequence = connection.execute(
                    text("SELECT pg_get_serial_sequence(:table, :column)"),
                    {"table": table.name, "column": column.name},
                ).scalar()
                if sequence is None:
                    continue
                highest = connection.execute(select(func.max(column))).scalar() or 0
                highest = max(int(highest), used.get(table.name, 0))
                # setval(seq, n, false) makes n the next value; ids start at 1.
                connection.execute(
                    text("SELECT setval(:sequence, :next, false)"),
                    {"sequence": sequence, "next": highest + 1},
                )
                reset.append(f"{table.name}.{column.name} continues at {highest + 1}")
    return reset


def _sqlite_sequences(engine: Engine) -> dict[str, int]:
    if (
        engine.dialect.name != "sqlite"
        or "sqlite_sequence" not in inspect(engine).get_table_names()
    ):
        return {}
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT name, seq FROM sqlite_sequence")).all()
    return {str(name): int(seq) for name, seq in rows}
