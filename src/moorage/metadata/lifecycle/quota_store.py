"""Project quotas in the metadata store: the check at commit time, usage, limits, recount.

`QuotaGuard` runs inside the write transaction that links a blob or a manifest (called once
from `registry_blobs` and `registry_manifests`): when a limit applies to the project it takes
the project's advisory lock (PostgreSQL), reads the counters and refuses with
`QuotaExceededError` before the link is inserted, so the check and the link are one atomic
step and concurrent pushes never take a project over its quota. The counters themselves are
kept by triggers (`quota_triggers`); `QuotaStore.recount` rebuilds them from the links.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Table,
    bindparam,
    case,
    delete,
    func,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from moorage.domain.names import project_of
from moorage.domain.quotas import (
    UNLIMITED,
    QuotaLimits,
    QuotaOverride,
    QuotaState,
    QuotaUsage,
    excess,
)
from moorage.metadata.access.iam_models import Project, ProxyUpstreamRow
from moorage.metadata.database import read_transaction, serialise, write_transaction
from moorage.metadata.lifecycle.pull_models import ManifestPullRow
from moorage.metadata.lifecycle.quota_models import ProjectQuota, QuotaProjectBlob, QuotaUsageRow
from moorage.metadata.registry.models import utcnow
from moorage.metadata.registry.registry_records import (
    blobs_table,
    manifest_blobs_table,
    repositories_table,
    repository_blobs_table,
    repository_manifests_table,
)

quotas_table: Table = ProjectQuota.__table__  # type: ignore[assignment]
usage_table: Table = QuotaUsageRow.__table__  # type: ignore[assignment]
project_blobs_table: Table = QuotaProjectBlob.__table__  # type: ignore[assignment]
_proxy_table: Table = ProxyUpstreamRow.__table__  # type: ignore[assignment]
_projects_table: Table = Project.__table__  # type: ignore[assignment]
_pulls_table: Table = ManifestPullRow.__table__  # type: ignore[assignment]


def project_key(project: str) -> str:
    """The advisory lock quota-checked writers of a project serialise on (PostgreSQL)."""
    return f"project:{project}"


# The statements of the check run on every upload: built once (constructing them per call
# costs more than running them).
_OVERRIDE = select(quotas_table.c.bytes_limit, quotas_table.c.artifacts_limit).where(
    quotas_table.c.project == bindparam("project")
)
_USAGE = select(usage_table.c.bytes, usage_table.c.artifacts, usage_table.c.state).where(
    usage_table.c.project == bindparam("project")
)
_HELD = select(project_blobs_table.c.links).where(
    project_blobs_table.c.project == bindparam("project"),
    project_blobs_table.c.digest == bindparam("digest"),
)


def _read_override(connection: Connection, project: str) -> QuotaOverride:
    row = connection.execute(_OVERRIDE, {"project": project}).first()
    return QuotaOverride() if row is None else QuotaOverride(row[0], row[1])


def _read_usage(connection: Connection, project: str) -> tuple[QuotaUsage, QuotaState]:
    row = connection.execute(_USAGE, {"project": project}).first()
    if row is None:
        return QuotaUsage(), QuotaState.OK
    return QuotaUsage(int(row[0]), int(row[1])), QuotaState(row[2])


def _is_proxy_cache(connection: Connection, project: str) -> bool:
    return (
        connection.execute(
            select(_proxy_table.c.project_id)
            .join(_projects_table, _projects_table.c.id == _proxy_table.c.project_id)
            .where(_projects_table.c.name == project)
        ).first()
        is not None
    )


class QuotaGuard:
    """The commit-time check; `defaults` are the system-wide limits (settings)."""

    def __init__(self, defaults: QuotaLimits = UNLIMITED) -> None:
        self.defaults = defaults

    def _applicable(self, connection: Connection, project: str) -> QuotaLimits:
        limits = _read_override(connection, project).applied_to(self.defaults)
        if limits.any:
            # Re-read after the lock: what the previous writer of the project committed.
            serialise(connection, project_key(project))
        return limits

    def _decide(
        self, connection: Connection, project: str, limits: QuotaLimits, add_bytes: int, add: int
    ) -> None:
        usage, _state = _read_usage(connection, project)
        refusal = excess(project, limits, usage, add_bytes=add_bytes, add_artifacts=add)
        # Proxy-cache projects are capped by eviction afterwards, never refused.
        if refusal is not None and not _is_proxy_cache(connection, project):
            raise refusal

    def before_blob_link(
        self, connection: Connection, repository: str, digest: str, size: int
    ) -> None:
        """Before linking `digest` into `repository`: refuse if its bytes are new to the
        project and would take it over its storage quota."""
        project = project_of(repository)
        limits = self._applicable(connection, project)
        if limits.bytes is None:
            return
        held = connection.execute(_HELD, {"project": project, "digest": digest}).scalar()
        if held:
            return
        self._decide(connection, project, limits, size, 0)

    def before_manifest_links(
        self,
        connection: Connection,
        repository_id: int,
        repository: str,
        manifests: Sequence[str],
        blobs: Sequence[str] = (),
    ) -> None:
        """Before linking `manifests` (and, for a promotion, `blobs`) into a repository:
        refuse if the new ones would take the project over a quota."""
        project = project_of(repository)
        limits = self._applicable(connection, project)
        if not limits.any:
            return
        wanted = list(dict.fromkeys(manifests))
        present = set(
            connection.execute(
                select(repository_manifests_table.c.digest).where(
                    repository_manifests_table.c.repository_id == repository_id,
                    repository_manifests_table.c.digest.in_(wanted),
                )
            ).scalars()
        )
        new_manifests = len([digest for digest in wanted if digest not in present])
        new_bytes = 0
        if blobs and limits.bytes is not None:
            new_bytes = self._new_blob_bytes(connection, project, list(dict.fromkeys(blobs)))
        self._decide(connection, project, limits, new_bytes, new_manifests)

    @staticmethod
    def _new_blob_bytes(connection: Connection, project: str, digests: list[str]) -> int:
        held = project_blobs_table.alias("held")
        total = connection.execute(
            select(func.coalesce(func.sum(blobs_table.c.size), 0)).where(
                blobs_table.c.digest.in_(digests),
                ~select(held.c.digest)
                .where(held.c.project == project, held.c.digest == blobs_table.c.digest)
                .exists(),
            )
        ).scalar_one()
        return int(total)


@dataclass(frozen=True, slots=True)
class ProjectQuotaRecord:
    project: str
    override: QuotaOverride
    usage: QuotaUsage
    state: QuotaState
    updated_by: str | None
    updated_at: datetime | None


@dataclass(frozen=True, slots=True)
class CounterDrift:
    """A project whose counters differed from the links (what `recount` corrected)."""

    project: str
    counted: QuotaUsage
    actual: QuotaUsage


def _project_expression(name: Any, dialect: str) -> ColumnElement[str]:
    if dialect == "postgresql":
        return func.split_part(name, "/", 1)
    slash = func.instr(name, "/")
    return case((slash > 0, func.substr(name, 1, slash - 1)), else_=name)


class QuotaStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._dialect = engine.dialect.name

    # -- limits

    def record(self, project: str) -> ProjectQuotaRecord:
        with read_transaction(self._engine) as connection:
            row = connection.execute(
                select(quotas_table).where(quotas_table.c.project == project)
            ).first()
            usage, state = _read_usage(connection, project)
        if row is None:
            return ProjectQuotaRecord(project, QuotaOverride(), usage, state, None, None)
        return ProjectQuotaRecord(
            project,
            QuotaOverride(row.bytes_limit, row.artifacts_limit),
            usage,
            state,
            row.updated_by,
            row.updated_at,
        )

    def set_override(self, project: str, override: QuotaOverride, by: str) -> None:
        insert = postgresql.insert if self._dialect == "postgresql" else sqlite.insert
        values = {
            "bytes_limit": override.bytes,
            "artifacts_limit": override.artifacts,
            "updated_by": by,
            "updated_at": utcnow(),
        }
        with write_transaction(self._engine, serialise_on=[project_key(project)]) as connection:
            connection.execute(
                insert(quotas_table)
                .values(project=project, **values)
                .on_conflict_do_update(index_elements=[quotas_table.c.project], set_=values)
            )

    def clear_override(self, project: str) -> bool:
        with write_transaction(self._engine, serialise_on=[project_key(project)]) as connection:
            result = connection.execute(
                delete(quotas_table).where(quotas_table.c.project == project)
            )
            return result.rowcount > 0

    def overrides(self) -> dict[str, QuotaOverride]:
        with read_transaction(self._engine) as connection:
            rows = connection.execute(select(quotas_table)).all()
        return {row.project: QuotaOverride(row.bytes_limit, row.artifacts_limit) for row in rows}

    # -- announcements

    def move_state(self, project: str, expected: Iterable[QuotaState], to: QuotaState) -> bool:
        """Compare-and-set of the announcement state: True for the one caller that moved it."""
        with write_transaction(self._engine, serialise_on=[project_key(project)]) as connection:
            result = connection.execute(
                update(usage_table)
                .where(
                    usage_table.c.project == project,
                    usage_table.c.state.in_([str(state) for state in expected]),
                )
                .values(state=str(to))
            )
            return result.rowcount > 0

    # -- counting

    def counted(self) -> dict[str, QuotaUsage]:
        with read_transaction(self._engine) as connection:
            rows = connection.execute(
                select(usage_table.c.project, usage_table.c.bytes, usage_table.c.artifacts)
            ).all()
        return {row[0]: QuotaUsage(int(row[1]), int(row[2])) for row in rows}

    def actual(self) -> dict[str, QuotaUsage]:
        """Usage recomputed from scratch from the links (what the counters must equal)."""
        with read_transaction(self._engine) as connection:
            return self._actual(connection)

    def _actual(self, connection: Connection) -> dict[str, QuotaUsage]:
        project = _project_expression(repositories_table.c.name, self._dialect).label("project")
        distinct_blobs = (
            select(project, repository_blobs_table.c.digest)
            .join(
                repositories_table,
                repositories_table.c.id == repository_blobs_table.c.repository_id,
            )
            .distinct()
            .subquery()
        )
        bytes_rows = connection.execute(
            select(distinct_blobs.c.project, func.sum(blobs_table.c.size))
            .join(blobs_table, blobs_table.c.digest == distinct_blobs.c.digest)
            .group_by(distinct_blobs.c.project)
        ).all()
        artifact_rows = connection.execute(
            select(project, func.count())
            .select_from(repository_manifests_table)
            .join(
                repositories_table,
                repositories_table.c.id == repository_manifests_table.c.repository_id,
            )
            .group_by(project)
        ).all()
        usage: dict[str, list[int]] = {}
        for name, total in bytes_rows:
            usage.setdefault(name, [0, 0])[0] = int(total or 0)
        for name, count in artifact_rows:
            usage.setdefault(name, [0, 0])[1] = int(count)
        return {name: QuotaUsage(values[0], values[1]) for name, values in usage.items()}

    def drift(self) -> list[CounterDrift]:
        """Projects whose counters differ from the links (nothing changed)."""
        with read_transaction(self._engine) as connection:
            return self._drift(connection)

    def _drift(self, connection: Connection) -> list[CounterDrift]:
        actual = self._actual(connection)
        rows = connection.execute(
            select(usage_table.c.project, usage_table.c.bytes, usage_table.c.artifacts)
        ).all()
        counted = {row[0]: QuotaUsage(int(row[1]), int(row[2])) for row in rows}
        return [
            CounterDrift(name, counted.get(name, QuotaUsage()), actual.get(name, QuotaUsage()))
            for name in sorted(set(actual) | set(counted))
            if counted.get(name, QuotaUsage()) != actual.get(name, QuotaUsage())
        ]

    def recount(self) -> list[CounterDrift]:
        """Rebuild every counter from the links, in one exclusive write transaction; the
        projects whose counters were wrong."""
        with write_transaction(self._engine) as connection:
            drift = self._drift(connection)
            project = _project_expression(repositories_table.c.name, self._dialect)
            connection.execute(delete(project_blobs_table))
            connection.execute(
                project_blobs_table.insert().from_select(
                    ["project", "digest", "links"],
                    select(project, repository_blobs_table.c.digest, func.count())
                    .join(
                        repositories_table,
                        repositories_table.c.id == repository_blobs_table.c.repository_id,
                    )
                    .group_by(project, repository_blobs_table.c.digest),
                )
            )
            actual = self._actual(connection)
            states = dict(
                connection.execute(select(usage_table.c.project, usage_table.c.state)).all()
            )
            connection.execute(delete(usage_table))
            rows = [
                {
                    "project": name,
                    "bytes": usage.bytes,
                    "artifacts": usage.artifacts,
                    "state": states.get(name, str(QuotaState.OK)),
                }
                for name, usage in actual.items()
            ]
            if rows:
                connection.execute(usage_table.insert(), rows)
            return drift

    # -- proxy-cache eviction

    def least_recently_pulled(self, project: str, limit: int) -> list[tuple[str, str]]:
        """The project's artifacts (repository, digest), least recently pulled first; an
        artifact never pulled counts from when it was cached."""
        used = func.coalesce(_pulls_table.c.last_pulled_at, repository_manifests_table.c.created_at)
        with read_transaction(self._engine) as connection:
            rows = connection.execute(
                select(repositories_table.c.name, repository_manifests_table.c.digest)
                .join(
                    repositories_table,
                    repositories_table.c.id == repository_manifests_table.c.repository_id,
                )
                .outerjoin(
                    _pulls_table,
                    (_pulls_table.c.repository_id == repository_manifests_table.c.repository_id)
                    & (_pulls_table.c.digest == repository_manifests_table.c.digest),
                )
                # Names of the project: "p/..." sort from "p/" up to (not including) "p0".
                .where(repositories_table.c.name >= f"{project}/")
                .where(repositories_table.c.name < f"{project}0")
                .order_by(used, repository_manifests_table.c.created_at)
                .limit(limit)
            ).all()
        return [(row[0], row[1]) for row in rows]

    def holds(self, project: str, digest: str) -> bool:
        """Whether any repository of `project` links the blob (by the counters)."""
        with read_transaction(self._engine) as connection:
            return bool(connection.execute(_HELD, {"project": project, "digest": digest}).scalar())

    def blobs_of(self, manifest: str) -> list[str]:
        with read_transaction(self._engine) as connection:
            return list(
                connection.execute(
                    select(manifest_blobs_table.c.blob_digest).where(
                        manifest_blobs_table.c.manifest_digest == manifest
                    )
                ).scalars()
            )
