"""The history of garbage collection runs (migration 0018).

One row per run: its options, where it is (phase and cursor, so a stopped or interrupted run
can be resumed), a heartbeat (a run whose node died stops counting as running), and what it
found and freed (`counts`, a JSON object).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, DateTime, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from moorage.metadata.registry.models import Base


class GcRunRow(Base):
    __tablename__ = "gc_runs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))  # running|finished|stopped|failed|interrupted
    dry_run: Mapped[bool] = mapped_column(Boolean)
    delete_untagged: Mapped[bool] = mapped_column(Boolean)
    grace_seconds: Mapped[int] = mapped_column(Integer)
    trigger: Mapped[str] = mapped_column(String(16))  # api | cli | schedule
    requested_by: Mapped[str] = mapped_column(String(255))
    node: Mapped[str | None] = mapped_column(String(255), nullable=True)
    phase: Mapped[str] = mapped_column(String(32))
    cursor: Mapped[str | None] = mapped_column(String(512), nullable=True)
    resumed_from: Mapped[str | None] = mapped_column(String(64), nullable=True)
    stop_requested: Mapped[bool] = mapped_column(Boolean)
    counts: Mapped[str] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    __table_args__ = (Index("ix_gc_runs_started_at", "started_at"),)
