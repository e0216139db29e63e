"""What the registry metadata store returns and raises, and the tables it reads.

The record types and errors are shared by the store's parts and by the services that call it;
the table handles are shared by the parts of `MetadataStore`
(see `moorage.metadata.registry.store`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Table

from moorage.metadata.registry.models import (
    Blob,
    Manifest,
    ManifestBlob,
    ManifestChild,
    ProxyTagCheck,
    Repository,
    RepositoryBlob,
    RepositoryManifest,
    ServerSecret,
    Tag,
)


@dataclass(frozen=True, slots=True)
class ManifestRecord:
    digest: str
    media_type: str
    size: int


@dataclass(frozen=True, slots=True)
class ReferrerRecord:
    digest: str
    media_type: str
    size: int
    artifact_type: str | None
    annotations: dict[str, str] | None


class MissingReferencesError(Exception):
    def __init__(self, blobs: Sequence[str], manifests: Sequence[str]) -> None:
        self.blobs = list(blobs)
        self.manifests = list(manifests)
        super().__init__(f"missing blobs {self.blobs}, missing manifests {self.manifests}")


class BlobBeingCollectedError(Exception):
    """Garbage collection is deleting this blob from storage right now: it cannot be linked,
    mounted or referenced until the deletion is over (then it can be pushed again)."""

    def __init__(self, digest: str) -> None:
        self.digest = digest
        super().__init__(f"blob {digest} is being garbage-collected")


class StillReferencedError(Exception):
    def __init__(self, by: Sequence[str]) -> None:
        self.by = list(by)
        super().__init__(f"still referenced by {self.by}")


@dataclass(frozen=True, slots=True)
class TagPrecondition:
    """A write goes ahead only if the tag still points at `digest` (None: still absent)."""

    digest: str | None


class PreconditionFailedError(Exception):
    """What a policy decision was based on changed before the write: decide again."""


@dataclass(frozen=True, slots=True)
class ManifestLinks:
    """Manifests `source` holds, to become part of `target` too, without copying a byte.

    `blobs` are the blobs those manifests need (all linked to `source`); `tags` are set in
    `target` (tag, digest), except those in `keep_tags` that `target` already has. With
    `precondition`, `guarded_tag` must still point where a policy check saw it.
    """

    source: str
    target: str
    manifests: tuple[str, ...]
    blobs: tuple[str, ...]
    tags: tuple[tuple[str, str], ...]
    keep_tags: frozenset[str] = frozenset()
    guarded_tag: str | None = None
    precondition: TagPrecondition | None = None


# The tables the parts of `MetadataStore` read and write.
repository_blobs_table: Table = RepositoryBlob.__table__  # type: ignore[assignment]
repository_manifests_table: Table = RepositoryManifest.__table__  # type: ignore[assignment]
repositories_table: Table = Repository.__table__  # type: ignore[assignment]
blobs_table: Table = Blob.__table__  # type: ignore[assignment]
manifests_table: Table = Manifest.__table__  # type: ignore[assignment]
manifest_blobs_table: Table = ManifestBlob.__table__  # type: ignore[assignment]
manifest_children_table: Table = ManifestChild.__table__  # type: ignore[assignment]
tags_table: Table = Tag.__table__  # type: ignore[assignment]
secrets_table: Table = ServerSecret.__table__  # type: ignore[assignment]
tag_checks_table: Table = ProxyTagCheck.__table__  # type: ignore[assignment]
