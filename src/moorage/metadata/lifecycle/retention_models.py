"""Retention tables: one policy per project, its runs, and every run's per-artifact decisions.

- `retention_policies`: the project's rules (JSON, as `domain.retention` validates them), an
  optional cron schedule and the next time it fires (moved forward by a conditional UPDATE:
  the process that moves it runs the policy, so one run per firing across a deployment).
- `retention_runs`: one evaluation, dry or real: who or what started it, the rules it used,
  counts, status. At most one run of a project is `running` at a time (a stale one, past its
  lease, no longer blocks).
- `retention_decisions`: one row per artifact of a run: kept (and by which rule or
  protection) or removed (or would be, in a dry run; or could not be, and why).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, DateTime, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from moorage.metadata.registry.models import Base, DigestString, NameString, utcnow


class RetentionPolicyRow(Base):
    __tablename__ = "retention_policies"

    project_id: Mapped[int] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True
    )
    rules: Mapped[str] = mapped_column(Text)  # JSON list of rule objects
    cron: Mapped[str | None] = mapped_column(String(100), nullable=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    next_run_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    updated_by: Mapped[str | None] = mapped_column(String(255), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (Index("ix_retention_policies_next_run", "next_run_at"),)


class RetentionRunRow(Base):
    __tablename__ = "retention_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    project: Mapped[str] = mapped_column(NameString)
    dry_run: Mapped[bool] = mapped_column(Boolean)
    trigger: Mapped[str] = mapped_column(String(16))  # manual | schedule
    requested_by: Mapped[str] = mapped_column(String(255))
    rules: Mapped[str] = mapped_column(Text)  # the rules this run evaluated (JSON)
    status: Mapped[str] = mapped_column(String(16))  # running | succeeded | failed | partial
    error: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    artifacts: Mapped[int] = mapped_column(BigInteger, default=0)
    kept: Mapped[int] = mapped_column(BigInteger, default=0)
    removed: Mapped[int] = mapped_column(BigInteger, default=0)
    failed: Mapped[int] = mapped_column(BigInteger, default=0)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    lease_expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    __table_args__ = (Index("ix_retention_runs_project", "project_id", "id"),)


class RetentionDecisionRow(Base):
    __tablename__ = "retention_decisions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("retention_runs.id", ondelete="CASCADE"))
    repository: Mapped[str] = mapped_column(NameString)
    digest: Mapped[str] = mapped_column(DigestString)
    tags: Mapped[str] = mapped_column(Text)  # JSON list
    # kept | removed | would-remove | failed | skipped (changed since it was evaluated)
    outcome: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(1000))
    rule: Mapped[int | None] = mapped_column(Integer, nullable=True)

    __table_args__ = (Index("ix_retention_decisions_run", "run_id", "id"),)
