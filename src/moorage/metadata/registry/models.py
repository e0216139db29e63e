"""SQLAlchemy models of the registry's metadata.

Blob bytes live in the storage driver; everything that links them together lives here, with
foreign keys so that the database itself refuses a manifest that points at a missing blob, a
tag that points at a manifest outside its repository, or an index whose child is missing.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Tags and repository names sort "ASCIIbetically" (byte order) as the spec requires:
# SQLite's default BINARY collation does that; PostgreSQL needs the "C" collation.
NameString = String(255).with_variant(String(255, collation="C"), "postgresql")
DigestString = String(200)
MediaTypeString = String(255)

BLOB_LIVE = "live"
BLOB_DELETING = "deleting"


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Repository(Base):
    __tablename__ = "repositories"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(NameString, unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Blob(Base):
    """A blob, global and content-addressed (shared by every repository).

    The row exists before the bytes are committed to storage (a claim) and until after they
    are deleted from it. `state` is 'live', or 'deleting' while garbage collection removes the
    bytes; whatever makes the blob referenced updates the row on the condition that it is
    live, and moves `touched_at`, so a collection and a new reference never both succeed.
    """

    __tablename__ = "blobs"

    digest: Mapped[str] = mapped_column(DigestString, primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    state: Mapped[str] = mapped_column(String(16), default=BLOB_LIVE, server_default=BLOB_LIVE)
    touched_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True, default=utcnow
    )
    marked_by: Mapped[str | None] = mapped_column(String(64), nullable=True)  # the gc run

    __table_args__ = (Index("ix_blobs_state", "state"),)


class RepositoryBlob(Base):
    """A blob is readable through a repository only when linked to it (push or mount)."""

    __tablename__ = "repository_blobs"

    repository_id: Mapped[int] = mapped_column(
        ForeignKey("repositories.id", ondelete="CASCADE"), primary_key=True
    )
    digest: Mapped[str] = mapped_column(ForeignKey("blobs.digest"), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (Index("ix_repository_blobs_digest", "digest"),)


class Manifest(Base):
    """A manifest's exact bytes and what the registry indexes from them (content-addressed)."""

    __tablename__ = "manifests"

    digest: Mapped[str] = mapped_column(DigestString, primary_key=True)
    media_type: Mapped[str] = mapped_column(MediaTypeString)
    size: Mapped[int] = mapped_column(BigInteger)
    body: Mapped[bytes] = mapped_column(LargeBinary)
    subject_digest: Mapped[str | None] = mapped_column(DigestString, nullable=True)
    # The artifactType a referrers listing shows (manifest's own, else its config's).
    artifact_type: Mapped[str | None] = mapped_column(MediaTypeString, nullable=True)
    annotations: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON object
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (Index("ix_manifests_subject_digest", "subject_digest"),)


class ManifestBlob(Base):
    """Blobs (config and layers) a manifest references: what garbage collection keeps."""

    __tablename__ = "manifest_blobs"

    manifest_digest: Mapped[str] = mapped_column(
        ForeignKey("manifests.digest", ondelete="CASCADE"), primary_key=True
    )
    blob_digest: Mapped[str] = mapped_column(DigestString, primary_key=True)

    __table_args__ = (Index("ix_manifest_blobs_blob_digest", "blob_digest"),)


class ManifestChild(Base):
    """Manifests an index references."""

    __tablename__ = "manifest_children"

    parent_digest: Mapped[str] = mapped_column(
        ForeignKey("manifests.digest", ondelete="CASCADE"), primary_key=True
    )
    child_digest: Mapped[str] = mapped_column(ForeignKey("manifests.digest"), primary_key=True)

    __table_args__ = (Index("ix_manifest_children_child_digest", "child_digest"),)


class RepositoryManifest(Base):
    """A manifest is part of a repository (pullable by digest there).

    `touched_at` moves whenever the manifest is pushed into the repository again, so deleting
    untagged manifests never takes one that was just pushed.
    """

    __tablename__ = "repository_manifests"

    repository_id: Mapped[int] = mapped_column(
        ForeignKey("repositories.id", ondelete="CASCADE"), primary_key=True
    )
    digest: Mapped[str] = mapped_column(ForeignKey("manifests.digest"), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    touched_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True, default=utcnow
    )

    __table_args__ = (Index("ix_repository_manifests_digest", "digest"),)


class Tag(Base):
    __tablename__ = "tags"

    repository_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(NameString, primary_key=True)
    manifest_digest: Mapped[str] = mapped_column(DigestString)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (
        # A tag can only point at a manifest of its own repository; deleting that manifest
        # from the repository removes its tags.
        ForeignKeyConstraint(
            ["repository_id", "manifest_digest"],
            ["repository_manifests.repository_id", "repository_manifests.digest"],
            ondelete="CASCADE",
        ),
        Index("ix_tags_manifest", "repository_id", "manifest_digest"),
    )


class ProxyTagCheck(Base):
    """When a proxy-cache project last confirmed a tag against its upstream."""

    __tablename__ = "proxy_tag_checks"

    repository_id: Mapped[int] = mapped_column(
        ForeignKey("repositories.id", ondelete="CASCADE"), primary_key=True
    )
    tag: Mapped[str] = mapped_column(NameString, primary_key=True)
    checked_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ServerSecret(Base):
    """Random keys the registry itself generates and every worker and node shares."""

    __tablename__ = "server_secrets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[bytes] = mapped_column(LargeBinary)
