"""Reads across the whole registry: referrers of a subject and consistency checks.

Referrers (the OCI referrers API) and `stored_artifacts` filter manifests by subject or
artifact type; the integrity queries (missing blobs, every blob, row counts) serve
`moorage.integrity` and management commands.
"""

from __future__ import annotations

import json

from sqlalchemy import exists, func, select

from moorage.metadata.database import read_transaction
from moorage.metadata.registry.registry_base import RegistryStoreBase
from moorage.metadata.registry.registry_records import (
    ReferrerRecord,
    blobs_table,
    manifest_blobs_table,
    manifests_table,
    repositories_table,
    repository_manifests_table,
    tags_table,
)


class IntegrityQueries(RegistryStoreBase):
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
                manifests_table.c.digest,
                manifests_table.c.media_type,
                manifests_table.c.size,
                manifests_table.c.artifact_type,
                manifests_table.c.annotations,
            )
            .select_from(
                repository_manifests_table.join(
                    repositories_table,
                    repositories_table.c.id == repository_manifests_table.c.repository_id,
                )
            )
            .join(manifests_table, manifests_table.c.digest == repository_manifests_table.c.digest)
            .where(
                repositories_table.c.name == repository, manifests_table.c.subject_digest == subject
            )
            .order_by(manifests_table.c.digest)
            .limit(limit)
        )
        if artifact_type is not None:
            query = query.where(manifests_table.c.artifact_type == artifact_type)
        if after is not None:
            query = query.where(manifests_table.c.digest > after)
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
            select(
                repositories_table.c.name, manifests_table.c.digest, manifests_table.c.annotations
            )
            .select_from(
                repository_manifests_table.join(
                    repositories_table,
                    repositories_table.c.id == repository_manifests_table.c.repository_id,
                )
            )
            .join(manifests_table, manifests_table.c.digest == repository_manifests_table.c.digest)
            .where(manifests_table.c.artifact_type == artifact_type)
            .order_by(repositories_table.c.name, manifests_table.c.digest)
        )
        with read_transaction(self._engine) as connection:
            rows = connection.execute(query).all()
        return [(row[0], row[1], json.loads(row[2]) if row[2] else {}) for row in rows]

    def manifests_with_missing_blobs(self) -> list[tuple[str, str]]:
        """(manifest, blob) pairs where a referenced, distributable blob has no blob row."""
        query = select(
            manifest_blobs_table.c.manifest_digest, manifest_blobs_table.c.blob_digest
        ).where(~exists().where(blobs_table.c.digest == manifest_blobs_table.c.blob_digest))
        with read_transaction(self._engine) as connection:
            return [(row[0], row[1]) for row in connection.execute(query)]

    def all_blobs(self) -> list[tuple[str, int]]:
        with read_transaction(self._engine) as connection:
            return [
                (row[0], row[1])
                for row in connection.execute(select(blobs_table.c.digest, blobs_table.c.size))
            ]

    def counts(self) -> dict[str, int]:
        with read_transaction(self._engine) as connection:
            return {
                table.name: connection.execute(select(func.count()).select_from(table)).scalar_one()
                for table in (repositories_table, blobs_table, manifests_table, tags_table)
            }
