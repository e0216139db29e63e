"""Promotion tables: project stages and gates, approvals, and the promotion records.

What the columns mean is defined in `moorage.domain.promotion`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from moorage.metadata.registry.models import Base, DigestString, MediaTypeString, NameString, utcnow


class ProjectStageRow(Base):
    """A project's stage label and whether it accepts only promotions (no row: neither)."""

    __tablename__ = "project_stages"

    project_id: Mapped[int] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True
    )
    stage: Mapped[str | None] = mapped_column(String(32), nullable=True)
    promotion_only: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_by: Mapped[str | None] = mapped_column(String(255), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class PromotionGatesRow(Base):
    """The gates a promotion into the project must pass (a JSON list of gate objects)."""

    __tablename__ = "promotion_gates"

    project_id: Mapped[int] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True
    )
    gates: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    updated_by: Mapped[str | None] = mapped_column(String(255), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class PromotionApprovalRow(Base):
    """One user's approval of promoting a digest into a project."""

    __tablename__ = "promotion_approvals"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    digest: Mapped[str] = mapped_column(DigestString)
    # Deleting the account deletes its approvals: they no longer count (see 0014).
    approver_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE", name="fk_promotion_approvals_approver")
    )
    approver: Mapped[str] = mapped_column(String(255))
    comment: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (
        UniqueConstraint("project_id", "digest", "approver_id", name="uq_promotion_approval"),
        Index("ix_promotion_approvals_approver", "approver_id"),
    )


class PromotionRow(Base):
    """A promotion that happened, with its signed record (a DSSE envelope)."""

    __tablename__ = "promotions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    destination_project: Mapped[str] = mapped_column(NameString)
    destination_repository: Mapped[str] = mapped_column(NameString)
    tag: Mapped[str] = mapped_column(String(128))
    digest: Mapped[str] = mapped_column(DigestString)
    media_type: Mapped[str] = mapped_column(MediaTypeString)
    source_repository: Mapped[str] = mapped_column(NameString)
    source_reference: Mapped[str] = mapped_column(String(200))
    requester: Mapped[str] = mapped_column(String(255))
    requester_kind: Mapped[str] = mapped_column(String(16))
    gates: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    record_digest: Mapped[str] = mapped_column(DigestString)
    envelope: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (
        Index("ix_promotions_project", "destination_project", "id"),
        Index("ix_promotions_target", "destination_repository", "tag", "digest"),
    )
