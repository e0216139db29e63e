"""The engine and the helpers every part of `MetadataStore` shares, and repositories.

`RegistryStoreBase` holds the engine, the dialect-aware insert-or-ignore, the repository id
lookup (creating the row on first write) and the proxy-cache tag mark that both manifest
writes and proxy-cache bookkeeping set; the other parts are mixins on top of it.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, select, update
from sqlalchemy.dialects import postgresql, sqlite

from moorage.domain.quotas import UNLIMITED, QuotaLimits
from moorage.metadata.database import read_transaction, single_read
from moorage.metadata.lifecycle.quota_store import QuotaGuard
from moorage.metadata.registry.listing import page_query, read_page
from moorage.metadata.registry.models import BLOB_LIVE, utcnow
from moorage.metadata.registry.registry_records import (
    blobs_table,
    repositories_table,
    repository_blobs_table,
    tag_checks_table,
)

_REPOSITORIES_FIRST_PAGE = page_query(repositories_table.c.name, after=False)
_REPOSITORIES_PAGE_AFTER = page_query(repositories_table.c.name, after=True)


def repository_key(name: str) -> str:
    """The advisory lock a repository's writers serialise on (PostgreSQL): its manifests,
    tags and blob links change one writer at a time, while other repositories' writers go on."""
    return f"repository:{name}"


def claim_blob_in(connection: Connection, digest: str, size: int, now: datetime) -> bool:
    """Create the blob's row, or touch it if it is live; False while it is being deleted.

    The conditional upsert takes the row's lock, so it and a collection's conditional mark of
    the same row are serial on every backend: after this commits, the collection sees a fresh
    `touched_at` and leaves the blob; after the mark commits, this finds it 'deleting' and
    changes nothing.
    """
    insert = postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
    statement = (
        insert(blobs_table)
        .values(digest=digest, size=size, created_at=now, state=BLOB_LIVE, touched_at=now)
        .on_conflict_do_update(
            index_elements=[blobs_table.c.digest],
            set_={"touched_at": now},
            where=blobs_table.c.state == BLOB_LIVE,
        )
        .returning(blobs_table.c.digest)
    )
    return connection.execute(statement).first() is not None


def blob_key(digest: str) -> str:
    """The advisory lock a blob's claim takes (PostgreSQL) when no repository is involved."""
    return f"blob:{digest}"


class RegistryStoreBase:
    """The engine and the helpers the parts of `MetadataStore` share."""

    def __init__(self, engine: Engine, *, quota_defaults: QuotaLimits = UNLIMITED) -> None:
        self._engine = engine
        self._dialect = engine.dialect.name
        # Checked inside the transactions that link blobs and manifests.
        self._quota = QuotaGuard(quota_defaults)

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
            select(repositories_table.c.id).where(repositories_table.c.name == name)
        ).scalar()
        if found is not None or not create:
            return found
        self._insert_ignore(
            connection, repositories_table, [{"name": name, "created_at": utcnow()}]
        )
        return int(
            connection.execute(
                select(repositories_table.c.id).where(repositories_table.c.name == name)
            ).scalar_one()
        )

    # -- blob claims: what keeps garbage collection off a blob that is being referenced

    def _claim_blob_in(self, connection: Connection, digest: str, size: int, now: datetime) -> bool:
        return claim_blob_in(connection, digest, size, now)

    def _touch_blobs_in(
        self, connection: Connection, digests: Iterable[str], now: datetime
    ) -> set[str]:
        """Touch the live rows among `digests` (see `_claim_blob_in`); the digests touched."""
        wanted = sorted(set(digests))
        if not wanted:
            return set()
        touched = connection.execute(
            update(blobs_table)
            .where(blobs_table.c.digest.in_(wanted), blobs_table.c.state == BLOB_LIVE)
            .values(touched_at=now)
            .returning(blobs_table.c.digest)
        ).scalars()
        return set(touched)

    def _link_in(
        self, connection: Connection, repository_id: int, digests: list[str], now: datetime
    ) -> None:
        """Link blobs to a repository, or renew the links' time (a fresh link is not garbage
        during the grace period, even when it existed before)."""
        self._upsert_in_repository(
            connection, repository_blobs_table, repository_id, digests, now, renew="created_at"
        )

    def _upsert_in_repository(
        self,
        connection: Connection,
        table: Any,
        repository_id: int,
        digests: list[str],
        now: datetime,
        *,
        renew: str,
    ) -> None:
        """Insert (repository, digest) rows of `table` stamped `now`; rows already there get
        only their `renew` column moved to `now`."""
        if not digests:
            return
        insert = postgresql.insert if self._dialect == "postgresql" else sqlite.insert
        statement = insert(table)
        stamps = {"created_at": now, renew: now}
        connection.execute(
            statement.on_conflict_do_update(
                index_elements=[table.c.repository_id, table.c.digest],
                set_={renew: statement.excluded[renew]},
            ),
            [
                {"repository_id": repository_id, "digest": digest, **stamps}
                for digest in dict.fromkeys(digests)
            ],
        )

    # -- repositories

    def repository_exists(self, name: str) -> bool:
        with read_transaction(self._engine) as connection:
            return self._repository_id(connection, name, create=False) is not None

    def list_repositories(self, last: str | None, limit: int) -> list[str]:
        with single_read(self._engine) as connection:
            if last is None:
                return read_page(connection, _REPOSITORIES_FIRST_PAGE, {"limit": limit})
            return read_page(connection, _REPOSITORIES_PAGE_AFTER, {"limit": limit, "last": last})

    # -- proxy-cache tag marks (set by manifest writes and by proxy-cache bookkeeping)

    def _mark_checked(
        self, connection: Connection, repository_id: int, tag: str, when: datetime
    ) -> None:
        insert = postgresql.insert if self._dialect == "postgresql" else sqlite.insert
        statement = insert(tag_checks_table).values(
            repository_id=repository_id, tag=tag, checked_at=when
        )
        connection.execute(
            statement.on_conflict_do_update(
                index_elements=[tag_checks_table.c.repository_id, tag_checks_table.c.tag],
                set_={"checked_at": when},
            )
        )
