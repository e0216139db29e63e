"""The engine and the helpers every part of `MetadataStore` shares, and repositories.

`RegistryStoreBase` holds the engine, the dialect-aware insert-or-ignore, the repository id
lookup (creating the row on first write) and the proxy-cache tag mark that both manifest
writes and proxy-cache bookkeeping set; the other parts are mixins on top of it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, select
from sqlalchemy.dialects import postgresql, sqlite

from moorage.domain.quotas import UNLIMITED, QuotaLimits
from moorage.metadata.database import read_transaction, single_read
from moorage.metadata.lifecycle.quota_store import QuotaGuard
from moorage.metadata.registry.listing import page_query, read_page
from moorage.metadata.registry.models import utcnow
from moorage.metadata.registry.registry_records import repositories_table, tag_checks_table

_REPOSITORIES_FIRST_PAGE = page_query(repositories_table.c.name, after=False)
_REPOSITORIES_PAGE_AFTER = page_query(repositories_table.c.name, after=True)


def repository_key(name: str) -> str:
    """The advisory lock a repository's writers serialise on (PostgreSQL): its manifests,
    tags and blob links change one writer at a time, while other repositories' writers go on."""
    return f"repository:{name}"


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
