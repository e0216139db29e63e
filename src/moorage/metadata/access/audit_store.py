"""SQL access for the hash-chained audit log and its retention checkpoints."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table, delete, select
from sqlalchemy.orm import Session

from moorage.metadata.access.iam_base import StoreBase, rowcount
from moorage.metadata.access.iam_models import AuditCheckpoint, AuditEntry
from moorage.metadata.database import write_transaction

GENESIS_HASH = "0" * 64
AUDIT_CHAIN = "audit-chain"


@dataclass(frozen=True, slots=True)
class AuditRecord:
    id: int
    at: datetime
    actor_kind: str
    actor: str
    client_ip: str | None
    certificate: str | None
    action: str
    project: str | None
    resource: str | None
    result: str
    details: dict[str, Any] | None
    prev_hash: str
    hash: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            **_content(self),
            "at": self.at.isoformat(),
            "prevHash": self.prev_hash,
            "hash": self.hash,
        }


@dataclass(frozen=True, slots=True)
class NewAuditEntry:
    at: datetime
    actor_kind: str
    actor: str
    client_ip: str | None
    certificate: str | None
    action: str
    project: str | None
    resource: str | None
    result: str
    details: dict[str, Any] | None


def _content(entry: NewAuditEntry | AuditRecord) -> dict[str, Any]:
    """What an entry says, as the export and the hash both name it (time left to the caller)."""
    return {
        "actorKind": entry.actor_kind,
        "actor": entry.actor,
        "clientIp": entry.client_ip,
        "certificate": entry.certificate,
        "action": entry.action,
        "project": entry.project,
        "resource": entry.resource,
        "result": entry.result,
        "details": entry.details,
    }


def entry_hash(prev_hash: str, entry: NewAuditEntry | AuditRecord) -> str:
    """sha256 over the previous hash and the entry's canonical JSON form."""
    body = {"at": _aware_iso(entry.at), **_content(entry)}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256((prev_hash + canonical).encode()).hexdigest()


def _aware_iso(moment: datetime) -> str:
    # SQLite hands back naive UTC, PostgreSQL aware times in the session zone: normalise both.
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat()


class AuditStore(StoreBase):
    # -- audit log

    def append_audit(self, entries: Sequence[NewAuditEntry]) -> None:
        """Append entries to the chain in one write transaction (the lock orders writers).

        On PostgreSQL the chain's advisory lock orders appenders on every node: each reads the
        head after the previous appender committed, so the chain never forks.
        """
        if not entries:
            return
        with write_transaction(self._engine, serialise_on=(AUDIT_CHAIN,)) as connection:
            table: Table = AuditEntry.__table__  # type: ignore[assignment]
            last = connection.execute(
                select(table.c.hash).order_by(table.c.id.desc()).limit(1)
            ).scalar()
            if last is None:
                checkpoint = connection.execute(
                    select(AuditCheckpoint.__table__.c.last_pruned_hash)
                    .order_by(AuditCheckpoint.__table__.c.id.desc())
                    .limit(1)
                ).scalar()
                last = checkpoint or GENESIS_HASH
            rows = []
            for entry in entries:
                digest = entry_hash(last, entry)
                rows.append(
                    {
                        "at": entry.at,
                        "actor_kind": entry.actor_kind,
                        "actor": entry.actor,
                        "client_ip": entry.client_ip,
                        "certificate": entry.certificate,
                        "action": entry.action,
                        "project": entry.project,
                        "resource": entry.resource,
                        "result": entry.result,
                        "details": _canonical(entry.details),
                        "prev_hash": last,
                        "hash": digest,
                    }
                )
                last = digest
            connection.execute(table.insert(), rows)

    def query_audit(
        self,
        *,
        project: str | None = None,
        actor: str | None = None,
        action: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        before_id: int | None = None,
        limit: int = 100,
    ) -> list[AuditRecord]:
        query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
        if project is not None:
            query = query.where(AuditEntry.project == project)
        if actor is not None:
            query = query.where(AuditEntry.actor == actor)
        if action is not None:
            query = query.where(AuditEntry.action == action)
        if since is not None:
            query = query.where(AuditEntry.at >= since)
        if until is not None:
            query = query.where(AuditEntry.at < until)
        if before_id is not None:
            query = query.where(AuditEntry.id < before_id)
        with self._read() as session:
            return [_audit_record(row) for row in session.scalars(query)]

    def iter_audit(self, batch: int = 1000) -> Iterator[AuditRecord]:
        last_id = 0
        while True:
            with self._read() as session:
                rows = list(
                    session.scalars(
                        select(AuditEntry)
                        .where(AuditEntry.id > last_id)
                        .order_by(AuditEntry.id)
                        .limit(batch)
                    )
                )
            if not rows:
                return
            for row in rows:
                yield _audit_record(row)
            last_id = rows[-1].id

    def latest_checkpoint(self) -> AuditCheckpoint | None:
        with self._read() as session:
            return session.scalar(
                select(AuditCheckpoint).order_by(AuditCheckpoint.id.desc()).limit(1)
            )

    def prune_audit(self, before: datetime, sign: Any) -> int:
        """Delete entries older than `before`, recording a signed checkpoint of the cut."""

        def work(session: Session) -> int:
            last = session.scalar(
                select(AuditEntry)
                .where(AuditEntry.at < before)
                .order_by(AuditEntry.id.desc())
                .limit(1)
            )
            if last is None:
                return 0
            kid, signature = sign(f"{last.id}:{last.hash}".encode())
            session.add(
                AuditCheckpoint(
                    last_pruned_id=last.id, last_pruned_hash=last.hash, kid=kid, signature=signature
                )
            )
            return rowcount(session.execute(delete(AuditEntry).where(AuditEntry.id <= last.id)))

        return self._run_write(work)  # type: ignore[no-any-return]


def _canonical(details: dict[str, Any] | None) -> str | None:
    if details is None:
        return None
    return json.dumps(details, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _audit_record(row: AuditEntry) -> AuditRecord:
    return AuditRecord(
        row.id,
        row.at,
        row.actor_kind,
        row.actor,
        row.client_ip,
        row.certificate,
        row.action,
        row.project,
        row.resource,
        row.result,
        json.loads(row.details) if row.details else None,
        row.prev_hash,
        row.hash,
    )
