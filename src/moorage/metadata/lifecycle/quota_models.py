"""Tables of project quotas: the limits set per project, and the usage counters.

`quota_usage` and `quota_project_blobs` are maintained by database triggers on
`repository_blobs`, `repository_manifests` and `repositories` (migration 0020), so every
writer (pushes, mounts, promotions, proxy caching, deletion, garbage collection) keeps them
exact in its own transaction without knowing about quotas. `moorage quota recount` rebuilds
them from the links.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from moorage.metadata.registry.models import Base, DigestString, NameString, utcnow


class ProjectQuota(Base):
    """A project's own limits: NULL inherits the system default, 0 is unlimited."""

    __tablename__ = "project_quotas"

    project: Mapped[str] = mapped_column(NameString, primary_key=True)
    bytes_limit: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    artifacts_limit: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    updated_by: Mapped[str | None] = mapped_column(String(255), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class QuotaUsageRow(Base):
    """What a project holds (distinct blob bytes, manifests in its repositories) and which
    announcement (warning, refusal) was last made for it."""

    __tablename__ = "quota_usage"

    project: Mapped[str] = mapped_column(NameString, primary_key=True)
    bytes: Mapped[int] = mapped_column(BigInteger)
    artifacts: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(16))  # ok | warned | exceeded


class QuotaProjectBlob(Base):
    """How many repositories of a project link a blob: the blob counts once while > 0."""

    __tablename__ = "quota_project_blobs"

    project: Mapped[str] = mapped_column(NameString, primary_key=True)
    digest: Mapped[str] = mapped_column(DigestString, primary_key=True)
    links: Mapped[int] = mapped_column(Integer)
