"""Blobs in the metadata store: which blobs exist, their sizes, and their repository links.

Linking, mounting and unlinking are one write transaction each; unlinking is refused while
a manifest of the repository still needs the blob. Whatever links a blob first claims its row
(see `RegistryStoreBase._claim_blob_in`), which garbage collection respects: a blob being
deleted from storage cannot be linked (`BlobBeingCollectedError`), and a blob just linked is
never deleted.
"""

from __future__ import annotations

from sqlalchemy import bindparam, delete, select

from moorage.metadata.database import read_transaction, single_read, write_transaction
from moorage.metadata.registry.models import utcnow
from moorage.metadata.registry.registry_base import (
    RegistryStoreBase,
    blob_key,
    repository_key,
)
from moorage.metadata.registry.registry_records import (
    BlobBeingCollectedError,
    StillReferencedError,
    blobs_table,
    manifest_blobs_table,
    repositories_table,
    repository_blobs_table,
    repository_manifests_table,
)

# The hot read is built once: constructing SQLAlchemy expressions per call costs more than
# running the (cached, compiled) statement.
_BLOB_IN_REPOSITORY = (
    select(blobs_table.c.size)
    .select_from(
        repository_blobs_table.join(
            repositories_table, repositories_table.c.id == repository_blobs_table.c.repository_id
        )
    )
    .join(blobs_table, blobs_table.c.digest == repository_blobs_table.c.digest)
    .where(
        repositories_table.c.name == bindparam("repository"),
        repository_blobs_table.c.digest == bindparam("digest"),
    )
)


class BlobQueries(RegistryStoreBase):
    def blob_size_in_repository(self, repository: str, digest: str) -> int | None:
        with single_read(self._engine) as connection:
            return connection.execute(
                _BLOB_IN_REPOSITORY, {"repository": repository, "digest": digest}
            ).scalar()

    def blob_size(self, digest: str) -> int | None:
        with read_transaction(self._engine) as connection:
            return connection.execute(
                select(blobs_table.c.size).where(blobs_table.c.digest == digest)
            ).scalar()

    def claim_blob(self, digest: str, size: int) -> bool:
        """Before committing a blob's bytes to storage: make sure garbage collection leaves the
        digest alone (its row is created, or touched). False while a collection is deleting
        this very blob from storage: the caller waits and claims again."""
        with write_transaction(self._engine, serialise_on=[blob_key(digest)]) as connection:
            return self._claim_blob_in(connection, digest, size, utcnow())

    def blob_state(self, digest: str) -> str | None:
        with single_read(self._engine) as connection:
            return connection.execute(
                select(blobs_table.c.state).where(blobs_table.c.digest == digest)
            ).scalar()

    def link_blob(self, repository: str, digest: str, size: int) -> None:
        """Record a committed blob and make it readable through `repository`.

        BlobBeingCollectedError when a collection took the blob since it was claimed (the
        claim's grace period ran out before the bytes were committed).
        """
        now = utcnow()
        with write_transaction(
            self._engine, serialise_on=[repository_key(repository)]
        ) as connection:
            if not self._claim_blob_in(connection, digest, size, now):
                raise BlobBeingCollectedError(digest)
            repository_id = self._repository_id(connection, repository, create=True)
            assert repository_id is not None
            self._quota.before_blob_link(connection, repository, digest, size)
            self._link_in(connection, repository_id, [digest], now)

    def mount_blob(self, source: str, target: str, digest: str) -> int | None:
        """Link a blob of `source` into `target` without copying; its size, or None."""
        keys = [repository_key(source), repository_key(target)]
        with write_transaction(self._engine, serialise_on=keys) as connection:
            size = connection.execute(
                select(blobs_table.c.size)
                .select_from(
                    repository_blobs_table.join(
                        repositories_table,
                        repositories_table.c.id == repository_blobs_table.c.repository_id,
                    )
                )
                .join(blobs_table, blobs_table.c.digest == repository_blobs_table.c.digest)
                .where(
                    repositories_table.c.name == source, repository_blobs_table.c.digest == digest
                )
            ).scalar()
            if size is None:
                return None
            now = utcnow()
            if not self._touch_blobs_in(connection, [digest], now):
                return None  # being collected: the client uploads it instead
            self._quota.before_blob_link(connection, target, digest, int(size))
            target_id = self._repository_id(connection, target, create=True)
            assert target_id is not None
            self._link_in(connection, target_id, [digest], now)
            return int(size)

    def unlink_blob(self, repository: str, digest: str) -> bool:
        """Remove a blob from a repository; refuse while a manifest there still needs it."""
        with write_transaction(
            self._engine, serialise_on=[repository_key(repository)]
        ) as connection:
            repository_id = self._repository_id(connection, repository, create=False)
            if repository_id is None:
                return False
            users = connection.execute(
                select(manifest_blobs_table.c.manifest_digest)
                .join(
                    repository_manifests_table,
                    repository_manifests_table.c.digest == manifest_blobs_table.c.manifest_digest,
                )
                .where(
                    repository_manifests_table.c.repository_id == repository_id,
                    manifest_blobs_table.c.blob_digest == digest,
                )
                .limit(5)
            ).scalars()
            referenced_by = list(users)
            if referenced_by:
                raise StillReferencedError(referenced_by)
            result = connection.execute(
                delete(repository_blobs_table).where(
                    repository_blobs_table.c.repository_id == repository_id,
                    repository_blobs_table.c.digest == digest,
                )
            )
            return result.rowcount > 0
