"""When each artifact (a manifest in a repository) was last pulled.

Written in batches by every process's pull tracker (`services/lifecycle/pull_tracking.py`):
each row keeps the latest time any process saw and the total count. Rows of a deleted
repository go with it; a row of a manifest no longer in its repository is harmless (nothing
reads a pull time without the artifact) and garbage collection may drop it.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, ForeignKey
from sqlalchemy.orm import Mapped, mapped_column

from moorage.metadata.registry.models import Base, DigestString


class ManifestPullRow(Base):
    __tablename__ = "manifest_pulls"

    repository_id: Mapped[int] = mapped_column(
        ForeignKey("repositories.id", ondelete="CASCADE"), primary_key=True
    )
    digest: Mapped[str] = mapped_column(DigestString, primary_key=True)
    last_pulled_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    pull_count: Mapped[int] = mapped_column(BigInteger, default=0)
