"""SQL access for the replication queue: executions and their tasks. Synchronous.

Every method is one short transaction. Queue entries (unplanned executions, due tasks) are
claimed inside a write transaction with a conditional UPDATE whose row count says whether this
process won, so several processes can run the queue; a crashed worker's lease runs out and
another claims the entry again.

On PostgreSQL the queue methods hold the writers' lock shared (see `write_transaction`): claims
take rows `FOR UPDATE SKIP LOCKED`, and an execution's row is locked before its task counts are
read, so tasks finishing together on several nodes cannot leave a stale status. Locks are
always taken task first, then execution.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, and_, delete, func, insert, or_, select, update

from moorage.metadata.database import read_transaction, write_transaction
from moorage.metadata.distribution.replication_records import (
    FAILED,
    PARTIAL,
    PENDING,
    RUNNING,
    SUCCEEDED,
    CopyRecord,
    ExecutionRecord,
    TaskRecord,
    TaskSpec,
    task_record,
    utc,
)
from moorage.metadata.distribution.replication_records import copies_table as _copies
from moorage.metadata.distribution.replication_records import executions_table as _executions
from moorage.metadata.distribution.replication_records import tasks_table as _tasks
from moorage.metadata.registry.models import utcnow

_BATCH = 400


class ReplicationQueueStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    # -- executions

    def _insert_execution(
        self,
        connection: Connection,
        rule_id: int,
        trigger: str,
        triggered_by: str | None,
        tasks: Sequence[TaskSpec] | None,
    ) -> int:
        now = utcnow()
        planned = tasks is not None
        status = SUCCEEDED if planned and not tasks else PENDING
        result = connection.execute(
            insert(_executions).values(
                rule_id=rule_id,
                trigger=trigger,
                triggered_by=triggered_by,
                status=status,
                planned=planned,
                created_at=now,
                finished_at=now if status == SUCCEEDED else None,
            )
        )
        execution_id = int(result.inserted_primary_key[0])  # type: ignore[index]
        if tasks:
            self._insert_tasks(connection, execution_id, tasks, now)
        return execution_id

    @staticmethod
    def _insert_tasks(
        connection: Connection, execution_id: int, tasks: Sequence[TaskSpec], now: datetime
    ) -> None:
        rows = [
            {
                "execution_id": execution_id,
                "operation": spec.operation,
                "source": spec.source,
                "destination": spec.destination,
                "tag": spec.tag,
                "digest": spec.digest,
                "status": PENDING,
                "attempts": 0,
                "next_attempt_at": now,
                "bytes_copied": 0,
                "blobs_copied": 0,
                "blobs_skipped": 0,
                "referrers_copied": 0,
                "updated_at": now,
            }
            for spec in tasks
        ]
        for start in range(0, len(rows), _BATCH):
            connection.execute(insert(_tasks), rows[start : start + _BATCH])

    def create_execution(
        self,
        rule_id: int,
        trigger: str,
        triggered_by: str | None,
        tasks: Sequence[TaskSpec] | None = None,
    ) -> int:
        """Queue a run: with its tasks already known (`tasks`), or to be planned by a worker."""
        with write_transaction(self._engine, serialise_on=()) as connection:
            return self._insert_execution(connection, rule_id, trigger, triggered_by, tasks)

    def claim_unplanned(self, owner: str, lease_seconds: float) -> ExecutionRecord | None:
        now = utcnow()
        available = and_(
            _executions.c.planned.is_(False),
            _executions.c.status == PENDING,
            or_(_executions.c.lease_owner.is_(None), _executions.c.lease_expires_at < now),
        )
        with write_transaction(self._engine, serialise_on=()) as connection:
            row = connection.execute(
                select(_executions.c.id)
                .where(available)
                .order_by(_executions.c.id)
                .limit(1)
                .with_for_update(skip_locked=True)
            ).first()
            if row is None:
                return None
            won = connection.execute(
                update(_executions)
                .where(_executions.c.id == row.id, available)
                .values(lease_owner=owner, lease_expires_at=now + timedelta(seconds=lease_seconds))
            ).rowcount
            if not won:
                return None
            return self._execution(connection, row.id)

    def plan(self, execution_id: int, owner: str, tasks: Sequence[TaskSpec]) -> bool:
        now = utcnow()
        with write_transaction(self._engine, serialise_on=()) as connection:
            won = connection.execute(
                update(_executions)
                .where(_executions.c.id == execution_id, _executions.c.lease_owner == owner)
                .values(planned=True, lease_owner=None, lease_expires_at=None)
            ).rowcount
            if not won:
                return False
            self._insert_tasks(connection, execution_id, tasks, now)
            self._refresh(connection, execution_id)
        return True

    def fail_planning(self, execution_id: int, owner: str, message: str) -> None:
        with write_transaction(self._engine, serialise_on=()) as connection:
            connection.execute(
                update(_executions)
                .where(_executions.c.id == execution_id, _executions.c.lease_owner == owner)
                .values(
                    planned=True,
                    status=FAILED,
                    message=message[:2000],
                    lease_owner=None,
                    lease_expires_at=None,
                    finished_at=utcnow(),
                )
            )

    def _counts(self, connection: Connection, execution_id: int) -> dict[str, int]:
        rows = connection.execute(
            select(_tasks.c.status, func.count())
            .where(_tasks.c.execution_id == execution_id)
            .group_by(_tasks.c.status)
        ).all()
        counts = {PENDING: 0, RUNNING: 0, SUCCEEDED: 0, FAILED: 0}
        for status, count in rows:
            counts[status] = int(count)
        return counts

    def _refresh(self, connection: Connection, execution_id: int) -> None:
        from moorage.domain.replication import execution_status

        # The row lock orders concurrent refreshes of one execution (PostgreSQL; no-op on
        # SQLite): the counts below are read after the previous refresher committed.
        connection.execute(
            select(_executions.c.id).where(_executions.c.id == execution_id).with_for_update()
        )
        counts = self._counts(connection, execution_id)
        status = execution_status(
            counts[PENDING], counts[RUNNING], counts[SUCCEEDED], counts[FAILED]
        )
        finished = status in (SUCCEEDED, FAILED, PARTIAL)
        connection.execute(
            update(_executions)
            .where(_executions.c.id == execution_id, _executions.c.planned.is_(True))
            .values(status=status, finished_at=utcnow() if finished else None)
        )

    def _execution(self, connection: Connection, execution_id: int) -> ExecutionRecord | None:
        row = connection.execute(
            select(_executions).where(_executions.c.id == execution_id)
        ).first()
        if row is None:
            return None
        return ExecutionRecord(
            row.id,
            row.rule_id,
            row.trigger,
            row.triggered_by,
            row.status,
            row.planned,
            row.message,
            utc(row.created_at) or utcnow(),
            utc(row.finished_at),
            self._counts(connection, row.id),
        )

    def execution(self, execution_id: int) -> ExecutionRecord | None:
        with read_transaction(self._engine) as connection:
            return self._execution(connection, execution_id)

    def executions(self, rule_id: int, before: int | None, limit: int) -> list[ExecutionRecord]:
        query = select(_executions.c.id).where(_executions.c.rule_id == rule_id)
        if before is not None:
            query = query.where(_executions.c.id < before)
        with read_transaction(self._engine) as connection:
            ids = connection.execute(query.order_by(_executions.c.id.desc()).limit(limit)).all()
            found = [self._execution(connection, row.id) for row in ids]
        return [record for record in found if record is not None]

    # -- tasks

    def tasks(self, execution_id: int, after: int | None, limit: int) -> list[TaskRecord]:
        query = select(_tasks).where(_tasks.c.execution_id == execution_id)
        if after is not None:
            query = query.where(_tasks.c.id > after)
        with read_transaction(self._engine) as connection:
            rows = connection.execute(query.order_by(_tasks.c.id).limit(limit)).all()
        return [task_record(row) for row in rows]

    def claim_task(self, owner: str, lease_seconds: float) -> tuple[TaskRecord, int] | None:
        """Lease the oldest due task; (task, rule id)."""
        now = utcnow()
        available = or_(
            and_(_tasks.c.status == PENDING, _tasks.c.next_attempt_at <= now),
            and_(_tasks.c.status == RUNNING, _tasks.c.lease_expires_at < now),
        )
        with write_transaction(self._engine, serialise_on=()) as connection:
            row = connection.execute(
                select(_tasks.c.id, _tasks.c.execution_id)
                .where(available)
                .order_by(_tasks.c.next_attempt_at, _tasks.c.id)
                .limit(1)
                .with_for_update(skip_locked=True)
            ).first()
            if row is None:
                return None
            won = connection.execute(
                update(_tasks)
                .where(_tasks.c.id == row.id, available)
                .values(
                    status=RUNNING,
                    lease_owner=owner,
                    lease_expires_at=now + timedelta(seconds=lease_seconds),
                    attempts=_tasks.c.attempts + 1,
                    updated_at=now,
                )
            ).rowcount
            if not won:
                return None
            self._refresh(connection, row.execution_id)
            task = connection.execute(select(_tasks).where(_tasks.c.id == row.id)).one()
            rule_id = connection.execute(
                select(_executions.c.rule_id).where(_executions.c.id == row.execution_id)
            ).scalar_one()
        return task_record(task), int(rule_id)

    def renew_task(self, task_id: int, owner: str, lease_seconds: float) -> bool:
        with write_transaction(self._engine, serialise_on=()) as connection:
            return bool(
                connection.execute(
                    update(_tasks)
                    .where(_tasks.c.id == task_id, _tasks.c.lease_owner == owner)
                    .values(lease_expires_at=utcnow() + timedelta(seconds=lease_seconds))
                ).rowcount
            )

    def finish_task(
        self,
        task: TaskRecord,
        owner: str,
        *,
        error: str | None,
        retry_at: datetime | None,
        progress: dict[str, int],
        digest: str | None = None,
    ) -> None:
        """Record an attempt: succeeded (`error` None), retried at `retry_at`, or failed."""
        now = utcnow()
        if error is None:
            values: dict[str, object] = {"status": SUCCEEDED, "error": None, "finished_at": now}
        elif retry_at is not None:
            values = {"status": PENDING, "error": error[:2000], "next_attempt_at": retry_at}
        else:
            values = {"status": FAILED, "error": error[:2000], "finished_at": now}
        if digest is not None:
            values["digest"] = digest
        with write_transaction(self._engine, serialise_on=()) as connection:
            won = connection.execute(
                update(_tasks)
                .where(_tasks.c.id == task.id, _tasks.c.lease_owner == owner)
                .values(
                    **values,
                    **progress,
                    lease_owner=None,
                    lease_expires_at=None,
                    updated_at=now,
                )
            ).rowcount
            if won:
                self._refresh(connection, task.execution_id)

    def release_task(self, task: TaskRecord, owner: str) -> None:
        """Give a task back unfinished (the process is stopping); the attempt does not count."""
        with write_transaction(self._engine, serialise_on=()) as connection:
            won = connection.execute(
                update(_tasks)
                .where(_tasks.c.id == task.id, _tasks.c.lease_owner == owner)
                .values(
                    status=PENDING,
                    lease_owner=None,
                    lease_expires_at=None,
                    attempts=task.attempts - 1,
                )
            ).rowcount
            if won:
                self._refresh(connection, task.execution_id)

    # -- what rules put at their targets

    def record_copies(
        self, rule_id: int, source: str, destination: str, tags: Sequence[tuple[str, str]]
    ) -> None:
        """Remember that the rule put `tags` (tag, digest) at `destination`."""
        if not tags:
            return
        now = utcnow()
        with write_transaction(self._engine) as connection:
            for tag, digest in dict(tags).items():
                where = and_(
                    _copies.c.rule_id == rule_id,
                    _copies.c.destination == destination,
                    _copies.c.tag == tag,
                )
                changed = connection.execute(
                    update(_copies)
                    .where(where)
                    .values(source=source, digest=digest, updated_at=now)
                ).rowcount
                if not changed:
                    connection.execute(
                        insert(_copies).values(
                            rule_id=rule_id,
                            source=source,
                            destination=destination,
                            tag=tag,
                            digest=digest,
                            updated_at=now,
                        )
                    )

    def copies(self, rule_id: int, limit: int) -> list[CopyRecord]:
        with read_transaction(self._engine) as connection:
            rows = connection.execute(
                select(_copies)
                .where(_copies.c.rule_id == rule_id)
                .order_by(_copies.c.id)
                .limit(limit)
            ).all()
        return [CopyRecord(r.rule_id, r.source, r.destination, r.tag, r.digest) for r in rows]

    def copies_from(self, rule_id: int, source: str, limit: int) -> list[CopyRecord]:
        """What the rule copied from the local repository `source`."""
        with read_transaction(self._engine) as connection:
            rows = connection.execute(
                select(_copies)
                .where(_copies.c.rule_id == rule_id, _copies.c.source == source)
                .order_by(_copies.c.id)
                .limit(limit)
            ).all()
        return [CopyRecord(r.rule_id, r.source, r.destination, r.tag, r.digest) for r in rows]

    def forget_copy(self, rule_id: int, destination: str, tag: str) -> None:
        with write_transaction(self._engine) as connection:
            connection.execute(
                delete(_copies).where(
                    _copies.c.rule_id == rule_id,
                    _copies.c.destination == destination,
                    _copies.c.tag == tag,
                )
            )
