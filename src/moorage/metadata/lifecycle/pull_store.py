"""Last-pull times: one batched upsert per flush, read per repository for retention."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine, Table, case, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from moorage.metadata.database import read_transaction, write_transaction
from moorage.metadata.lifecycle.pull_models import ManifestPullRow
from moorage.metadata.registry.models import Repository

_pulls: Table = ManifestPullRow.__table__  # type: ignore[assignment]
_repositories: Table = Repository.__table__  # type: ignore[assignment]
# A flush names at most this many repositories per IN list (bound parameters stay few).
_NAMES_PER_QUERY = 500


@dataclass(frozen=True, slots=True)
class PullSummary:
    """What one process saw of one artifact since its last flush."""

    last_pulled_at: datetime
    count: int


def aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class PullStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert

    def record(self, pulls: Mapping[tuple[str, str], PullSummary]) -> int:
        """Add one batch of pulls ((repository, digest) -> summary) in one transaction; returns
        how many rows it wrote. Pulls of repositories that no longer exist are dropped.

        Every process flushes its own batch: the upsert keeps the later time and adds the
        counts, so the order in which processes and nodes flush does not matter.
        """
        if not pulls:
            return 0
        try:
            return self._record(pulls)
        except IntegrityError:
            # A repository deleted between the name lookup and the insert (PostgreSQL):
            # the lookup runs again and no longer finds it.
            return self._record(pulls)

    def _record(self, pulls: Mapping[tuple[str, str], PullSummary]) -> int:
        names = sorted({repository for repository, _ in pulls})
        # Shared writers' lock without keys: ON CONFLICT makes concurrent flushes correct,
        # and pushes are not held up by a flush.
        with write_transaction(self._engine, serialise_on=()) as connection:
            ids: dict[str, int] = {}
            for start in range(0, len(names), _NAMES_PER_QUERY):
                chunk = names[start : start + _NAMES_PER_QUERY]
                rows = connection.execute(
                    select(_repositories.c.name, _repositories.c.id).where(
                        _repositories.c.name.in_(chunk)
                    )
                )
                ids.update({name: repository_id for name, repository_id in rows})
            values = [
                {
                    "repository_id": ids[repository],
                    "digest": digest,
                    "last_pulled_at": summary.last_pulled_at,
                    "pull_count": summary.count,
                }
                for (repository, digest), summary in sorted(pulls.items())
                if repository in ids
            ]
            if not values:
                return 0
            statement = self._insert(_pulls)
            excluded = statement.excluded
            connection.execute(
                statement.on_conflict_do_update(
                    index_elements=[_pulls.c.repository_id, _pulls.c.digest],
                    set_={
                        "last_pulled_at": case(
                            (
                                excluded.last_pulled_at > _pulls.c.last_pulled_at,
                                excluded.last_pulled_at,
                            ),
                            else_=_pulls.c.last_pulled_at,
                        ),
                        "pull_count": _pulls.c.pull_count + excluded.pull_count,
                    },
                ),
                values,
            )
            return len(values)

    def last_pulled(self, repository: str, digests: Iterable[str]) -> dict[str, datetime]:
        """When each of `digests` was last pulled from `repository` (never pulled: absent)."""
        wanted = sorted(set(digests))
        found: dict[str, datetime] = {}
        with read_transaction(self._engine) as connection:
            repository_id = connection.execute(
                select(_repositories.c.id).where(_repositories.c.name == repository)
            ).scalar()
            if repository_id is None:
                return found
            for start in range(0, len(wanted), _NAMES_PER_QUERY):
                chunk = wanted[start : start + _NAMES_PER_QUERY]
                rows = connection.execute(
                    select(_pulls.c.digest, _pulls.c.last_pulled_at).where(
                        _pulls.c.repository_id == repository_id, _pulls.c.digest.in_(chunk)
                    )
                )
                found.update({digest: aware(at) for digest, at in rows})
        return found

    def pull_counts(self, repository: str) -> dict[str, int]:
        """Every recorded artifact of `repository` and its pull count."""
        with read_transaction(self._engine) as connection:
            rows = connection.execute(
                select(_pulls.c.digest, _pulls.c.pull_count)
                .join(_repositories, _repositories.c.id == _pulls.c.repository_id)
                .where(_repositories.c.name == repository)
            )
            return {digest: int(count) for digest, count in rows}
