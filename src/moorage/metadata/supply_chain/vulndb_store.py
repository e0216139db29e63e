"""SQL access for the shared vulnerability database: the pointer, its lock, the generations.

The lock is a lease in the pointer row, claimed with a conditional UPDATE whose row count says
who won (one row, so SQLite's write gate and PostgreSQL's row lock both make it atomic), and
renewed while held. Every change of the pointer is fenced by the lock: it only happens while
the caller still owns an unexpired lease, in the same transaction. Synchronous.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, Connection, Engine, Table, and_, delete, or_, select, update

from moorage.metadata.database import single_read, write_transaction
from moorage.metadata.registry.models import Blob, utcnow
from moorage.metadata.registry.registry_base import blob_key, claim_blob_in
from moorage.metadata.supply_chain.vulndb_models import (
    POINTER_ROW,
    VulndbGenerationRow,
    VulndbPointerRow,
)

_generations: Table = VulndbGenerationRow.__table__  # type: ignore[assignment]
_pointer: Table = VulndbPointerRow.__table__  # type: ignore[assignment]
_blobs: Table = Blob.__table__  # type: ignore[assignment]


class LockLostError(Exception):
    """The caller's lease on the lock ran out (or was never held): nothing was changed."""


@dataclass(frozen=True, slots=True)
class StoredPointer:
    current: str | None
    history: tuple[str, ...]
    version: int


@dataclass(frozen=True, slots=True)
class StoredGeneration:
    id: str
    digest: str
    size: int
    info: str  # JSON object: the generation's `meta` table


class VulndbStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    # -- reading

    def version(self) -> int:
        with single_read(self._engine) as connection:
            value = connection.execute(
                select(_pointer.c.version).where(_pointer.c.name == POINTER_ROW)
            ).scalar()
        return int(value or 0)

    def pointer(self) -> StoredPointer:
        with single_read(self._engine) as connection:
            row = connection.execute(
                select(_pointer.c.current, _pointer.c.history, _pointer.c.version).where(
                    _pointer.c.name == POINTER_ROW
                )
            ).first()
        if row is None:
            return StoredPointer(None, (), 0)
        history = tuple(str(item) for item in json.loads(row.history or "[]"))
        return StoredPointer(row.current, history, int(row.version))

    def generation(self, generation_id: str) -> StoredGeneration | None:
        with single_read(self._engine) as connection:
            row = connection.execute(
                select(
                    _generations.c.id,
                    _generations.c.digest,
                    _generations.c.size,
                    _generations.c.info,
                ).where(_generations.c.id == generation_id)
            ).first()
        return None if row is None else StoredGeneration(row.id, row.digest, row.size, row.info)

    def generations(self) -> list[StoredGeneration]:
        """Every kept generation (their blobs are referenced: garbage collection and fsck)."""
        with single_read(self._engine) as connection:
            rows = connection.execute(
                select(
                    _generations.c.id,
                    _generations.c.digest,
                    _generations.c.size,
                    _generations.c.info,
                ).order_by(_generations.c.id)
            ).all()
        return [StoredGeneration(row.id, row.digest, row.size, row.info) for row in rows]

    def claim_blob(self, digest: str, size: int) -> bool:
        """Before a generation's file is committed to storage as a blob: its blob row, so
        garbage collection leaves it alone (see `claim_blob_in`); False while a collection
        deletes that very blob."""
        with write_transaction(self._engine, serialise_on=[blob_key(digest)]) as connection:
            return claim_blob_in(connection, digest, size, utcnow())

    # -- the lock

    def claim_lock(self, owner: str, lease_seconds: float) -> bool:
        now = utcnow()
        with write_transaction(self._engine) as connection:
            self._ensure_row(connection)
            claimed = connection.execute(
                update(_pointer)
                .where(
                    _pointer.c.name == POINTER_ROW,
                    or_(
                        _pointer.c.lock_owner.is_(None),
                        _pointer.c.lock_owner == owner,
                        _pointer.c.lock_expires_at < now,
                    ),
                )
                .values(lock_owner=owner, lock_expires_at=now + timedelta(seconds=lease_seconds))
            ).rowcount
        return bool(claimed)

    def renew_lock(self, owner: str, lease_seconds: float) -> bool:
        now = utcnow()
        with write_transaction(self._engine) as connection:
            renewed = connection.execute(
                update(_pointer)
                .where(self._held_by(owner, now))
                .values(lock_expires_at=now + timedelta(seconds=lease_seconds))
            ).rowcount
        return bool(renewed)

    def release_lock(self, owner: str) -> None:
        with write_transaction(self._engine) as connection:
            connection.execute(
                update(_pointer)
                .where(_pointer.c.name == POINTER_ROW, _pointer.c.lock_owner == owner)
                .values(lock_owner=None, lock_expires_at=None)
            )

    # -- changing (under the lock)

    def move(
        self,
        owner: str,
        current: str,
        history: Sequence[str],
        added: Sequence[StoredGeneration] = (),
    ) -> list[StoredGeneration]:
        """Insert `added`, point at `current` with `history`, and delete the generation rows
        outside `history`, in one transaction fenced by the lock; the deleted rows (their
        blobs may now be unreferenced). LockLostError when `owner` does not hold the lock."""
        now = utcnow()
        with write_transaction(self._engine) as connection:
            moved = connection.execute(
                update(_pointer)
                .where(self._held_by(owner, now))
                .values(
                    current=current,
                    history=json.dumps(list(history)),
                    version=_pointer.c.version + 1,
                    updated_at=now,
                )
            ).rowcount
            if not moved:
                raise LockLostError("the vulnerability database lock was lost")
            for generation in added:
                connection.execute(
                    _generations.insert().values(
                        id=generation.id,
                        digest=generation.digest,
                        size=generation.size,
                        info=generation.info,
                        created_at=now,
                    )
                )
            dropped = [
                StoredGeneration(row.id, row.digest, row.size, row.info)
                for row in connection.execute(
                    select(
                        _generations.c.id,
                        _generations.c.digest,
                        _generations.c.size,
                        _generations.c.info,
                    ).where(_generations.c.id.not_in(list(history)))
                )
            ]
            if dropped:
                connection.execute(
                    delete(_generations).where(_generations.c.id.in_([item.id for item in dropped]))
                )
        return dropped

    @staticmethod
    def _held_by(owner: str, now: datetime) -> ColumnElement[bool]:
        return and_(
            _pointer.c.name == POINTER_ROW,
            _pointer.c.lock_owner == owner,
            _pointer.c.lock_expires_at >= now,
        )

    @staticmethod
    def _ensure_row(connection: Connection) -> None:
        exists = connection.execute(
            select(_pointer.c.name).where(_pointer.c.name == POINTER_ROW)
        ).first()
        if exists is None:
            connection.execute(
                _pointer.insert().values(name=POINTER_ROW, current=None, history="[]", version=0)
            )
