"""The scan job queue: requests, leased claims, and the re-matches a new database generation
queues. Jobs are claimed inside a write transaction (SQLite: under the write gate; PostgreSQL:
`FOR UPDATE SKIP LOCKED`, so claimers on many nodes take different jobs without waiting, and a
conditional UPDATE whose row count says whether this process won), so any number of processes
can run the queue.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, and_, delete, func, or_, select, tuple_, update

from moorage.metadata.database import read_transaction, single_read, write_transaction
from moorage.metadata.registry.models import (
    utcnow,
)
from moorage.metadata.supply_chain.scan_records import (
    _BATCH,
    ERROR,
    MATCHED_GENERATION,
    PENDING,
    REMATCH,
    RUNNING,
    SCAN,
    SUCCESS,
    Claim,
    ClaimedJob,
    GenerationChange,
    ManifestEntry,
    ScanRequest,
    _chunks,
    _inventories,
    _jobs,
    _keys,
    _manifests,
    _reports,
    _repos,
    _rm,
    _state,
)


class ScanQueue:
    """The queue half of `ScanStore`."""

    _engine: Engine
    _insert: Callable[..., Any]

    def request(self, requests: Sequence[ScanRequest]) -> int:
        """Queue scans in one transaction; how many new jobs were queued.

        A digest with a job already queued or running is not queued again. Its report becomes
        Pending unless it is already Pending or Running, or it is complete and `rescan` is off.
        """
        queued = 0
        now = utcnow()
        # PostgreSQL: requests for the same digest serialise; claims and renewals run beside.
        digests = [f"scan-job:{request.digest}" for request in requests]
        with write_transaction(self._engine, serialise_on=digests) as connection:
            for request in requests:
                queued += self._request(connection, request, now)
        return queued

    def _request(self, connection: Connection, request: ScanRequest, now: datetime) -> int:
        current = connection.execute(
            select(_reports.c.status).where(_reports.c.digest == request.digest)
        ).scalar()
        fresh = {
            "repository": request.repository,
            "media_type": request.media_type,
            "status": PENDING,
            "scanner": request.scanner,
            "generation": None,
            "findings": "[]",
            "error": None,
            "children": json.dumps(list(request.children)),
            "notes": "[]",
            "created_at": now,
            "started_at": None,
            "finished_at": None,
            "matched_at": None,
            "rematches": 0,
        }
        if current is None:
            connection.execute(
                self._insert(_reports)
                .values(digest=request.digest, **fresh)
                .on_conflict_do_nothing()
            )
        elif current in (SUCCESS, ERROR):
            if not request.rescan:
                return 0
            connection.execute(
                update(_reports).where(_reports.c.digest == request.digest).values(**fresh)
            )
        if request.children:
            return 0  # an index has no job: its children do the work
        return self._queue(connection, request.digest, request.repository, SCAN, now)

    def _queue(
        self, connection: Connection, digest: str, repository: str, kind: str, now: datetime
    ) -> int:
        existing = connection.execute(
            select(_jobs.c.kind, _jobs.c.lease_owner).where(_jobs.c.digest == digest)
        ).first()
        if existing is None:
            # A concurrent request (another process, on PostgreSQL) may have queued it first.
            return int(
                connection.execute(
                    self._insert(_jobs)
                    .values(
                        digest=digest,
                        repository=repository,
                        kind=kind,
                        requested_at=now,
                        attempts=0,
                    )
                    .on_conflict_do_nothing()
                ).rowcount
            )
        if kind == SCAN and existing.kind == REMATCH and existing.lease_owner is None:
            # A full scan covers a re-match: one job does both.
            connection.execute(
                update(_jobs)
                .where(_jobs.c.digest == digest, _jobs.c.lease_owner.is_(None))
                .values(kind=SCAN, repository=repository)
            )
        return 0

    # -- the queue

    def has_available_job(self) -> bool:
        now = utcnow()
        with single_read(self._engine) as connection:
            return (
                connection.execute(
                    select(_jobs.c.digest)
                    .where(or_(_jobs.c.lease_owner.is_(None), _jobs.c.lease_expires_at < now))
                    .limit(1)
                ).first()
                is not None
            )

    def claim(self, owner: str, lease_seconds: float, max_attempts: int) -> Claim:
        """Lease the oldest available job to `owner`; jobs whose leases ran out `max_attempts`
        times are removed and returned as abandoned (their reports end in Error)."""
        now = utcnow()
        available = or_(_jobs.c.lease_owner.is_(None), _jobs.c.lease_expires_at < now)
        with write_transaction(self._engine, serialise_on=()) as connection:
            exhausted = connection.execute(
                select(_jobs.c.digest, _jobs.c.repository, _jobs.c.kind, _jobs.c.attempts)
                .where(available, _jobs.c.attempts >= max_attempts)
                .limit(_BATCH)
                .with_for_update(skip_locked=True)
            ).all()
            abandoned = tuple(ClaimedJob(*row) for row in exhausted)
            if abandoned:
                connection.execute(
                    delete(_jobs).where(_jobs.c.digest.in_([job.digest for job in abandoned]))
                )
            row = connection.execute(
                select(_jobs.c.digest, _jobs.c.repository, _jobs.c.kind, _jobs.c.attempts)
                .where(available)
                .order_by(_jobs.c.requested_at, _jobs.c.digest)
                .limit(1)
                .with_for_update(skip_locked=True)
            ).first()
            if row is None:
                return Claim(None, abandoned)
            won = connection.execute(
                update(_jobs)
                .where(_jobs.c.digest == row.digest, available)
                .values(
                    lease_owner=owner,
                    lease_expires_at=now + timedelta(seconds=lease_seconds),
                    attempts=_jobs.c.attempts + 1,
                )
            ).rowcount
        job = ClaimedJob(row.digest, row.repository, row.kind, row.attempts + 1) if won else None
        return Claim(job, abandoned)

    def renew(self, digest: str, owner: str, lease_seconds: float) -> bool:
        with write_transaction(self._engine, serialise_on=()) as connection:
            return (
                connection.execute(
                    update(_jobs)
                    .where(_jobs.c.digest == digest, _jobs.c.lease_owner == owner)
                    .values(lease_expires_at=utcnow() + timedelta(seconds=lease_seconds))
                ).rowcount
                > 0
            )

    def release(self, digest: str, owner: str) -> None:
        """Give a job back unfinished (the worker is stopping): it is claimable at once and
        the attempt does not count."""
        with write_transaction(self._engine) as connection:
            connection.execute(
                update(_jobs)
                .where(_jobs.c.digest == digest, _jobs.c.lease_owner == owner)
                .values(
                    lease_owner=None,
                    lease_expires_at=None,
                    attempts=func.max(_jobs.c.attempts - 1, 0)
                    if self._engine.dialect.name == "sqlite"
                    else func.greatest(_jobs.c.attempts - 1, 0),
                )
            )
            connection.execute(
                update(_reports)
                .where(_reports.c.digest == digest, _reports.c.status == RUNNING)
                .values(status=PENDING, started_at=None)
            )

    # -- reports

    def matched_generation(self) -> str | None:
        with single_read(self._engine) as connection:
            return connection.execute(
                select(_state.c.value).where(_state.c.name == MATCHED_GENERATION)
            ).scalar()

    def advance_generation(
        self,
        previous: str | None,
        current: str,
        changed: frozenset[tuple[str, str]] | None,
        builtin_scanner: str,
    ) -> GenerationChange | None:
        """Move the matched generation from `previous` to `current` (compare-and-set) and queue
        a re-match of every image whose findings may differ; None if another process moved it.

        An image needs a re-match when its report was matched against neither generation (or
        never matched at all, e.g. scanned before any database existed), when `changed` is None,
        or when its stored keys meet `changed`. A report matched against `previous` whose
        packages did not change is marked as matched against `current` as it stands.
        """
        now = utcnow()
        with write_transaction(self._engine) as connection:
            stored = connection.execute(
                select(_state.c.value).where(_state.c.name == MATCHED_GENERATION)
            ).first()
            if (stored.value if stored is not None else None) != previous:
                return None
            if stored is None:
                connection.execute(
                    self._insert(_state).values(
                        name=MATCHED_GENERATION, value=current, updated_at=now
                    )
                )
            else:
                connection.execute(
                    update(_state)
                    .where(_state.c.name == MATCHED_GENERATION)
                    .values(value=current, updated_at=now)
                )
            affected: set[str] = set()
            if changed is not None:
                for keys in _chunks(sorted(changed)):
                    affected.update(
                        connection.execute(
                            select(_keys.c.digest)
                            .where(tuple_(_keys.c.ecosystem, _keys.c.name).in_(list(keys)))
                            .distinct()
                        ).scalars()
                    )
            candidates = connection.execute(
                select(_reports.c.digest, _reports.c.generation, _reports.c.status)
                .join(_inventories, _inventories.c.digest == _reports.c.digest)
                .where(
                    _reports.c.scanner == builtin_scanner,
                    _reports.c.status.in_((SUCCESS, ERROR)),
                )
            ).all()
            rematch: list[str] = []
            confirm: list[str] = []
            for digest, generation, status in candidates:
                if generation == current:
                    continue
                unchanged = (
                    changed is not None
                    and previous is not None
                    and generation == previous
                    and status == SUCCESS
                    and digest not in affected
                )
                (confirm if unchanged else rematch).append(digest)
            for chunk in _chunks(confirm):
                connection.execute(
                    update(_reports)
                    .where(_reports.c.digest.in_(list(chunk)), _reports.c.generation == previous)
                    .values(generation=current)
                )
            if previous is not None:
                self._confirm_indexes(connection, previous, current, frozenset(rematch))
            for digest in rematch:
                repository = connection.execute(
                    select(_reports.c.repository).where(_reports.c.digest == digest)
                ).scalar_one()
                self._queue(connection, digest, repository, REMATCH, now)
        return GenerationChange(previous, current, tuple(rematch), len(confirm), len(candidates))

    @staticmethod
    def _confirm_indexes(
        connection: Connection, previous: str, current: str, rematch: frozenset[str]
    ) -> None:
        """Indexes none of whose children is re-matched keep their findings under `current`
        (the others are recomputed when their children's re-matches finish)."""
        indexes = connection.execute(
            select(_reports.c.digest, _reports.c.children).where(
                _reports.c.generation == previous,
                _reports.c.status == SUCCESS,
                _reports.c.children != "[]",
            )
        ).all()
        unaffected = [
            digest for digest, children in indexes if not rematch.intersection(json.loads(children))
        ]
        for chunk in _chunks(unaffected):
            connection.execute(
                update(_reports)
                .where(_reports.c.digest.in_(list(chunk)), _reports.c.generation == previous)
                .values(generation=current)
            )

    # -- scan everything

    def manifests_after(self, after: tuple[int, str] | None, limit: int) -> list[ManifestEntry]:
        """Manifests of every repository, in (repository id, digest) order, for paging."""
        query = (
            select(_rm.c.repository_id, _repos.c.name, _rm.c.digest, _manifests.c.media_type)
            .select_from(_rm.join(_repos, _repos.c.id == _rm.c.repository_id))
            .join(_manifests, _manifests.c.digest == _rm.c.digest)
            .order_by(_rm.c.repository_id, _rm.c.digest)
            .limit(limit)
        )
        if after is not None:
            query = query.where(
                or_(
                    _rm.c.repository_id > after[0],
                    and_(_rm.c.repository_id == after[0], _rm.c.digest > after[1]),
                )
            )
        with read_transaction(self._engine) as connection:
            return [ManifestEntry(*row) for row in connection.execute(query)]
