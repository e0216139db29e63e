"""Proxy-cache bookkeeping in the metadata store.

A proxy-cache project stores a manifest before its layers and confirms tags against its
upstream now and then: these queries record when a tag was last confirmed and find which
blobs a cached manifest still lacks, which other repository already holds one, and which
manifests a newly linked blob completes.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import exists, select

from moorage.metadata.database import read_transaction, single_read, write_transaction
from moorage.metadata.registry.registry_base import RegistryStoreBase
from moorage.metadata.registry.registry_records import (
    blobs_table,
    manifest_blobs_table,
    manifests_table,
    repositories_table,
    repository_blobs_table,
    repository_manifests_table,
    tag_checks_table,
)


class ProxyCacheQueries(RegistryStoreBase):
    def tag_checked_at(self, repository: str, tag: str) -> datetime | None:
        """When a proxy-cache tag was last confirmed against the upstream."""
        with single_read(self._engine) as connection:
            checked: datetime | None = connection.execute(
                select(tag_checks_table.c.checked_at)
                .select_from(
                    tag_checks_table.join(
                        repositories_table,
                        repositories_table.c.id == tag_checks_table.c.repository_id,
                    )
                )
                .where(repositories_table.c.name == repository, tag_checks_table.c.tag == tag)
            ).scalar()
        if checked is not None and checked.tzinfo is None:
            checked = checked.replace(tzinfo=UTC)
        return checked

    def mark_tag_checked(self, repository: str, tag: str, when: datetime) -> None:
        # One upsert: atomic on its own, so PostgreSQL writers need not wait for each other.
        with write_transaction(self._engine, serialise_on=()) as connection:
            repository_id = self._repository_id(connection, repository, create=False)
            if repository_id is not None:
                self._mark_checked(connection, repository_id, tag, when)

    def cached_blob_size(self, repository: str, digest: str, project: str) -> int | None:
        """The size of a blob that a manifest of `repository` references and that another
        repository of `project` already holds, if any: a proxy-cache project links such a blob
        without fetching it again (it came from the same upstream)."""
        holders = repositories_table.alias("holders")
        held = repository_blobs_table.alias("held")
        with single_read(self._engine) as connection:
            size: int | None = connection.execute(
                select(blobs_table.c.size)
                .select_from(
                    manifest_blobs_table.join(
                        repository_manifests_table,
                        repository_manifests_table.c.digest
                        == manifest_blobs_table.c.manifest_digest,
                    )
                )
                .join(
                    repositories_table,
                    repositories_table.c.id == repository_manifests_table.c.repository_id,
                )
                .join(blobs_table, blobs_table.c.digest == manifest_blobs_table.c.blob_digest)
                .where(
                    repositories_table.c.name == repository,
                    manifest_blobs_table.c.blob_digest == digest,
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
        linked = repository_blobs_table.alias("linked")
        with read_transaction(self._engine) as connection:
            repository_id = self._repository_id(connection, repository, create=False)
            query = select(manifest_blobs_table.c.blob_digest).where(
                manifest_blobs_table.c.manifest_digest == manifest
            )
            if repository_id is not None:
                query = query.where(
                    ~exists().where(
                        linked.c.repository_id == repository_id,
                        linked.c.digest == manifest_blobs_table.c.blob_digest,
                    )
                )
            return sorted(connection.execute(query).scalars())

    def manifests_completed_by(self, repository: str, blob: str) -> list[tuple[str, str]]:
        """(digest, media type) of the manifests of `repository` that reference `blob` and
        have every blob they reference linked to the repository."""
        linked = repository_blobs_table.alias("linked")
        others = manifest_blobs_table.alias("others")
        with read_transaction(self._engine) as connection:
            repository_id = self._repository_id(connection, repository, create=False)
            if repository_id is None:
                return []
            rows = connection.execute(
                select(manifests_table.c.digest, manifests_table.c.media_type)
                .select_from(
                    manifest_blobs_table.join(
                        repository_manifests_table,
                        repository_manifests_table.c.digest
                        == manifest_blobs_table.c.manifest_digest,
                    ).join(
                        manifests_table,
                        manifests_table.c.digest == manifest_blobs_table.c.manifest_digest,
                    )
                )
                .where(
                    repository_manifests_table.c.repository_id == repository_id,
                    manifest_blobs_table.c.blob_digest == blob,
                    ~exists().where(
                        others.c.manifest_digest == manifest_blobs_table.c.manifest_digest,
                        ~exists().where(
                            linked.c.repository_id == repository_id,
                            linked.c.digest == others.c.blob_digest,
                        ),
                    ),
                )
            ).all()
        return [(row[0], row[1]) for row in rows]
