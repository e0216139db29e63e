"""Vulnerability policy tables: each project's policy and the allowlists (system and project).

What the columns mean is defined in `moorage.domain.vulnerability_policy`.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, DateTime, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from moorage.metadata.registry.models import Base, utcnow


class VulnerabilityPolicyRow(Base):
    """A project's vulnerability policy; a project without a row has the default (disabled)."""

    __tablename__ = "vulnerability_policies"

    project_id: Mapped[int] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True
    )
    enabled: Mapped[bool] = mapped_column(Boolean)
    severity: Mapped[str] = mapped_column(String(16))  # Low | Medium | High | Critical
    unknown_as: Mapped[str] = mapped_column(String(16))  # Unknown | Low | ... | Critical
    block_unscanned: Mapped[bool] = mapped_column(Boolean)
    block_failed: Mapped[bool] = mapped_column(Boolean)
    ignore_unfixed: Mapped[bool] = mapped_column(Boolean)
    # finding | block | ignore: what a possibly affected finding counts as
    possibly_affected: Mapped[str] = mapped_column(String(16), server_default="finding")
    updated_by: Mapped[str | None] = mapped_column(String(255), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class VulnerabilityAllowlistRow(Base):
    """One allowlisted vulnerability id: of a project, or system-wide when project_id is NULL."""

    __tablename__ = "vulnerability_allowlist"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_id: Mapped[int | None] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), nullable=True
    )
    vulnerability_id: Mapped[str] = mapped_column(String(128))  # as the caller wrote it
    id_key: Mapped[str] = mapped_column(String(128))  # upper-cased: ids match case-insensitively
    reason: Mapped[str] = mapped_column(String(1000))
    owner: Mapped[str] = mapped_column(String(255))  # who is responsible for the exception
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_by: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (Index("ix_vulnerability_allowlist_project", "project_id"),)
