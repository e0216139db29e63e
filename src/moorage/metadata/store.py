"""The metadata store: every read and write of registry metadata, each in one short transaction.

Methods are synchronous (they run on a worker thread, see `moorage.services.threads`) and
return plain records, never ORM objects, so nothing outside this package sees SQL.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, Table, bindparam, delete, exists, func, select
from sqlalchemy.dialects import postgresql, sqlite

from moorage.domain.manifest import ParsedManifest
from moorage.metadata.database import read_transaction, single_read, write_transaction
from moorage.metadata.models import (
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
    utcnow,
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


_rb: Table = RepositoryBlob.__table__  # type: ignore[assignment]
_rm: Table = RepositoryManifest.__table__  # type: ignore[assignment]
_repos: Table = Repository.__table__  # type: ignore[assignment]
_blobs: Table = Blob.__table__  # type: ignore[assignment]
_manifests: Table = Manifest.__table__  # type: ignore[assignment]
_mblobs: Table = ManifestBlob.__table__  # type: ignore[assignment]
_mchildren: Table = ManifestChild.__table__  # type: ignore[assignment]
_tags: Table = Tag.__table__  # type: ignore[assignment]
_secrets: Table = ServerSecret.__table__  # type: ignore[assignment]
_checks: Table = ProxyTagCheck.__table__  # type: ignore[assignment]


# The hot reads are built once: constructing SQLAlchemy expressions per call costs more than
# running the (cached, compiled) statement.
_BLOB_IN_REPOSITORY = (
    select(_blobs.c.size)
    .select_from(_rb.join(_repos, _repos.c.id == _rb.c.repository_id))
    .join(_blobs, _blobs.c.digest == _rb.c.digest)
    .where(_repos.c.name == bindparam("repository"), _rb.c.digest == bindparam("digest"))
)
_TAG = (
    select(_manifests.c.digest, _manifests.c.media_type, _manifests.c.size)
    .select_from(_tags.join(_repos, _repos.c.id == _tags.c.repository_id))
    .join(_manifests, _manifests.c.digest == _tags.c.manifest_digest)
    .where(_repos.c.name == bindparam("repository"), _tags.c.name == bindparam("tag"))
)
_MANIFEST_IN_REPOSITORY = (
    select(_manifests.c.digest, _manifests.c.media_type, _manifests.c.size)
    .select_from(_rm.join(_repos, _repos.c.id == _rm.c.repository_id))
    .join(_manifests, _manifests.c.digest == _rm.c.digest)
    .where(_repos.c.name == bindparam("repository"), _rm.c.digest == bindparam("digest"))
)
_MANIFEST_BODY = select(_manifests.c.body).where(_manifests.c.digest == bindparam("digest"))
_MANIFEST_TAGS = (
    select(_tags.c.name)
    .select_from(_tags.join(_repos, _repos.c.id == _tags.c.repository_id))
    .where(_repos.c.name == bindparam("repository"), _tags.c.manifest_digest == bindparam("digest"))
    .order_by(_tags.c.name)
)


class MetadataStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._dialect = engine.dialect.name

    def close(self) -> None:
        self._engine.dispose()

    # -- helpers

    def _insert_ignore(
        self, connection: Connection, table: Any, rows: list[dict[str, Any]]
    ) -> None:
        if not rows:
            return
        insert = postgresql.insert if self._dialect == "postgresql" else sqlite.insert
        connection.execute(insert(table).on_conflict_do_nothing(), rows)

    def _repository_id(self, connection: Connection, name: str, *, create: bool) -> int | None:
        found: int | None = connection.execute(
            select(_repos.c.id).where(_repos.c.name == name)
        ).scalar()
        if found is not None or not create:
            return found
        self._insert_ignore(connection, _repos, [{"name": name, "created_at": utcnow()}])
        return int(
            connection.execute(select(_repos.c.id).where(_repos.c.name == name)).scalar_one()
        )

    # -- repositories

    def repository_exists(self, name: str) -> bool:
        with read_transaction(self._engine) as connection:
            return self._repository_id(connection, name, create=False) is not None

    def list_repositories(self, last: str | None, limit: int) -> list[str]:
        query = select(_repos.c.name).order_by(_repos.c.name).limit(limit)
        if last is not None:
            query = query.where(_repos.c.name > last)
        with read_transaction(self._engine) as connection:
            return list(connection.execute(query).scalars())

    # -- blobs

    def blob_size_in_repository(self, repository: str, digest: str) -> int | None:
        with single_read(self._engine) as connection:
            return connection.execute(
                _BLOB_IN_REPOSITORY, {"repository": repository, "digest": digest}
            ).scalar()

    def blob_size(self, digest: str) -> int | None:
        with read_transaction(self._engine) as connection:
            return connection.execute(
                select(_blobs.c.size).where(_blobs.c.digest == digest)
            ).scalar()

    def link_blob(self, repository: str, digest: str, size: int) -> None:
        """Record a committed blob and make it readable through `repository`."""
        now = utcnow()
        with write_transaction(self._engine) as connection:
            repository_id = self._repository_id(connection, repository, create=True)
            self._insert_ignore(
                connection, _blobs, [{"digest": digest, "size": size, "created_at": now}]
            )
            self._insert_ignore(
                connection,
                _rb,
                [{"repository_id": repository_id, "digest": digest, "created_at": now}],
            )

    def mount_blob(self, source: str, target: str, digest: str) -> int | None:
        """Link a blob of `source` into `target` without copying; its size, or None."""
        with write_transaction(self._engine) as connection:
            size = connection.execute(
                select(_blobs.c.size)
                .select_from(_rb.join(_repos, _repos.c.id == _rb.c.repository_id))
                .join(_blobs, _blobs.c.digest == _rb.c.digest)
                .where(_repos.c.name == source, _rb.c.digest == digest)
            ).scalar()
            if size is None:
                return None
            target_id = self._repository_id(connection, target, create=True)
            self._insert_ignore(
                connection,
                _rb,
                [{"repository_id": target_id, "digest": digest, "created_at": utcnow()}],
            )
            return int(size)

    def unlink_blob(self, repository: str, digest: str) -> bool:
        """Remove a blob from a repository; refuse while a manifest there still needs it."""
        with write_transaction(self._engine) as connection:
            repository_id = self._repository_id(connection, repository, create=False)
            if repository_id is None:
                return False
            users = connection.execute(
                select(_mblobs.c.manifest_digest)
                .join(_rm, _rm.c.digest == _mblobs.c.manifest_digest)
                .where(_rm.c.repository_id == repository_id, _mblobs.c.blob_digest == digest)
                .limit(5)
            ).scalars()
            referenced_by = list(users)
            if referenced_by:
                raise StillReferencedError(referenced_by)
            result = connection.execute(
                delete(_rb).where(_rb.c.repository_id == repository_id, _rb.c.digest == digest)
            )
            return result.rowcount > 0

    # -- manifests

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
        with write_transaction(self._engine) as connection:
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
                select(_tags.c.manifest_digest).where(
                    _tags.c.repository_id == repository_id, _tags.c.name == tag
                )
            ).scalar()
            if current != tag_precondition.digest:
                raise PreconditionFailedError(f"tag {tag} now points at {current}")
        missing_children = self._missing(connection, _rm, repository_id, children)
        if cached_at is not None:
            children = [child for child in children if child not in missing_children]
        else:
            missing_blobs = self._missing(connection, _rb, repository_id, required_blobs)
            if missing_blobs or missing_children:
                raise MissingReferencesError(missing_blobs, missing_children)
        self._insert_ignore(
            connection,
            _manifests,
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
            _mblobs,
            [
                {"manifest_digest": digest, "blob_digest": str(b)}
                for b in manifest.referenced_blobs()
            ],
        )
        self._insert_ignore(
            connection,
            _mchildren,
            [{"parent_digest": digest, "child_digest": child} for child in children],
        )
        self._insert_ignore(
            connection,
            _rm,
            [{"repository_id": repository_id, "digest": digest, "created_at": now}],
        )
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
            select(_tags.c.manifest_digest).where(
                _tags.c.repository_id == repository_id, _tags.c.name == tag
            )
        ).scalar()

    def link_manifests(self, links: ManifestLinks) -> None:
        """Make `links.manifests` (and the blobs they need) part of `links.target`, and set
        its tags, all or nothing."""
        with write_transaction(self._engine) as connection:
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
                select(_tags.c.manifest_digest).where(
                    _tags.c.repository_id == target_id, _tags.c.name == links.guarded_tag
                )
            ).scalar()
            if current != links.precondition.digest:
                raise PreconditionFailedError(f"tag {links.guarded_tag} now points at {current}")
        missing_manifests = self._missing(connection, _rm, source_id, links.manifests)
        missing_blobs = self._missing(connection, _rb, source_id, links.blobs)
        if missing_manifests or missing_blobs:
            raise MissingReferencesError(missing_blobs, missing_manifests)
        self._insert_ignore(
            connection,
            _rb,
            [
                {"repository_id": target_id, "digest": digest, "created_at": now}
                for digest in dict.fromkeys(links.blobs)
            ],
        )
        self._insert_ignore(
            connection,
            _rm,
            [
                {"repository_id": target_id, "digest": digest, "created_at": now}
                for digest in dict.fromkeys(links.manifests)
            ],
        )
        existing = set(
            connection.execute(
                select(_tags.c.name).where(
                    _tags.c.repository_id == target_id,
                    _tags.c.name.in_([tag for tag, _ in links.tags]),
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
                select(_rm.c.created_at)
                .select_from(_rm.join(_repos, _repos.c.id == _rm.c.repository_id))
                .where(_repos.c.name == repository, _rm.c.digest == digest)
            ).scalar()
        if added is not None and added.tzinfo is None:
            added = added.replace(tzinfo=UTC)
        return added

    # -- proxy-cache bookkeeping

    def _mark_checked(
        self, connection: Connection, repository_id: int, tag: str, when: datetime
    ) -> None:
        insert = postgresql.insert if self._dialect == "postgresql" else sqlite.insert
        statement = insert(_checks).values(repository_id=repository_id, tag=tag, checked_at=when)
        connection.execute(
            statement.on_conflict_do_update(
                index_elements=[_checks.c.repository_id, _checks.c.tag],
                set_={"checked_at": when},
            )
        )

    def tag_checked_at(self, repository: str, tag: str) -> datetime | None:
        """When a proxy-cache tag was last confirmed against the upstream."""
        with single_read(self._engine) as connection:
            checked: datetime | None = connection.execute(
                select(_checks.c.checked_at)
                .select_from(_checks.join(_repos, _repos.c.id == _checks.c.repository_id))
                .where(_repos.c.name == repository, _checks.c.tag == tag)
            ).scalar()
        if checked is not None and checked.tzinfo is None:
            checked = checked.replace(tzinfo=UTC)
        return checked

    def mark_tag_checked(self, repository: str, tag: str, when: datetime) -> None:
        with write_transaction(self._engine) as connection:
            repository_id = self._repository_id(connection, repository, create=False)
            if repository_id is not None:
                self._mark_checked(connection, repository_id, tag, when)

    def cached_blob_size(self, repository: str, digest: str, project: str) -> int | None:
        """The size of a blob that a manifest of `repository` references and that another
        repository of `project` already holds, if any: a proxy-cache project links such a blob
        without fetching it again (it came from the same upstream)."""
        holders = _repos.alias("holders")
        held = _rb.alias("held")
        with single_read(self._engine) as connection:
            size: int | None = connection.execute(
                select(_blobs.c.size)
                .select_from(_mblobs.join(_rm, _rm.c.digest == _mblobs.c.manifest_digest))
                .join(_repos, _repos.c.id == _rm.c.repository_id)
                .join(_blobs, _blobs.c.digest == _mblobs.c.blob_digest)
                .where(
                    _repos.c.name == repository,
                    _mblobs.c.blob_digest == digest,
                    exists(
                        select(held.c.digest)
                        .select_from(held.join(holders, holders.c.id == held.c.repository_id))
                        .where(
                            held.c.digest == digest,
                            holders.c.name.startswith(project + "/", autoescape=True),
                        )
                    ),
                )
                .limit(1)
            ).scalar()
        return size

    def blobs_missing_from(self, repository: str, manifest: str) -> list[str]:
        """Blobs that `manifest` references and that are not linked to `repository` (a
        proxy-cache project stores a manifest before its layers)."""
        linked = _rb.alias("linked")
        with read_transaction(self._engine) as connection:
            repository_id = self._repository_id(connection, repository, create=False)
            query = select(_mblobs.c.blob_digest).where(_mblobs.c.manifest_digest == manifest)
            if repository_id is not None:
                query = query.where(
                    ~exists().where(
                        linked.c.repository_id == repository_id,
                        linked.c.digest == _mblobs.c.blob_digest,
                    )
                )
            return sorted(connection.execute(query).scalars())

    def manifests_completed_by(self, repository: str, blob: str) -> list[tuple[str, str]]:
        """(digest, media type) of the manifests of `repository` that reference `blob` and
        have every blob they reference linked to the repository."""
        linked = _rb.alias("linked")
        others = _mblobs.alias("others")
        with read_transaction(self._engine) as connection:
            repository_id = self._repository_id(connection, repository, create=False)
            if repository_id is None:
                return []
            rows = connection.execute(
                select(_manifests.c.digest, _manifests.c.media_type)
                .select_from(
                    _mblobs.join(_rm, _rm.c.digest == _mblobs.c.manifest_digest).join(
                        _manifests, _manifests.c.digest == _mblobs.c.manifest_digest
                    )
                )
                .where(
                    _rm.c.repository_id == repository_id,
                    _mblobs.c.blob_digest == blob,
                    ~exists().where(
                        others.c.manifest_digest == _mblobs.c.manifest_digest,
                        ~exists().where(
                            linked.c.repository_id == repository_id,
                            linked.c.digest == others.c.blob_digest,
                        ),
                    ),
                )
            ).all()
        return [(row[0], row[1]) for row in rows]

    def _set_tag(
        self, connection: Connection, repository_id: int, tag: str, digest: str, now: datetime
    ) -> None:
        insert = postgresql.insert if self._dialect == "postgresql" else sqlite.insert
        statement = insert(_tags).values(
            repository_id=repository_id, name=tag, manifest_digest=digest, updated_at=now
        )
        connection.execute(
            statement.on_conflict_do_update(
                index_elements=[_tags.c.repository_id, _tags.c.name],
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
        with write_transaction(self._engine) as connection:
            repository_id = self._repository_id(connection, repository, create=False)
            if repository_id is None:
                return None
            parents = list(
                connection.execute(
                    select(_mchildren.c.parent_digest)
                    .join(_rm, _rm.c.digest == _mchildren.c.parent_digest)
                    .where(
                        _rm.c.repository_id == repository_id, _mchildren.c.child_digest == digest
                    )
                    .limit(5)
                ).scalars()
            )
            if parents:
                raise StillReferencedError(parents)
            tags = list(
                connection.execute(
                    select(_tags.c.name).where(
                        _tags.c.repository_id == repository_id, _tags.c.manifest_digest == digest
                    )
                ).scalars()
            )
            if expected_tags is not None and set(tags) != set(expected_tags):
                raise PreconditionFailedError(f"manifest {digest} now has tags {sorted(tags)}")
            connection.execute(
                delete(_tags).where(
                    _tags.c.repository_id == repository_id, _tags.c.manifest_digest == digest
                )
            )
            result = connection.execute(
                delete(_rm).where(_rm.c.repository_id == repository_id, _rm.c.digest == digest)
            )
            return tags if result.rowcount > 0 else None

    def delete_tag(self, repository: str, tag: str) -> str | None:
        """Remove only the tag; the digest it pointed at, or None."""
        with write_transaction(self._engine) as connection:
            repository_id = self._repository_id(connection, repository, create=False)
            if repository_id is None:
                return None
            digest = connection.execute(
                select(_tags.c.manifest_digest).where(
                    _tags.c.repository_id == repository_id, _tags.c.name == tag
                )
            ).scalar()
            if digest is not None:
                connection.execute(
                    delete(_tags).where(_tags.c.repository_id == repository_id, _tags.c.name == tag)
                )
            return digest

    def list_tags(self, repository: str, last: str | None, limit: int) -> list[str] | None:
        with read_transaction(self._engine) as connection:
            repository_id = self._repository_id(connection, repository, create=False)
            if repository_id is None:
                return None
            query = (
                select(_tags.c.name)
                .where(_tags.c.repository_id == repository_id)
                .order_by(_tags.c.name)
                .limit(limit)
            )
            if last is not None:
                query = query.where(_tags.c.name > last)
            return list(connection.execute(query).scalars())

    def referrers(
        self,
        repository: str,
        subject: str,
        artifact_type: str | None,
        after: str | None,
        limit: int,
    ) -> list[ReferrerRecord]:
        query = (
            select(
                _manifests.c.digest,
                _manifests.c.media_type,
                _manifests.c.size,
                _manifests.c.artifact_type,
                _manifests.c.annotations,
            )
            .select_from(_rm.join(_repos, _repos.c.id == _rm.c.repository_id))
            .join(_manifests, _manifests.c.digest == _rm.c.digest)
            .where(_repos.c.name == repository, _manifests.c.subject_digest == subject)
            .order_by(_manifests.c.digest)
            .limit(limit)
        )
        if artifact_type is not None:
            query = query.where(_manifests.c.artifact_type == artifact_type)
        if after is not None:
            query = query.where(_manifests.c.digest > after)
        with read_transaction(self._engine) as connection:
            rows = connection.execute(query).all()
        return [
            ReferrerRecord(row[0], row[1], row[2], row[3], json.loads(row[4]) if row[4] else None)
            for row in rows
        ]

    def stored_artifacts(self, artifact_type: str) -> list[tuple[str, str, dict[str, str]]]:
        """Every manifest of `artifact_type` in every repository: (repository, digest,
        annotations). For consistency checks, which read the whole registry."""
        query = (
            select(_repos.c.name, _manifests.c.digest, _manifests.c.annotations)
            .select_from(_rm.join(_repos, _repos.c.id == _rm.c.repository_id))
            .join(_manifests, _manifests.c.digest == _rm.c.digest)
            .where(_manifests.c.artifact_type == artifact_type)
            .order_by(_repos.c.name, _manifests.c.digest)
        )
        with read_transaction(self._engine) as connection:
            rows = connection.execute(query).all()
        return [(row[0], row[1], json.loads(row[2]) if row[2] else {}) for row in rows]

    # -- server secrets

    def server_secret(self, name: str) -> bytes:
        """A random 32-byte key shared by every worker, created on first use."""
        with read_transaction(self._engine) as connection:
            found = connection.execute(
                select(_secrets.c.value).where(_secrets.c.name == name)
            ).scalar()
        if found is not None:
            return bytes(found)
        with write_transaction(self._engine) as connection:
            self._insert_ignore(
                connection, _secrets, [{"name": name, "value": secrets.token_bytes(32)}]
            )
            return bytes(
                connection.execute(
                    select(_secrets.c.value).where(_secrets.c.name == name)
                ).scalar_one()
            )

    # -- integrity

    def manifests_with_missing_blobs(self) -> list[tuple[str, str]]:
        """(manifest, blob) pairs where a referenced, distributable blob has no blob row."""
        query = select(_mblobs.c.manifest_digest, _mblobs.c.blob_digest).where(
            ~exists().where(_blobs.c.digest == _mblobs.c.blob_digest)
        )
        with read_transaction(self._engine) as connection:
            return [(row[0], row[1]) for row in connection.execute(query)]

    def all_blobs(self) -> list[tuple[str, int]]:
        with read_transaction(self._engine) as connection:
            return [
                (row[0], row[1])
                for row in connection.execute(select(_blobs.c.digest, _blobs.c.size))
            ]

    def counts(self) -> dict[str, int]:
        with read_transaction(self._engine) as connection:
            return {
                table.name: connection.execute(select(func.count()).select_from(table)).scalar_one()
                for table in (_repos, _blobs, _manifests, _tags)
            }
