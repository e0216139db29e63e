"""Deleting a repository's metadata: one write transaction, serialised on the repository.

Everything that names the repository goes at once (tags, manifest and blob links, proxy-cache
tag checks, the scan reports, queued scans and inventories of manifests no other repository
holds, what pull replication recorded copying into it, and the repository row), so a concurrent
push into it lands wholly before (and is deleted with it) or wholly after (and re-creates it).
The bytes stay in storage: garbage collection frees what no longer has a reference. Manifest
rows no repository holds are left to garbage collection too (as after a manifest delete).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Table, delete, func, select, update

from moorage.metadata.database import single_read, write_transaction
from moorage.metadata.distribution.replication_models import (
    ReplicationCopyRow,
    ReplicationRuleRow,
)
from moorage.metadata.registry.registry_base import RegistryStoreBase, repository_key
from moorage.metadata.registry.registry_records import (
    repositories_table,
    repository_blobs_table,
    repository_manifests_table,
    tag_checks_table,
    tags_table,
)
from moorage.metadata.supply_chain.scan_models import (
    ImageInventoryRow,
    InventoryKeyRow,
    ScanJobRow,
    ScanReportRow,
)

_copies: Table = ReplicationCopyRow.__table__  # type: ignore[assignment]
_rules: Table = ReplicationRuleRow.__table__  # type: ignore[assignment]
_reports: Table = ScanReportRow.__table__  # type: ignore[assignment]
_jobs: Table = ScanJobRow.__table__  # type: ignore[assignment]
_inventories: Table = ImageInventoryRow.__table__  # type: ignore[assignment]
_inventory_keys: Table = InventoryKeyRow.__table__  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class DeletedRepository:
    """What a repository held when it was deleted."""

    name: str
    tags: int
    manifests: int
    blobs: int
    # Manifests no other repository holds: their scan reports went with the repository.
    unshared_manifests: int


def _holder_of(digest: Any, deleted_id: int) -> Any:
    """Another repository that holds the manifest `digest` (correlated: per row updated)."""
    return (
        select(func.min(repositories_table.c.name))
        .join(
            repository_manifests_table,
            repository_manifests_table.c.repository_id == repositories_table.c.id,
        )
        .where(
            repository_manifests_table.c.digest == digest,
            repository_manifests_table.c.repository_id != deleted_id,
        )
        .scalar_subquery()
    )


class DeletionStore(RegistryStoreBase):
    def repositories_of(self, project: str) -> list[str]:
        """Every repository of `project` (its name, or a name below it), sorted."""
        # Escaping LIKE's wildcards is not needed: names hold no '%', and '_' matches itself
        # too; the project prefix is then checked exactly.
        with single_read(self._engine) as connection:
            names = connection.execute(
                select(repositories_table.c.name)
                .where(
                    (repositories_table.c.name == project)
                    | repositories_table.c.name.like(f"{project}/%")
                )
                .order_by(repositories_table.c.name)
            ).scalars()
            return [n for n in names if n == project or n.startswith(f"{project}/")]

    def delete_repository(
        self, name: str, *, check: Callable[[list[str]], None] | None = None
    ) -> DeletedRepository | None:
        """Delete the repository and everything that names it; None: there is no such
        repository (any more).

        `check(tags)` runs inside the transaction with the repository's tags as they are
        then, before anything is deleted: whatever it raises undoes the deletion.
        """
        with write_transaction(self._engine, serialise_on=[repository_key(name)]) as connection:
            repository_id = self._repository_id(connection, name, create=False)
            if repository_id is None:
                return None
            if check is not None:
                check(
                    list(
                        connection.execute(
                            select(tags_table.c.name).where(
                                tags_table.c.repository_id == repository_id
                            )
                        ).scalars()
                    )
                )
            return self._delete_in(connection, name, repository_id)

    def _delete_in(
        self, connection: Connection, name: str, repository_id: int
    ) -> DeletedRepository:
        # First, while the repository still holds its manifests: their scan state.
        unshared = self._forget_unshared(connection, name, repository_id)
        tags = connection.execute(
            delete(tags_table).where(tags_table.c.repository_id == repository_id)
        ).rowcount
        connection.execute(
            delete(tag_checks_table).where(tag_checks_table.c.repository_id == repository_id)
        )
        manifests = connection.execute(
            delete(repository_manifests_table).where(
                repository_manifests_table.c.repository_id == repository_id
            )
        ).rowcount
        blobs = connection.execute(
            delete(repository_blobs_table).where(
                repository_blobs_table.c.repository_id == repository_id
            )
        ).rowcount
        # Pull replication copied these into the repository; they are gone with it, so a
        # mirrored deletion must never remove what a later push puts under the same name.
        # (A push rule's copies name a remote destination: they stay, so its mirrored
        # deletions remove the remote copies of what was deleted here.)
        pull_rules = select(_rules.c.id).where(_rules.c.direction == "pull").scalar_subquery()
        connection.execute(
            delete(_copies).where(_copies.c.destination == name, _copies.c.rule_id.in_(pull_rules))
        )
        connection.execute(
            delete(repositories_table).where(repositories_table.c.id == repository_id)
        )
        return DeletedRepository(name, tags, manifests, blobs, unshared)

    def _forget_unshared(self, connection: Connection, name: str, repository_id: int) -> int:
        """Drop the scan state of the repository's manifests no other repository holds, and
        re-point the reports and queued scans of the others at a repository that holds them
        (set-based: a few statements whatever the repository's size). How many were
        unshared."""
        own = repository_manifests_table.alias("own")
        other = repository_manifests_table.alias("other")
        elsewhere = (
            select(other.c.digest)
            .where(other.c.digest == own.c.digest, other.c.repository_id != repository_id)
            .exists()
        )
        unshared = select(own.c.digest).where(own.c.repository_id == repository_id, ~elsewhere)
        shared = select(own.c.digest).where(own.c.repository_id == repository_id, elsewhere)
        count = int(
            connection.execute(select(func.count()).select_from(unshared.subquery())).scalar_one()
        )
        if count:
            for table in (_jobs, _reports, _inventory_keys, _inventories):
                connection.execute(delete(table).where(table.c.digest.in_(unshared)))
        for table in (_jobs, _reports):
            connection.execute(
                update(table)
                .where(table.c.repository == name, table.c.digest.in_(shared))
                .values(repository=_holder_of(table.c.digest, repository_id))
            )
        return count
