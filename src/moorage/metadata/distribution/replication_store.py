"""SQL access for replication: endpoints and rules (the queue in `replication_queue_store`).

Every method is one short transaction. Queue entries (unplanned executions, due tasks) are
claimed inside a write transaction with a conditional UPDATE whose row count says whether this
process won, so several processes can run the queue; a crashed worker's lease runs out and
another claims the entry again.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, delete, insert, select, update

from moorage.metadata.database import read_transaction, write_transaction
from moorage.metadata.distribution.replication_queue_store import ReplicationQueueStore
from moorage.metadata.distribution.replication_records import (
    FAILED,
    PARTIAL,
    PENDING,
    RUNNING,
    SUCCEEDED,
    CopyRecord,
    DuplicateNameError,
    EndpointRecord,
    ExecutionRecord,
    InUseError,
    RuleRecord,
    TaskRecord,
    TaskSpec,
    endpoint_record,
    rule_record,
)
from moorage.metadata.distribution.replication_records import copies_table as _copies
from moorage.metadata.distribution.replication_records import endpoints_table as _endpoints
from moorage.metadata.distribution.replication_records import executions_table as _executions
from moorage.metadata.distribution.replication_records import rules_table as _rules
from moorage.metadata.distribution.replication_records import tasks_table as _tasks
from moorage.metadata.registry.models import utcnow

__all__ = [
    "FAILED",
    "PARTIAL",
    "PENDING",
    "RUNNING",
    "SUCCEEDED",
    "CopyRecord",
    "DuplicateNameError",
    "EndpointRecord",
    "ExecutionRecord",
    "InUseError",
    "ReplicationStore",
    "RuleRecord",
    "TaskRecord",
    "TaskSpec",
]


class ReplicationStore(ReplicationQueueStore):
    """Endpoints and rules; the queue's methods come from `ReplicationQueueStore`."""

    # -- endpoints

    def endpoints(self) -> list[EndpointRecord]:
        with read_transaction(self._engine) as connection:
            rows = connection.execute(select(_endpoints).order_by(_endpoints.c.name)).all()
        return [endpoint_record(row) for row in rows]

    def endpoint(self, endpoint_id: int) -> EndpointRecord | None:
        with read_transaction(self._engine) as connection:
            row = connection.execute(
                select(_endpoints).where(_endpoints.c.id == endpoint_id)
            ).first()
        return endpoint_record(row) if row is not None else None

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
        return endpoint_record(row)

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
        return [rule_record(row) for row in rows]

    def rule(self, rule_id: int) -> RuleRecord | None:
        with read_transaction(self._engine) as connection:
            row = connection.execute(select(_rules).where(_rules.c.id == rule_id)).first()
        return rule_record(row) if row is not None else None

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
        return rule_record(row)

    def delete_rule(self, rule_id: int) -> bool:
        with write_transaction(self._engine) as connection:
            executions = select(_executions.c.id).where(_executions.c.rule_id == rule_id)
            connection.execute(delete(_tasks).where(_tasks.c.execution_id.in_(executions)))
            connection.execute(delete(_executions).where(_executions.c.rule_id == rule_id))
            connection.execute(delete(_copies).where(_copies.c.rule_id == rule_id))
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
        return [rule_record(row) for row in rows]

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
