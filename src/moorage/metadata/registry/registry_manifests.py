"""Manifests and tags in the metadata store: resolving, storing, linking and deleting them.

A manifest is stored with the links that make it safe to serve (its blobs, its child
manifests, its subject) in one write transaction; the `*_in` variants run inside a
transaction the caller holds so a promotion can commit more with it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, bindparam, delete, select
from sqlalchemy.dialects import postgresql, sqlite

from moorage.domain.manifest import ParsedManifest
from moorage.metadata.database import single_read, write_transaction
from moorage.metadata.registry.listing import owned_page_query, read_owned_page
from moorage.metadata.registry.models import utcnow
from moorage.metadata.registry.registry_base import RegistryStoreBase, repository_key
from moorage.metadata.registry.registry_records import (
    ManifestLinks,
    ManifestRecord,
    MissingReferencesError,
    PreconditionFailedError,
    StillReferencedError,
    TagPrecondition,
    manifest_blobs_table,
    manifest_children_table,
    manifests_table,
    repositories_table,
    repository_blobs_table,
    repository_manifests_table,
    tags_table,
)

# The hot reads are built once: constructing SQLAlchemy expressions per call costs more than
# running the (cached, compiled) statement.
_TAG = (
    select(manifests_table.c.digest, manifests_table.c.media_type, manifests_table.c.size)
    .select_from(
        tags_table.join(repositories_table, repositories_table.c.id == tags_table.c.repository_id)
    )
    .join(manifests_table, manifests_table.c.digest == tags_table.c.manifest_digest)
    .where(
        repositories_table.c.name == bindparam("repository"), tags_table.c.name == bindparam("tag")
    )
)
_MANIFEST_IN_REPOSITORY = (
    select(manifests_table.c.digest, manifests_table.c.media_type, manifests_table.c.size)
    .select_from(
        repository_manifests_table.join(
            repositories_table,
            repositories_table.c.id == repository_manifests_table.c.repository_id,
        )
    )
    .join(manifests_table, manifests_table.c.digest == repository_manifests_table.c.digest)
    .where(
        repositories_table.c.name == bindparam("repository"),
        repository_manifests_table.c.digest == bindparam("digest"),
    )
)
_MANIFEST_BODY = select(manifests_table.c.body).where(
    manifests_table.c.digest == bindparam("digest")
)
_MANIFEST_TAGS = (
    select(tags_table.c.name)
    .select_from(
        tags_table.join(repositories_table, repositories_table.c.id == tags_table.c.repository_id)
    )
    .where(
        repositories_table.c.name == bindparam("repository"),
        tags_table.c.manifest_digest == bindparam("digest"),
    )
    .order_by(tags_table.c.name)
)
_REPOSITORY_ID = (
    select(repositories_table.c.id)
    .where(repositories_table.c.name == bindparam("repository"))
    .scalar_subquery()
)
_TAGS_FIRST_PAGE = owned_page_query(
    _REPOSITORY_ID, tags_table.c.repository_id, tags_table.c.name, after=False
)
_TAGS_PAGE_AFTER = owned_page_query(
    _REPOSITORY_ID, tags_table.c.repository_id, tags_table.c.name, after=True
)


class ManifestQueries(RegistryStoreBase):
    def resolve_tag(self, repository: str, tag: str) -> ManifestRecord | None:
        with single_read(self._engine) as connection:
            row = connection.execute(_TAG, {"repository": repository, "tag": tag}).first()
        return None if row is None else ManifestRecord(row[0], row[1], row[2])

    def resolve_digest(self, repository: str, digest: str) -> ManifestRecord | None:
        with single_read(self._engine) as connection:
            row = connection.execute(
                _MANIFEST_IN_REPOSITORY, {"repository": repository, "digest": digest}
            ).first()
        return None if row is None else ManifestRecord(row[0], row[1], row[2])

    def manifest_body(self, digest: str) -> bytes | None:
        with single_read(self._engine) as connection:
            return connection.execute(_MANIFEST_BODY, {"digest": digest}).scalar()

    def manifest_tags(self, repository: str, digest: str) -> list[str]:
        """The tags of `repository` that point at `digest`, sorted."""
        with single_read(self._engine) as connection:
            return list(
                connection.execute(
                    _MANIFEST_TAGS, {"repository": repository, "digest": digest}
                ).scalars()
            )

    def put_manifest(
        self,
        repository: str,
        manifest: ParsedManifest,
        body: bytes,
        tag: str | None,
        *,
        tag_precondition: TagPrecondition | None = None,
        cached_at: datetime | None = None,
    ) -> None:
        """Store a manifest in a repository (and point `tag` at it), all or nothing.

        Every blob the manifest needs must be linked to the repository and every child
        manifest must be in it, checked inside the same write transaction that stores it.
        With `tag_precondition`, the tag must still point where it did when the push was
        checked (`PreconditionFailedError` otherwise).

        With `cached_at`, the manifest comes from a proxy-cache project's upstream: its blobs
        are fetched when first pulled, so they need not be present; only the children already
        stored are recorded (a platform filter leaves the others out); and the tag is marked
        as confirmed against the upstream at that time.
        """
        with write_transaction(
            self._engine, serialise_on=[repository_key(repository)]
        ) as connection:
            self.put_manifest_in(
                connection,
                repository,
                manifest,
                body,
                tag,
                tag_precondition=tag_precondition,
                cached_at=cached_at,
            )

    def put_manifest_in(
        self,
        connection: Connection,
        repository: str,
        manifest: ParsedManifest,
        body: bytes,
        tag: str | None,
        *,
        tag_precondition: TagPrecondition | None = None,
        cached_at: datetime | None = None,
    ) -> None:
        """`put_manifest` inside a transaction the caller holds (to commit more with it)."""
        digest = str(manifest.digest)
        required_blobs = sorted({str(d) for d in manifest.required_blobs()})
        children = sorted({str(child.digest) for child in manifest.children})
        now = utcnow()
        repository_id = self._repository_id(connection, repository, create=True)
        assert repository_id is not None
        if tag is not None and tag_precondition is not None:
            current = connection.execute(
                select(tags_table.c.manifest_digest).where(
                    tags_table.c.repository_id == repository_id, tags_table.c.name == tag
                )
            ).scalar()
            if current != tag_precondition.digest:
                raise PreconditionFailedError(f"tag {tag} now points at {current}")
        missing_children = self._missing(
            connection, repository_manifests_table, repository_id, children
        )
        if cached_at is not None:
            children = [child for child in children if child not in missing_children]
        else:
            missing_blobs = self._missing(
                connection, repository_blobs_table, repository_id, required_blobs
            )
            if not missing_blobs:
                # Linked, and live: a blob a collection is deleting is as good as missing.
                touched = self._touch_blobs_in(connection, required_blobs, now)
                missing_blobs = [blob for blob in required_blobs if blob not in touched]
            if missing_blobs or missing_children:
                raise MissingReferencesError(missing_blobs, missing_children)
        self._quota.before_manifest_links(connection, repository_id, repository, [digest])
        self._insert_ignore(
            connection,
            manifests_table,
            [
                {
                    "digest": digest,
                    "media_type": manifest.media_type,
                    "size": manifest.size,
                    "body": body,
                    "subject_digest": str(manifest.subject.digest) if manifest.subject else None,
                    "artifact_type": manifest.referrer_artifact_type(),
                    "annotations": json.dumps(manifest.annotations)
                    if manifest.annotations
                    else None,
                    "created_at": now,
                }
            ],
        )
        self._insert_ignore(
            connection,
            manifest_blobs_table,
            [
                {"manifest_digest": digest, "blob_digest": str(b)}
                for b in manifest.referenced_blobs()
            ],
        )
        self._insert_ignore(
            connection,
            manifest_children_table,
            [{"parent_digest": digest, "child_digest": child} for child in children],
        )
        self._add_to_repository(connection, repository_id, [digest], now)
        if tag is not None:
            self._set_tag(connection, repository_id, tag, digest, now)
            if cached_at is not None:
                self._mark_checked(connection, repository_id, tag, cached_at)

    def tag_target_in(self, connection: Connection, repository: str, tag: str) -> str | None:
        """The digest `repository:tag` points at, read in the caller's transaction."""
        repository_id = self._repository_id(connection, repository, create=False)
        if repository_id is None:
            return None
        return connection.execute(
            select(tags_table.c.manifest_digest).where(
                tags_table.c.repository_id == repository_id, tags_table.c.name == tag
            )
        ).scalar()

    def link_manifests(self, links: ManifestLinks) -> None:
        """Make `links.manifests` (and the blobs they need) part of `links.target`, and set
        its tags, all or nothing."""
        keys = [repository_key(links.source), repository_key(links.target)]
        with write_transaction(self._engine, serialise_on=keys) as connection:
            self.link_manifests_in(connection, links)

    def link_manifests_in(self, connection: Connection, links: ManifestLinks) -> None:
        """`link_manifests` inside a transaction the caller holds (to commit more with it).

        Raises MissingReferencesError when the source lacks a manifest or blob, and
        PreconditionFailedError when the guarded tag moved.
        """
        now = utcnow()
        source_id = self._repository_id(connection, links.source, create=False)
        if source_id is None:
            raise MissingReferencesError([], list(links.manifests))
        target_id = self._repository_id(connection, links.target, create=True)
        assert target_id is not None
        if links.guarded_tag is not None and links.precondition is not None:
            current = connection.execute(
                select(tags_table.c.manifest_digest).where(
                    tags_table.c.repository_id == target_id, tags_table.c.name == links.guarded_tag
                )
            ).scalar()
            if current != links.precondition.digest:
                raise PreconditionFailedError(f"tag {links.guarded_tag} now points at {current}")
        missing_manifests = self._missing(
            connection, repository_manifests_table, source_id, links.manifests
        )
        missing_blobs = self._missing(connection, repository_blobs_table, source_id, links.blobs)
        if not missing_blobs:
            touched = self._touch_blobs_in(connection, links.blobs, now)
            missing_blobs = [blob for blob in links.blobs if blob not in touched]
        if missing_manifests or missing_blobs:
            raise MissingReferencesError(missing_blobs, missing_manifests)
        self._quota.before_manifest_links(
            connection, target_id, links.target, links.manifests, links.blobs
        )
        self._link_in(connection, target_id, list(links.blobs), now)
        self._add_to_repository(connection, target_id, list(links.manifests), now)
        existing = set(
            connection.execute(
                select(tags_table.c.name).where(
                    tags_table.c.repository_id == target_id,
                    tags_table.c.name.in_([tag for tag, _ in links.tags]),
                )
            ).scalars()
        )
        for tag, digest in links.tags:
            if tag in links.keep_tags and tag in existing:
                continue
            self._set_tag(connection, target_id, tag, digest, now)

    def manifest_added_at(self, repository: str, digest: str) -> datetime | None:
        """When the manifest became part of the repository (pushed, cached or linked)."""
        with single_read(self._engine) as connection:
            added: datetime | None = connection.execute(
                select(repository_manifests_table.c.created_at)
                .select_from(
                    repository_manifests_table.join(
                        repositories_table,
                        repositories_table.c.id == repository_manifests_table.c.repository_id,
                    )
                )
                .where(
                    repositories_table.c.name == repository,
                    repository_manifests_table.c.digest == digest,
                )
            ).scalar()
        if added is not None and added.tzinfo is None:
            added = added.replace(tzinfo=UTC)
        return added

    def _add_to_repository(
        self, connection: Connection, repository_id: int, digests: list[str], now: datetime
    ) -> None:
        """Make manifests part of a repository; for those already in it, a push again moves
        `touched_at` (what deleting untagged manifests goes by), never `created_at`."""
        self._upsert_in_repository(
            connection, repository_manifests_table, repository_id, digests, now, renew="touched_at"
        )

    def _set_tag(
        self, connection: Connection, repository_id: int, tag: str, digest: str, now: datetime
    ) -> None:
        insert = postgresql.insert if self._dialect == "postgresql" else sqlite.insert
        statement = insert(tags_table).values(
            repository_id=repository_id, name=tag, manifest_digest=digest, updated_at=now
        )
        connection.execute(
            statement.on_conflict_do_update(
                index_elements=[tags_table.c.repository_id, tags_table.c.name],
                set_={"manifest_digest": digest, "updated_at": now},
            )
        )

    @staticmethod
    def _missing(
        connection: Connection, link_table: Any, repository_id: int, digests: Iterable[str]
    ) -> list[str]:
        wanted = list(digests)
        if not wanted:
            return []
        present = set(
            connection.execute(
                select(link_table.c.digest).where(
                    link_table.c.repository_id == repository_id, link_table.c.digest.in_(wanted)
                )
            ).scalars()
        )
        return [d for d in wanted if d not in present]

    def delete_manifest(
        self, repository: str, digest: str, *, expected_tags: Sequence[str] | None = None
    ) -> list[str] | None:
        """Remove a manifest (and its tags) from a repository; the removed tags, or None.

        Refused while an index in the same repository still lists it as a child. With
        `expected_tags`, the manifest must still have exactly those tags when it is removed
        (`PreconditionFailedError` otherwise).
        """
        with write_transaction(
            self._engine, serialise_on=[repository_key(repository)]
        ) as connection:
            repository_id = self._repository_id(connection, repository, create=False)
            if repository_id is None:
                return None
            parents = list(
                connection.execute(
                    select(manifest_children_table.c.parent_digest)
                    .join(
                        repository_manifests_table,
                        repository_manifests_table.c.digest
                        == manifest_children_table.c.parent_digest,
                    )
                    .where(
                        repository_manifests_table.c.repository_id == repository_id,
                        manifest_children_table.c.child_digest == digest,
                    )
                    .limit(5)
                ).scalars()
            )
            if parents:
                raise StillReferencedError(parents)
            tags = list(
                connection.execute(
                    select(tags_table.c.name).where(
                        tags_table.c.repository_id == repository_id,
                        tags_table.c.manifest_digest == digest,
                    )
                ).scalars()
            )
            if expected_tags is not None and set(tags) != set(expected_tags):
                raise PreconditionFailedError(f"manifest {digest} now has tags {sorted(tags)}")
            connection.execute(
                delete(tags_table).where(
                    tags_table.c.repository_id == repository_id,
                    tags_table.c.manifest_digest == digest,
                )
            )
            result = connection.execute(
                delete(repository_manifests_table).where(
                    repository_manifests_table.c.repository_id == repository_id,
                    repository_manifests_table.c.digest == digest,
                )
            )
            return tags if result.rowcount > 0 else None

    def delete_tag(self, repository: str, tag: str) -> str | None:
        """Remove only the tag; the digest it pointed at, or None."""
        with write_transaction(
            self._engine, serialise_on=[repository_key(repository)]
        ) as connection:
            repository_id = self._repository_id(connection, repository, create=False)
            if repository_id is None:
                return None
            digest = connection.execute(
                select(tags_table.c.manifest_digest).where(
                    tags_table.c.repository_id == repository_id, tags_table.c.name == tag
                )
            ).scalar()
            if digest is not None:
                connection.execute(
                    delete(tags_table).where(
                        tags_table.c.repository_id == repository_id, tags_table.c.name == tag
                    )
                )
            return digest

    def list_tags(self, repository: str, last: str | None, limit: int) -> list[str] | None:
        """One page of tags (see moorage.metadata.registry.listing); None: no such repository."""
        with single_read(self._engine) as connection:
            if last is None:
                return read_owned_page(
                    connection, _TAGS_FIRST_PAGE, {"repository": repository, "limit": limit}
                )
            return read_owned_page(
                connection,
                _TAGS_PAGE_AFTER,
                {"repository": repository, "limit": limit, "last": last},
            )
