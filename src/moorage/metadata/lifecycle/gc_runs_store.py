"""The history of garbage collection runs, and which run may work now.

A run is 'running' while its heartbeat is fresh; one whose node died (no heartbeat for the
lease) is 'interrupted' once another run starts, and can be resumed from its phase and cursor.
Only one run works at a time in the whole deployment: starting checks and inserts in one
write transaction serialised on the collection's key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, Row, Table, select, update

from moorage.metadata.database import single_read, write_transaction
from moorage.metadata.lifecycle.gc_models import GcRunRow
from moorage.metadata.lifecycle.gc_store import GC_KEY
from moorage.metadata.registry.models import utcnow

_runs: Table = GcRunRow.__table__  # type: ignore[assignment]

RUNNING = "running"
FINISHED = "finished"
STOPPED = "stopped"
FAILED = "failed"
INTERRUPTED = "interrupted"


@dataclass(frozen=True, slots=True)
class NewRun:
    id: str
    dry_run: bool
    delete_untagged: bool
    grace_seconds: int
    trigger: str
    requested_by: str
    node: str
    resumed_from: str | None = None
    phase: str = "start"
    cursor: str | None = None
    counts: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class GcRun:
    id: str
    status: str
    dry_run: bool
    delete_untagged: bool
    grace_seconds: int
    trigger: str
    requested_by: str
    node: str | None
    phase: str
    cursor: str | None
    resumed_from: str | None
    stop_requested: bool
    counts: dict[str, int]
    error: str | None
    started_at: datetime
    heartbeat_at: datetime
    finished_at: datetime | None


class RunBusyError(Exception):
    def __init__(self, run: GcRun) -> None:
        self.run = run
        super().__init__(f"garbage collection {run.id} is running on {run.node}")


class RunLostError(Exception):
    """This run was declared interrupted by another (its heartbeat had run out)."""


class GcRunsStore:
    def __init__(self, engine: Engine, lease: timedelta) -> None:
        self._engine = engine
        self._lease = lease

    def start(self, new: NewRun) -> GcRun:
        """Record a run as running; RunBusyError when another one is (its heartbeat is fresh).
        Runs whose heartbeat ran out are marked interrupted first."""
        now = utcnow()
        with write_transaction(self._engine, serialise_on=[GC_KEY]) as connection:
            running = connection.execute(
                select(_runs).where(_runs.c.status == RUNNING).order_by(_runs.c.started_at)
            ).all()
            for row in running:
                if _aware(row.heartbeat_at) > now - self._lease:
                    raise RunBusyError(_run(row))
                connection.execute(
                    update(_runs)
                    .where(_runs.c.id == row.id)
                    .values(status=INTERRUPTED, finished_at=now, error="its node stopped")
                )
            connection.execute(
                _runs.insert().values(
                    id=new.id,
                    status=RUNNING,
                    dry_run=new.dry_run,
                    delete_untagged=new.delete_untagged,
                    grace_seconds=new.grace_seconds,
                    trigger=new.trigger,
                    requested_by=new.requested_by,
                    node=new.node,
                    phase=new.phase,
                    cursor=new.cursor,
                    resumed_from=new.resumed_from,
                    stop_requested=False,
                    counts=json.dumps(new.counts, sort_keys=True),
                    started_at=now,
                    heartbeat_at=now,
                )
            )
            row = connection.execute(select(_runs).where(_runs.c.id == new.id)).one()
        return _run(row)

    def progress(self, run_id: str, phase: str, cursor: str | None, counts: dict[str, int]) -> bool:
        """Record where the run is and beat its heart; whether a stop was requested.

        RunLostError when the run no longer counts as running: another run found its heartbeat
        too old and took over, so this one must not delete anything more.
        """
        with write_transaction(self._engine, serialise_on=[GC_KEY]) as connection:
            beat = connection.execute(
                update(_runs)
                .where(_runs.c.id == run_id, _runs.c.status == RUNNING)
                .values(
                    phase=phase,
                    cursor=cursor,
                    counts=json.dumps(counts, sort_keys=True),
                    heartbeat_at=utcnow(),
                )
            )
            if beat.rowcount == 0:
                raise RunLostError(run_id)
            stop = connection.execute(
                select(_runs.c.stop_requested).where(_runs.c.id == run_id)
            ).scalar()
        return bool(stop)

    def check(self, run_id: str) -> bool:
        """Whether a stop was requested (a read: no write lock); RunLostError when the run no
        longer counts as running (see `progress`)."""
        with single_read(self._engine) as connection:
            row = connection.execute(
                select(_runs.c.status, _runs.c.stop_requested).where(_runs.c.id == run_id)
            ).first()
        if row is None or row.status != RUNNING:
            raise RunLostError(run_id)
        return bool(row.stop_requested)

    def finish(
        self, run_id: str, status: str, counts: dict[str, int], error: str | None = None
    ) -> None:
        now = utcnow()
        with write_transaction(self._engine, serialise_on=[GC_KEY]) as connection:
            connection.execute(
                update(_runs)
                .where(_runs.c.id == run_id)
                .values(
                    status=status,
                    counts=json.dumps(counts, sort_keys=True),
                    error=error,
                    heartbeat_at=now,
                    finished_at=now,
                )
            )

    def request_stop(self, run_id: str) -> GcRun | None:
        with write_transaction(self._engine, serialise_on=[GC_KEY]) as connection:
            connection.execute(
                update(_runs)
                .where(_runs.c.id == run_id, _runs.c.status == RUNNING)
                .values(stop_requested=True)
            )
            row = connection.execute(select(_runs).where(_runs.c.id == run_id)).first()
        return None if row is None else _run(row)

    def run(self, run_id: str) -> GcRun | None:
        with single_read(self._engine) as connection:
            row = connection.execute(select(_runs).where(_runs.c.id == run_id)).first()
        return None if row is None else _run(row)

    def runs(self, limit: int, before: datetime | None = None) -> list[GcRun]:
        """Newest first."""
        query = select(_runs).order_by(_runs.c.started_at.desc(), _runs.c.id.desc())
        if before is not None:
            query = query.where(_runs.c.started_at < before)
        with single_read(self._engine) as connection:
            return [_run(row) for row in connection.execute(query.limit(limit)).all()]

    def alive(self) -> list[str]:
        """Ids of the runs that may still be deleting (running, heartbeat fresh)."""
        now = utcnow()
        with single_read(self._engine) as connection:
            rows = connection.execute(
                select(_runs.c.id, _runs.c.heartbeat_at).where(_runs.c.status == RUNNING)
            ).all()
        return [row.id for row in rows if _aware(row.heartbeat_at) > now - self._lease]

    def is_running(self) -> GcRun | None:
        """The run working now (heartbeat fresh), if any."""
        now = utcnow()
        with single_read(self._engine) as connection:
            rows = connection.execute(select(_runs).where(_runs.c.status == RUNNING)).all()
        for row in rows:
            if _aware(row.heartbeat_at) > now - self._lease:
                return _run(row)
        return None


def _aware(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; every value stored is UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _run(row: Row[tuple[object, ...]]) -> GcRun:
    finished = row.finished_at
    return GcRun(
        id=row.id,
        status=row.status,
        dry_run=bool(row.dry_run),
        delete_untagged=bool(row.delete_untagged),
        grace_seconds=int(row.grace_seconds),
        trigger=row.trigger,
        requested_by=row.requested_by,
        node=row.node,
        phase=row.phase,
        cursor=row.cursor,
        resumed_from=row.resumed_from,
        stop_requested=bool(row.stop_requested),
        counts={key: int(value) for key, value in json.loads(row.counts).items()},
        error=row.error,
        started_at=_aware(row.started_at),
        heartbeat_at=_aware(row.heartbeat_at),
        finished_at=_aware(finished) if finished is not None else None,
    )
