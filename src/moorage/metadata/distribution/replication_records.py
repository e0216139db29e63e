"""Records of replication as the stores return them, and the rows they are read from."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import Table

from moorage.metadata.distribution.replication_models import (
    ReplicationCopyRow,
    ReplicationEndpointRow,
    ReplicationExecutionRow,
    ReplicationRuleRow,
    ReplicationTaskRow,
)
from moorage.metadata.registry.models import utcnow

endpoints_table: Table = ReplicationEndpointRow.__table__  # type: ignore[assignment]
rules_table: Table = ReplicationRuleRow.__table__  # type: ignore[assignment]
executions_table: Table = ReplicationExecutionRow.__table__  # type: ignore[assignment]
tasks_table: Table = ReplicationTaskRow.__table__  # type: ignore[assignment]
copies_table: Table = ReplicationCopyRow.__table__  # type: ignore[assignment]

PENDING: Final = "pending"
RUNNING: Final = "running"
SUCCEEDED: Final = "succeeded"
FAILED: Final = "failed"
PARTIAL: Final = "partial"
_BATCH: Final = 400


def utc(moment: datetime | None) -> datetime | None:
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
    mirror_deletions: bool = False


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
    referrers_copied: int = 0


@dataclass(frozen=True, slots=True)
class CopyRecord:
    """A tag a rule put at its target, and the digest it put there."""

    rule_id: int
    source: str
    destination: str
    tag: str
    digest: str


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


def endpoint_record(row: Any) -> EndpointRecord:
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
        utc(row.updated_at) or utcnow(),
    )


def rule_record(row: Any) -> RuleRecord:
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
        utc(row.next_run_at),
        row.updated_by,
        utc(row.updated_at) or utcnow(),
        row.mirror_deletions,
    )


def task_record(row: Any) -> TaskRecord:
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
        utc(row.next_attempt_at) or utcnow(),
        row.error,
        row.bytes_copied,
        row.blobs_copied,
        row.blobs_skipped,
        utc(row.updated_at) or utcnow(),
        utc(row.finished_at),
        row.referrers_copied,
    )
