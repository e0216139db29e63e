"""What garbage collection reads and writes: candidates, conditional marks, deletions.

Every write re-checks, inside its own transaction, the conditions the candidate was chosen by,
so anything a concurrent request did in between wins: a manifest pushed again, a tag set, a
blob linked, mounted or referenced. The conditions that make a blob garbage are in one place,
`_unreferenced_blob`; the writes that make a blob referenced touch its row on the condition
that it is live (see `moorage.metadata.registry.registry_base.claim_blob_in`), and the two
serialise on that row on every backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import (
    ColumnElement,
    Engine,
    Table,
    and_,
    delete,
    exists,
    insert,
    not_,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.exc import IntegrityError

from moorage.metadata.database import single_read, write_transaction
from moorage.metadata.lifecycle.pull_models import ManifestPullRow
from moorage.metadata.registry.models import BLOB_DELETING, BLOB_LIVE, utcnow
from moorage.metadata.registry.registry_base import repository_key
from moorage.metadata.registry.registry_records import (
    blobs_table,
    manifest_blobs_table,
    manifest_children_table,
    manifests_table,
    repositories_table,
    repository_blobs_table,
    repository_manifests_table,
    tags_table,
)
from moorage.metadata.supply_chain.scan_models import (
    ImageInventoryRow,
    ScanJobRow,
    ScanReportRow,
)
from moorage.metadata.supply_chain.vulndb_models import VulndbGenerationRow

_generations: Table = VulndbGenerationRow.__table__  # type: ignore[assignment]
_pulls: Table = ManifestPullRow.__table__  # type: ignore[assignment]
# Rows kept per manifest digest: what a scan left behind for a manifest that is gone.
_PER_MANIFEST: tuple[Table, ...] = (
    ScanJobRow.__table__,  # type: ignore[assignment]
    ScanReportRow.__table__,
    ImageInventoryRow.__table__,
)
# The one advisory key collection's own writes take (PostgreSQL): two runs never interleave.
GC_KEY = "gc"
SBOM_ANNOTATION = "dev.moorage.sbom.fingerprint"


@dataclass(frozen=True, slots=True)
class StoredBlob:
    digest: str
    size: int


@dataclass(frozen=True, slots=True)
class UntaggedManifest:
    repository: str
    digest: str
    media_type: str
    size: int


def _unreferenced_blob(cutoff: datetime) -> ColumnElement[bool]:
    """A blob that is garbage: live, untouched since `cutoff`, linked to no repository,
    referenced by no stored manifest and by no vulnerability database generation."""
    digest = blobs_table.c.digest
    return and_(
        # `|| ''` keeps SQLite off ix_blobs_state (every blob is live: it would scan them all
        # for each page); the page's digests are looked up by primary key instead.
        blobs_table.c.state + "" == BLOB_LIVE,
        blobs_table.c.touched_at < cutoff,
        not_(exists().where(repository_blobs_table.c.digest == digest)),
        not_(exists().where(manifest_blobs_table.c.blob_digest == digest)),
        not_(exists().where(_generations.c.digest == digest)),
    )


class GcStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    # -- blobs

    def blobs_in_deletion(self, alive: Sequence[str], limit: int) -> list[StoredBlob]:
        """Blobs marked 'deleting' by a run that did not get to drop them (it stopped or its
        node died), leaving out those of the runs in `alive`, which may still delete them."""
        with single_read(self._engine) as connection:
            rows = connection.execute(
                select(blobs_table.c.digest, blobs_table.c.size)
                .where(
                    blobs_table.c.state == BLOB_DELETING,
                    or_(
                        blobs_table.c.marked_by.is_(None),
                        blobs_table.c.marked_by.not_in(list(alive)),
                    ),
                )
                .order_by(blobs_table.c.digest)
                .limit(limit)
            ).all()
        return [StoredBlob(row.digest, int(row.size)) for row in rows]

    def garbage_blobs(
        self, after: str, limit: int, cutoff: datetime
    ) -> tuple[list[StoredBlob], str]:
        """One page of unreferenced blobs past `after`, and the cursor to go on from (the last
        blob looked at, garbage or not; '' when the table is done)."""
        with single_read(self._engine) as connection:
            page = list(
                connection.execute(
                    select(blobs_table.c.digest)
                    .where(blobs_table.c.digest > after)
                    .order_by(blobs_table.c.digest)
                    .limit(limit)
                ).scalars()
            )
        if not page:
            return [], ""
        with single_read(self._engine) as connection:
            rows = connection.execute(
                select(blobs_table.c.digest, blobs_table.c.size)
                .where(blobs_table.c.digest.in_(page), _unreferenced_blob(cutoff))
                .order_by(blobs_table.c.digest)
            ).all()
        return [StoredBlob(row.digest, int(row.size)) for row in rows], page[-1]

    def mark_deleting(
        self, run_id: str, digests: Sequence[str], cutoff: datetime
    ) -> list[StoredBlob]:
        """Mark the blobs among `digests` that are still garbage as 'deleting'; those marked.

        From this commit on no request can reference them (their claims and touches require
        'live'); a request that touched one first has moved its `touched_at` past `cutoff`.
        """
        if not digests:
            return []
        with write_transaction(self._engine, serialise_on=[GC_KEY]) as connection:
            rows = connection.execute(
                update(blobs_table)
                .where(blobs_table.c.digest.in_(list(digests)), _unreferenced_blob(cutoff))
                .values(state=BLOB_DELETING, marked_by=run_id)
                .returning(blobs_table.c.digest, blobs_table.c.size)
            ).all()
        return sorted((StoredBlob(row.digest, int(row.size)) for row in rows), key=_by_digest)

    def drop_deleted(self, digests: Sequence[str]) -> int:
        """Forget blobs whose bytes are gone from storage; a push may store them again now."""
        if not digests:
            return 0
        with write_transaction(self._engine, serialise_on=[GC_KEY]) as connection:
            return connection.execute(
                delete(blobs_table).where(
                    blobs_table.c.digest.in_(list(digests)),
                    blobs_table.c.state == BLOB_DELETING,
                )
            ).rowcount

    def claim_orphans(self, run_id: str, found: Sequence[StoredBlob]) -> list[StoredBlob]:
        """Storage objects with no blob row: record them as 'deleting' (so a push of the same
        digest waits for the deletion), unless a row or a generation appeared meanwhile."""
        if not found:
            return []
        digests = [blob.digest for blob in found]
        with write_transaction(self._engine, serialise_on=[GC_KEY]) as connection:
            known = set(
                connection.execute(
                    select(blobs_table.c.digest).where(blobs_table.c.digest.in_(digests))
                ).scalars()
            ) | set(
                connection.execute(
                    select(_generations.c.digest).where(_generations.c.digest.in_(digests))
                ).scalars()
            )
            orphans = [blob for blob in found if blob.digest not in known]
            if orphans:
                now = utcnow()
                connection.execute(
                    insert(blobs_table),
                    [
                        {
                            "digest": blob.digest,
                            "size": blob.size,
                            "created_at": now,
                            "touched_at": now,
                            "state": BLOB_DELETING,
                            "marked_by": run_id,
                        }
                        for blob in orphans
                    ],
                )
        return orphans

    def known_blobs(self, digests: Sequence[str]) -> set[str]:
        """Which of `digests` have a blob row or a generation (the rest are orphans)."""
        if not digests:
            return set()
        with single_read(self._engine) as connection:
            rows = connection.execute(
                select(blobs_table.c.digest)
                .where(blobs_table.c.digest.in_(list(digests)))
                .union(
                    select(_generations.c.digest).where(_generations.c.digest.in_(list(digests)))
                )
            ).scalars()
            return set(rows)

    # -- repository links

    def repositories_after(self, after: str, limit: int) -> list[tuple[int, str]]:
        with single_read(self._engine) as connection:
            rows = connection.execute(
                select(repositories_table.c.id, repositories_table.c.name)
                .where(repositories_table.c.name > after)
                .order_by(repositories_table.c.name)
                .limit(limit)
            ).all()
        return [(int(row.id), str(row.name)) for row in rows]

    @staticmethod
    def _unneeded_link(repository_id: int, cutoff: datetime) -> ColumnElement[bool]:
        """A link no manifest of its repository needs, older than `cutoff`."""
        return and_(
            repository_blobs_table.c.repository_id == repository_id,
            repository_blobs_table.c.created_at < cutoff,
            not_(
                exists().where(
                    manifest_blobs_table.c.blob_digest == repository_blobs_table.c.digest,
                    repository_manifests_table.c.digest == manifest_blobs_table.c.manifest_digest,
                    # `+ 0`: look up the manifests that reference this blob, then check their
                    # repository; not every manifest of the repository for every link.
                    repository_manifests_table.c.repository_id + 0 == repository_id,
                )
            ),
        )

    def unneeded_links(self, repository_id: int, cutoff: datetime, limit: int) -> list[str]:
        with single_read(self._engine) as connection:
            return list(
                connection.execute(
                    select(repository_blobs_table.c.digest)
                    .where(self._unneeded_link(repository_id, cutoff))
                    .order_by(repository_blobs_table.c.digest)
                    .limit(limit)
                ).scalars()
            )

    def unlink(
        self, repository_id: int, repository: str, digests: Sequence[str], cutoff: datetime
    ) -> list[str]:
        """Remove the links among `digests` that are still unneeded (serial with the
        repository's pushes, which check their links in the same way)."""
        if not digests:
            return []
        with write_transaction(
            self._engine, serialise_on=[repository_key(repository)]
        ) as connection:
            removed = connection.execute(
                delete(repository_blobs_table)
                .where(
                    repository_blobs_table.c.digest.in_(list(digests)),
                    self._unneeded_link(repository_id, cutoff),
                )
                .returning(repository_blobs_table.c.digest)
            ).scalars()
            return sorted(removed)

    # -- manifests

    @staticmethod
    def _untagged(repository_id: int, cutoff: datetime, *, only_sboms: bool) -> ColumnElement[bool]:
        """A manifest of the repository that no tag names, pushed before `cutoff`, that no
        manifest of the repository lists as a child, and that is not a referrer of a manifest
        still in the repository (referrers live and die with their subject). With
        `only_sboms`, only the SBOMs this registry attached, once their subject is gone."""
        digest = repository_manifests_table.c.digest
        parent = repository_manifests_table.alias("parent")
        subject = repository_manifests_table.alias("subject")
        condition = and_(
            repository_manifests_table.c.repository_id == repository_id,
            repository_manifests_table.c.touched_at < cutoff,
            not_(
                exists().where(
                    tags_table.c.repository_id == repository_id,
                    tags_table.c.manifest_digest == digest,
                )
            ),
            not_(
                exists().where(
                    manifest_children_table.c.child_digest == digest,
                    parent.c.digest == manifest_children_table.c.parent_digest,
                    parent.c.repository_id == repository_id,
                )
            ),
            not_(
                exists().where(
                    manifests_table.c.digest == digest,
                    subject.c.digest == manifests_table.c.subject_digest,
                    subject.c.repository_id == repository_id,
                )
            ),
        )
        if only_sboms:
            condition = and_(
                condition,
                exists().where(
                    manifests_table.c.digest == digest,
                    manifests_table.c.subject_digest.is_not(None),
                    manifests_table.c.annotations.contains(SBOM_ANNOTATION),
                ),
            )
        return condition

    def untagged_manifests(
        self, repository_id: int, cutoff: datetime, limit: int, *, only_sboms: bool
    ) -> list[str]:
        with single_read(self._engine) as connection:
            return list(
                connection.execute(
                    select(repository_manifests_table.c.digest)
                    .where(self._untagged(repository_id, cutoff, only_sboms=only_sboms))
                    .order_by(repository_manifests_table.c.digest)
                    .limit(limit)
                ).scalars()
            )

    def remove_untagged(
        self,
        repository_id: int,
        repository: str,
        digests: Sequence[str],
        cutoff: datetime,
        *,
        only_sboms: bool,
    ) -> list[UntaggedManifest]:
        """Take the manifests among `digests` that still qualify out of the repository."""
        if not digests:
            return []
        with write_transaction(
            self._engine, serialise_on=[repository_key(repository)]
        ) as connection:
            removed = list(
                connection.execute(
                    delete(repository_manifests_table)
                    .where(
                        repository_manifests_table.c.digest.in_(list(digests)),
                        self._untagged(repository_id, cutoff, only_sboms=only_sboms),
                    )
                    .returning(repository_manifests_table.c.digest)
                ).scalars()
            )
            if not removed:
                return []
            rows = connection.execute(
                select(
                    manifests_table.c.digest, manifests_table.c.media_type, manifests_table.c.size
                ).where(manifests_table.c.digest.in_(removed))
            ).all()
        return sorted(
            (
                UntaggedManifest(repository, row.digest, row.media_type, int(row.size))
                for row in rows
            ),
            key=lambda manifest: manifest.digest,
        )

    def manifests_in_no_repository(self, limit: int) -> list[str]:
        """Stored manifests no repository holds and no stored index lists: their rows (and
        with them their blob references) can go."""
        with single_read(self._engine) as connection:
            return list(
                connection.execute(
                    select(manifests_table.c.digest)
                    .where(self._homeless())
                    .order_by(manifests_table.c.digest)
                    .limit(limit)
                ).scalars()
            )

    @staticmethod
    def _homeless() -> ColumnElement[bool]:
        digest = manifests_table.c.digest
        return and_(
            not_(exists().where(repository_manifests_table.c.digest == digest)),
            not_(exists().where(manifest_children_table.c.child_digest == digest)),
        )

    def forget_manifests(self, digests: Sequence[str]) -> list[str]:
        """Delete the rows of manifests that are still in no repository, with what scans kept
        for them; those deleted. A push that re-adds one in the meantime wins (on PostgreSQL
        its link's foreign key makes this batch fail; it is retried one by one)."""
        if not digests:
            return []
        try:
            return self._forget_manifests(list(digests))
        except IntegrityError:
            gone: list[str] = []
            for digest in digests:
                try:
                    gone += self._forget_manifests([digest])
                except IntegrityError:
                    continue
            return gone

    def _forget_manifests(self, digests: list[str]) -> list[str]:
        with write_transaction(self._engine, serialise_on=[GC_KEY]) as connection:
            deleted = sorted(
                connection.execute(
                    delete(manifests_table)
                    .where(manifests_table.c.digest.in_(digests), self._homeless())
                    .returning(manifests_table.c.digest)
                ).scalars()
            )
            if deleted:
                # Cascades are not relied on: SQLite enforces them only with its pragma on.
                connection.execute(
                    delete(manifest_blobs_table).where(
                        manifest_blobs_table.c.manifest_digest.in_(deleted)
                    )
                )
                connection.execute(
                    delete(manifest_children_table).where(
                        manifest_children_table.c.parent_digest.in_(deleted)
                    )
                )
                for table in _PER_MANIFEST:
                    connection.execute(delete(table).where(table.c.digest.in_(deleted)))
            return deleted

    def forget_stale_pulls(self, limit: int) -> int:
        """Drop the pull times of manifests no longer in their repository (a later push of
        the same digest starts a fresh history)."""
        stale = not_(
            exists().where(
                repository_manifests_table.c.repository_id == _pulls.c.repository_id,
                repository_manifests_table.c.digest == _pulls.c.digest,
            )
        )
        with write_transaction(self._engine, serialise_on=[GC_KEY]) as connection:
            rows = connection.execute(
                select(_pulls.c.repository_id, _pulls.c.digest).where(stale).limit(limit)
            ).all()
            if not rows:
                return 0
            return connection.execute(
                delete(_pulls).where(
                    tuple_(_pulls.c.repository_id, _pulls.c.digest).in_(
                        [(row.repository_id, row.digest) for row in rows]
                    ),
                    stale,
                )
            ).rowcount

    def scan_rows_without_manifest(self, limit: int) -> list[str]:
        """Digests of scan jobs, reports and inventories whose manifest is gone (left by
        versions that deleted manifests without them)."""
        found: set[str] = set()
        with single_read(self._engine) as connection:
            for table in _PER_MANIFEST:
                found |= set(
                    connection.execute(
                        select(table.c.digest)
                        .where(not_(exists().where(manifests_table.c.digest == table.c.digest)))
                        .limit(limit)
                    ).scalars()
                )
        return sorted(found)[:limit]

    def forget_scan_rows(self, digests: Sequence[str]) -> int:
        if not digests:
            return 0
        removed = 0
        with write_transaction(self._engine, serialise_on=[GC_KEY]) as connection:
            for table in _PER_MANIFEST:
                removed += connection.execute(
                    delete(table).where(
                        table.c.digest.in_(list(digests)),
                        not_(exists().where(manifests_table.c.digest == table.c.digest)),
                    )
                ).rowcount
        return removed


def _by_digest(blob: StoredBlob) -> str:
    return blob.digest
