"""Tables of replication: remote registries, rules, and the execution history that doubles as
the job queue.

- `replication_endpoints`: a remote registry (URL, kind, TLS, SSRF setting) and its sealed
  credential (AES-GCM under a server secret, bound to the row id).
- `replication_rules`: what to copy where, and when (`next_run_at` for scheduled rules; the
  process that moves it forward with a conditional UPDATE starts the run).
- `replication_executions`: one run of a rule. `planned` is false until a worker has listed
  what the run covers (it leases the execution to do so).
- `replication_tasks`: one artifact (repository + tag or digest) to copy or delete: the leased
  queue entries. A failed attempt sets `next_attempt_at` after a back-off until the attempts
  run out.
- `replication_copies`: what a rule put at its target (destination repository, tag, digest):
  mirrored deletions remove only these.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import Mapped, mapped_column

from moorage.metadata.registry.models import Base, DigestString, NameString, utcnow

LeaseOwner = String(128)


class ReplicationEndpointRow(Base):
    __tablename__ = "replication_endpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    url: Mapped[str] = mapped_column(String(2048))
    kind: Mapped[str] = mapped_column(String(16))  # moorage | distribution | oci
    username: Mapped[str | None] = mapped_column(String(255), nullable=True)
    credential_kind: Mapped[str] = mapped_column(String(16))  # none | password | token
    credential: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    ca_bundle: Mapped[str | None] = mapped_column(Text, nullable=True)
    verify_tls: Mapped[bool] = mapped_column(Boolean, default=True)
    allow_private_network: Mapped[bool] = mapped_column(Boolean, default=False)
    timeout_seconds: Mapped[int] = mapped_column(Integer)
    updated_by: Mapped[str | None] = mapped_column(String(255), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ReplicationRuleRow(Base):
    __tablename__ = "replication_rules"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    endpoint_id: Mapped[int] = mapped_column(
        ForeignKey("replication_endpoints.id", ondelete="RESTRICT")
    )
    direction: Mapped[str] = mapped_column(String(8))  # push | pull
    filters: Mapped[str] = mapped_column(Text)  # JSON: repositories/tags include and exclude
    destination_prefix: Mapped[str | None] = mapped_column(NameString, nullable=True)
    strip_segments: Mapped[int] = mapped_column(Integer, default=0)
    trigger: Mapped[str] = mapped_column(String(16))  # manual | event | schedule
    interval_seconds: Mapped[int | None] = mapped_column(Integer, nullable=True)
    cron: Mapped[str | None] = mapped_column(String(100), nullable=True)
    replicate_deletions: Mapped[bool] = mapped_column(Boolean, default=False)
    mirror_deletions: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    next_run_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    updated_by: Mapped[str | None] = mapped_column(String(255), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (Index("ix_replication_rules_next_run_at", "next_run_at"),)


class ReplicationExecutionRow(Base):
    __tablename__ = "replication_executions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    rule_id: Mapped[int] = mapped_column(ForeignKey("replication_rules.id", ondelete="CASCADE"))
    trigger: Mapped[str] = mapped_column(String(16))  # manual | event | schedule
    triggered_by: Mapped[str | None] = mapped_column(String(255), nullable=True)
    status: Mapped[str] = mapped_column(String(16))  # pending|running|succeeded|failed|partial
    planned: Mapped[bool] = mapped_column(Boolean, default=False)
    lease_owner: Mapped[str | None] = mapped_column(LeaseOwner, nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True
    )
    message: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    __table_args__ = (
        Index("ix_replication_executions_rule", "rule_id", "id"),
        Index("ix_replication_executions_planned", "planned", "status"),
    )


class ReplicationTaskRow(Base):
    __tablename__ = "replication_tasks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    execution_id: Mapped[int] = mapped_column(
        ForeignKey("replication_executions.id", ondelete="CASCADE")
    )
    operation: Mapped[str] = mapped_column(String(16))  # copy | delete
    source: Mapped[str] = mapped_column(NameString)
    destination: Mapped[str] = mapped_column(NameString)
    tag: Mapped[str | None] = mapped_column(String(128), nullable=True)
    digest: Mapped[str | None] = mapped_column(DigestString, nullable=True)
    status: Mapped[str] = mapped_column(String(16))  # pending | running | succeeded | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(LeaseOwner, nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True
    )
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    bytes_copied: Mapped[int] = mapped_column(BigInteger, default=0)
    blobs_copied: Mapped[int] = mapped_column(Integer, default=0)
    blobs_skipped: Mapped[int] = mapped_column(Integer, default=0)
    referrers_copied: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    __table_args__ = (
        Index("ix_replication_tasks_execution", "execution_id", "id"),
        Index("ix_replication_tasks_due", "status", "next_attempt_at"),
    )


class ReplicationCopyRow(Base):
    __tablename__ = "replication_copies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    rule_id: Mapped[int] = mapped_column(ForeignKey("replication_rules.id", ondelete="CASCADE"))
    source: Mapped[str] = mapped_column(NameString)
    destination: Mapped[str] = mapped_column(NameString)
    tag: Mapped[str] = mapped_column(String(128))
    digest: Mapped[str] = mapped_column(DigestString)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (
        UniqueConstraint("rule_id", "destination", "tag", name="uq_replication_copies_target"),
        Index("ix_replication_copies_rule", "rule_id", "id"),
    )
