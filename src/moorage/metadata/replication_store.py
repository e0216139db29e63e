"""SQL access for replication: endpoints, rules, executions and the task queue. Synchronous.

Every method is one short transaction. Queue entries (unplanned executions, due tasks) are
claimed inside a write transaction with a conditional UPDATE whose row count says whether this
process won, so several processes can run the queue; a crashed worker's lease runs out and
another claims the entry again.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from sqlalchemy import Connection, Engine, Table, and_, delete, func, insert, or_, select, update

from moorage.metadata.database import read_transaction, write_transaction
from moorage.metadata.models import utcnow
from moorage.metadata.replication_models import (
    ReplicationEndpointRow,
    ReplicationExecutionRow,
    ReplicationRuleRow,
    ReplicationTaskRow,
)

_endpoints: Table = ReplicationEndpointRow.__table__  # type: ignore[assignment]
_rules: Table = ReplicationRuleRow.__table__  # type: ignore[assignment]
_executions: Table = ReplicationExecutionRow.__table__  # type: ignore[assignment]
_tasks: Table = ReplicationTaskRow.__table__  # type: ignore[assignment]

PENDING: Final = "pending"
RUNNING: Final = "running"
SUCCEEDED: Final = "succeeded"
FAILED: Final = "failed"
PARTIAL: Final = "partial"
_BATCH: Final = 400


def _utc(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


class InUseError(Exception):
    """The endpoint is still used by rules."""


class DuplicateNameError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class EndpointRecord:
    id: int
    name: str
    url: str
    kind: str
    username: str | None
    credential_kind: str
    credential: bytes | None
    ca_bundle: str | None
    verify_tls: bool
    allow_private_network: bool
    timeout_seconds: int
    updated_by: str | None
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class RuleRecord:
    id: int
    name: str
    endpoint_id: int
    direction: str
    filters: dict[str, list[str]]
    destination_prefix: str | None
    strip_segments: int
    trigger: str
    interval_seconds: int | None
    cron: str | None
    replicate_deletions: bool
    enabled: bool
    next_run_at: datetime | None
    updated_by: str | None
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class TaskSpec:
    operation: str  # copy | delete
    source: str
    destination: str
    tag: str | None
    digest: str | None


@dataclass(frozen=True, slots=True)
class TaskRecord:
    id: int
    execution_id: int
    operation: str
    source: str
    destination: str
    tag: str | None
    digest: str | None
    status: str
    attempts: int
    next_attempt_at: datetime
    error: str | None
    bytes_copied: int
    blobs_copied: int
    blobs_skipped: int
    updated_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class ExecutionRecord:
    id: int
    rule_id: int
    trigger: str
    triggered_by: str | None
    status: str
    planned: bool
    message: str | None
    created_at: datetime
    finished_at: datetime | None
    counts: dict[str, int]


def _endpoint(row: Any) -> EndpointRecord:
    return EndpointRecord(
        row.id,
        row.name,
        row.url,
        row.kind,
        row.username,
        row.credential_kind,
        row.credential,
        row.ca_bundle,
        row.verify_tls,
        row.allow_private_network,
        row.timeout_seconds,
        row.updated_by,
        _utc(row.updated_at) or utcnow(),
    )


def _rule(row: Any) -> RuleRecord:
    return RuleRecord(
        row.id,
        row.name,
        row.endpoint_id,
        row.direction,
        json.loads(row.filters),
        row.destination_prefix,
        row.strip_segments,
        row.trigger,
        row.interval_seconds,
        row.cron,
        row.replicate_deletions,
        row.enabled,
        _utc(row.next_run_at),
        row.updated_by,
        _utc(row.updated_at) or utcnow(),
    )


def _task(row: Any) -> TaskRecord:
    return TaskRecord(
        row.id,
        row.execution_id,
        row.operation,
        row.source,
        row.destination,
        row.tag,
        row.digest,
        row.status,
        row.attempts,
        _utc(row.next_attempt_at) or utcnow(),
        row.error,
        row.bytes_copied,
        row.blobs_copied,
        row.blobs_skipped,
        _utc(row.updated_at) or utcnow(),
        _utc(row.finished_at),
    )


class ReplicationStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    # -- endpoints

    def endpoints(self) -> list[EndpointRecord]:
        with read_transaction(self._engine) as connection:
            rows = connection.execute(select(_endpoints).order_by(_endpoints.c.name)).all()
        return [_endpoint(row) for row in rows]

    def endpoint(self, endpoint_id: int) -> EndpointRecord | None:
        with read_transaction(self._engine) as connection:
            row = connection.execute(
                select(_endpoints).where(_endpoints.c.id == endpoint_id)
            ).first()
        return _endpoint(row) if row is not None else None

    def _name_taken(
        self, connection: Connection, table: Table, name: str, own_id: int | None
    ) -> bool:
        row = connection.execute(select(table.c.id).where(table.c.name == name)).first()
        return row is not None and row.id != own_id

    def save_endpoint(
        self,
        endpoint_id: int | None,
        values: dict[str, object],
        seal: Callable[[int], bytes | None] | None,
    ) -> EndpointRecord:
        """Create (`endpoint_id` None) or replace an endpoint. `seal(id)` returns the sealed
        credential to store (it is bound to the row id); None keeps the stored one."""
        with write_transaction(self._engine) as connection:
            if self._name_taken(connection, _endpoints, str(values["name"]), endpoint_id):
                raise DuplicateNameError(values["name"])
            values = {**values, "updated_at": utcnow()}
            if endpoint_id is None:
                result = connection.execute(
                    insert(_endpoints).values(
                        **{"credential_kind": "none", **values, "credential": None}
                    )
                )
                endpoint_id = int(result.inserted_primary_key[0])  # type: ignore[index]
            else:
                connection.execute(
                    update(_endpoints).where(_endpoints.c.id == endpoint_id).values(**values)
                )
            if seal is not None:
                connection.execute(
                    update(_endpoints)
                    .where(_endpoints.c.id == endpoint_id)
                    .values(credential=seal(endpoint_id))
                )
            row = connection.execute(select(_endpoints).where(_endpoints.c.id == endpoint_id)).one()
        return _endpoint(row)

    def delete_endpoint(self, endpoint_id: int) -> bool:
        with write_transaction(self._engine) as connection:
            used = connection.execute(
                select(_rules.c.name).where(_rules.c.endpoint_id == endpoint_id).limit(1)
            ).first()
            if used is not None:
                raise InUseError(used.name)
            return bool(
                connection.execute(
                    delete(_endpoints).where(_endpoints.c.id == endpoint_id)
                ).rowcount
            )

    # -- rules

    def rules(self, enabled_only: bool = False) -> list[RuleRecord]:
        query = select(_rules).order_by(_rules.c.name)
        if enabled_only:
            query = query.where(_rules.c.enabled.is_(True))
        with read_transaction(self._engine) as connection:
            rows = connection.execute(query).all()
        return [_rule(row) for row in rows]

    def rule(self, rule_id: int) -> RuleRecord | None:
        with read_transaction(self._engine) as connection:
            row = connection.execute(select(_rules).where(_rules.c.id == rule_id)).first()
        return _rule(row) if row is not None else None

    def save_rule(self, rule_id: int | None, values: dict[str, Any]) -> RuleRecord:
        values = {**values, "filters": json.dumps(values["filters"]), "updated_at": utcnow()}
        with write_transaction(self._engine) as connection:
            if self._name_taken(connection, _rules, str(values["name"]), rule_id):
                raise DuplicateNameError(values["name"])
            if rule_id is None:
                result = connection.execute(insert(_rules).values(**values))
                rule_id = int(result.inserted_primary_key[0])  # type: ignore[index]
            else:
                connection.execute(update(_rules).where(_rules.c.id == rule_id).values(**values))
            row = connection.execute(select(_rules).where(_rules.c.id == rule_id)).one()
        return _rule(row)

    def delete_rule(self, rule_id: int) -> bool:
        with write_transaction(self._engine) as connection:
            executions = select(_executions.c.id).where(_executions.c.rule_id == rule_id)
            connection.execute(delete(_tasks).where(_tasks.c.execution_id.in_(executions)))
            connection.execute(delete(_executions).where(_executions.c.rule_id == rule_id))
            return bool(connection.execute(delete(_rules).where(_rules.c.id == rule_id)).rowcount)

    def due_rules(self, now: datetime) -> list[RuleRecord]:
        with read_transaction(self._engine) as connection:
            rows = connection.execute(
                select(_rules).where(
                    _rules.c.enabled.is_(True),
                    _rules.c.trigger == "schedule",
                    _rules.c.next_run_at.is_not(None),
                    _rules.c.next_run_at <= now,
                )
            ).all()
        return [_rule(row) for row in rows]

    def start_scheduled_run(
        self, rule: RuleRecord, next_run_at: datetime, owner: str
    ) -> int | None:
        """Move the rule's next run forward and queue an execution, if no other process did
        it first; the execution's id, or None."""
        with write_transaction(self._engine) as connection:
            won = connection.execute(
                update(_rules)
                .where(_rules.c.id == rule.id, _rules.c.next_run_at == rule.next_run_at)
                .values(next_run_at=next_run_at)
            ).rowcount
            if not won:
                return None
            return self._insert_execution(connection, rule.id, "schedule", owner, None)

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
        with write_transaction(self._engine) as connection:
            return self._insert_execution(connection, rule_id, trigger, triggered_by, tasks)

    def claim_unplanned(self, owner: str, lease_seconds: float) -> ExecutionRecord | None:
        now = utcnow()
        available = and_(
            _executions.c.planned.is_(False),
            _executions.c.status == PENDING,
            or_(_executions.c.lease_owner.is_(None), _executions.c.lease_expires_at < now),
        )
        with write_transaction(self._engine) as connection:
            row = connection.execute(
                select(_executions.c.id).where(available).order_by(_executions.c.id).limit(1)
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
        with write_transaction(self._engine) as connection:
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
        with write_transaction(self._engine) as connection:
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
            _utc(row.created_at) or utcnow(),
            _utc(row.finished_at),
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
        return [_task(row) for row in rows]

    def claim_task(self, owner: str, lease_seconds: float) -> tuple[TaskRecord, int] | None:
        """Lease the oldest due task; (task, rule id)."""
        now = utcnow()
        available = or_(
            and_(_tasks.c.status == PENDING, _tasks.c.next_attempt_at <= now),
            and_(_tasks.c.status == RUNNING, _tasks.c.lease_expires_at < now),
        )
        with write_transaction(self._engine) as connection:
            row = connection.execute(
                select(_tasks.c.id, _tasks.c.execution_id)
                .where(available)
                .order_by(_tasks.c.next_attempt_at, _tasks.c.id)
                .limit(1)
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
        return _task(task), int(rule_id)

    def renew_task(self, task_id: int, owner: str, lease_seconds: float) -> bool:
        with write_transaction(self._engine) as connection:
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
        with write_transaction(self._engine) as connection:
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
        with write_transaction(self._engine) as connection:
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
