"""Tables of the shared vulnerability database (migration 0017).

- `vulndb_generations`: every kept generation; its SQLite file is a content-addressed blob in
  the registry's storage. Garbage collection (issue 13) must count `digest` as a reference:
  these blobs are linked to no repository.
- `vulndb_pointer`: one row naming the current generation and the history kept for rollback,
  with a version nodes poll for changes and the leased lock of imports and rollbacks.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final

from sqlalchemy import BigInteger, DateTime, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from moorage.metadata.registry.models import Base, DigestString, utcnow

POINTER_ROW: Final = "current"
GenerationId = String(128)


class VulndbGenerationRow(Base):
    __tablename__ = "vulndb_generations"

    id: Mapped[str] = mapped_column(GenerationId, primary_key=True)
    digest: Mapped[str] = mapped_column(DigestString)
    size: Mapped[int] = mapped_column(BigInteger)
    info: Mapped[str] = mapped_column(Text)  # the generation's `meta` table as one JSON object
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (Index("ix_vulndb_generations_digest", "digest"),)


class VulndbPointerRow(Base):
    __tablename__ = "vulndb_pointer"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    current: Mapped[str | None] = mapped_column(GenerationId, nullable=True)
    history: Mapped[str] = mapped_column(Text, default="[]")  # JSON list, newest first
    version: Mapped[int] = mapped_column(BigInteger, default=0)
    lock_owner: Mapped[str | None] = mapped_column(String(255), nullable=True)
    lock_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
