"""Tables of name routing: the registry's default mirror and virtual projects.

A virtual project is an ordinary project row with a `virtual_projects` row: its members, in
order, are other projects; the push member (optional) receives its pushes. The default mirror
is one row naming the proxy-cache project that serves names without a project prefix.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from moorage.metadata.registry.models import Base, utcnow


class VirtualProjectRow(Base):
    __tablename__ = "virtual_projects"

    project_id: Mapped[int] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True
    )
    push_member_id: Mapped[int | None] = mapped_column(
        ForeignKey("projects.id", ondelete="SET NULL"), nullable=True
    )
    updated_by: Mapped[str | None] = mapped_column(String(255), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class VirtualMemberRow(Base):
    """One member of a virtual project; `position` orders resolution (0 first)."""

    __tablename__ = "virtual_project_members"

    virtual_project_id: Mapped[int] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    member_project_id: Mapped[int] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )


class MirrorSettingRow(Base):
    """The default mirror (at most one row, id 1). A row with no project means "none", which
    overrides the configuration file's `mirror_project`."""

    __tablename__ = "registry_mirror"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int | None] = mapped_column(
        ForeignKey("projects.id", ondelete="SET NULL"), nullable=True
    )
    updated_by: Mapped[str | None] = mapped_column(String(255), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
