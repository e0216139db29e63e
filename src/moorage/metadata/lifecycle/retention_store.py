"""SQL access for retention: policies, runs and their decisions, and what a repository holds
as retention sees it (artifacts with their tags, push times, children, subjects, promotions).

Every method is one short transaction. The artifacts of one repository are read in one read
transaction, so an evaluation sees one consistent state of that repository.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, Row, Table, and_, delete, func, insert, or_, select, update

from moorage.metadata.access.iam_models import Project
from moorage.metadata.database import read_transaction, write_transaction
from moorage.metadata.lifecycle.pull_store import aware
from moorage.metadata.lifecycle.retention_models import (
    RetentionDecisionRow,
    RetentionPolicyRow,
    RetentionRunRow,
)
from moorage.metadata.registry.models import (
    Manifest,
    ManifestChild,
    Repository,
    RepositoryManifest,
    Tag,
    utcnow,
)
from moorage.metadata.staging.promotion_models import PromotionRow

_policies: Table = RetentionPolicyRow.__table__  # type: ignore[assignment]
_runs: Table = RetentionRunRow.__table__  # type: ignore[assignment]
_decisions: Table = RetentionDecisionRow.__table__  # type: ignore[assignment]
_projects: Table = Project.__table__  # type: ignore[assignment]
_repositories: Table = Repository.__table__  # type: ignore[assignment]
_links: Table = RepositoryManifest.__table__  # type: ignore[assignment]
_tags: Table = Tag.__table__  # type: ignore[assignment]
_manifests: Table = Manifest.__table__  # type: ignore[assignment]
_children: Table = ManifestChild.__table__  # type: ignore[assignment]
_promotions: Table = PromotionRow.__table__  # type: ignore[assignment]

RUNNING = "running"
SUCCEEDED = "succeeded"
PARTIAL = "partial"  # finished, but some deletions failed
FAILED = "failed"
_DECISIONS_PER_INSERT = 500


class ProjectMissingError(LookupError):
    pass


@dataclass(frozen=True, slots=True)
class PolicyRecord:
    project: str
    rules: list[dict[str, Any]]
    cron: str | None
    enabled: bool
    next_run_at: datetime | None
    updated_by: str | None
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class RunRecord:
    id: int
    project: str
    dry_run: bool
    trigger: str
    requested_by: str
    rules: list[dict[str, Any]]
    status: str
    error: str | None
    artifacts: int
    kept: int
    removed: int
    failed: int
    started_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    id: int
    repository: str
    digest: str
    tags: list[str]
    outcome: str
    reason: str
    rule: int | None


@dataclass(frozen=True, slots=True)
class StoredArtifact:
    """A manifest of a repository with what retention needs to know about it."""

    digest: str
    pushed_at: datetime  # the later of its link into the repository and its newest tag
    tags: tuple[str, ...]
    children: tuple[str, ...]
    subject: str | None
    promoted_to: str | None


def _policy(row: Any) -> PolicyRecord:
    return PolicyRecord(
        project=row.name,
        rules=json.loads(row.rules),
        cron=row.cron,
        enabled=bool(row.enabled),
        next_run_at=aware(row.next_run_at) if row.next_run_at is not None else None,
        updated_by=row.updated_by,
        updated_at=aware(row.updated_at),
    )


def _run(row: Row[Any]) -> RunRecord:
    return RunRecord(
        id=row.id,
        project=row.project,
        dry_run=bool(row.dry_run),
        trigger=row.trigger,
        requested_by=row.requested_by,
        rules=json.loads(row.rules),
        status=row.status,
        error=row.error,
        artifacts=row.artifacts,
        kept=row.kept,
        removed=row.removed,
        failed=row.failed,
        started_at=aware(row.started_at),
        finished_at=aware(row.finished_at) if row.finished_at is not None else None,
    )


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


_POLICY_COLUMNS = (
    _projects.c.name,
    _policies.c.rules,
    _policies.c.cron,
    _policies.c.enabled,
    _policies.c.next_run_at,
    _policies.c.updated_by,
    _policies.c.updated_at,
)


class RetentionStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    # -- policies

    def policy(self, project: str) -> PolicyRecord | None:
        with read_transaction(self._engine) as connection:
            row = connection.execute(
                select(*_POLICY_COLUMNS)
                .join(_projects, _projects.c.id == _policies.c.project_id)
                .where(_projects.c.name == project)
            ).first()
        return _policy(row) if row is not None else None

    def policies(self) -> list[PolicyRecord]:
        with read_transaction(self._engine) as connection:
            rows = connection.execute(
                select(*_POLICY_COLUMNS)
                .join(_projects, _projects.c.id == _policies.c.project_id)
                .order_by(_projects.c.name)
            ).all()
        return [_policy(row) for row in rows]

    def put_policy(
        self,
        project: str,
        rules: Sequence[dict[str, Any]],
        cron: str | None,
        enabled: bool,
        next_run_at: datetime | None,
        updated_by: str,
    ) -> tuple[PolicyRecord, bool]:
        """Create or replace the project's policy; (policy, created)."""
        values = {
            "rules": json.dumps(list(rules)),
            "cron": cron,
            "enabled": enabled,
            "next_run_at": next_run_at,
            "updated_by": updated_by,
            "updated_at": utcnow(),
        }
        with write_transaction(self._engine, serialise_on=[f"retention:{project}"]) as connection:
            project_id = self._project_id(connection, project)
            changed = connection.execute(
                update(_policies).where(_policies.c.project_id == project_id).values(**values)
            ).rowcount
            if not changed:
                connection.execute(insert(_policies).values(project_id=project_id, **values))
        found = self.policy(project)
        assert found is not None
        return found, not changed

    def delete_policy(self, project: str) -> bool:
        with write_transaction(self._engine, serialise_on=[f"retention:{project}"]) as connection:
            project_id = self._project_id(connection, project)
            return bool(
                connection.execute(
                    delete(_policies).where(_policies.c.project_id == project_id)
                ).rowcount
            )

    def due(self, now: datetime) -> list[PolicyRecord]:
        with read_transaction(self._engine) as connection:
            rows = connection.execute(
                select(*_POLICY_COLUMNS)
                .join(_projects, _projects.c.id == _policies.c.project_id)
                .where(_policies.c.enabled.is_(True), _policies.c.next_run_at <= now)
                .order_by(_policies.c.next_run_at)
            ).all()
        return [_policy(row) for row in rows]

    def advance(self, project: str, seen: datetime, following: datetime | None) -> bool:
        """Move the policy's next firing from `seen` to `following`; True for the one process
        that moved it (and so runs it)."""
        with write_transaction(self._engine, serialise_on=[f"retention:{project}"]) as connection:
            project_id = self._project_id(connection, project)
            return bool(
                connection.execute(
                    update(_policies)
                    .where(_policies.c.project_id == project_id, _policies.c.next_run_at == seen)
                    .values(next_run_at=following)
                ).rowcount
            )

    def _project_id(self, connection: Any, project: str) -> int:
        found = connection.execute(
            select(_projects.c.id).where(_projects.c.name == project)
        ).scalar()
        if found is None:
            raise ProjectMissingError(project)
        return int(found)

    # -- runs

    def start_run(
        self,
        project: str,
        *,
        dry_run: bool,
        trigger: str,
        requested_by: str,
        rules: Sequence[dict[str, Any]],
        lease_seconds: float,
    ) -> RunRecord | None:
        """A new running run; None while another run of the project holds its lease."""
        now = utcnow()
        with write_transaction(self._engine, serialise_on=[f"retention:{project}"]) as connection:
            project_id = self._project_id(connection, project)
            busy = connection.execute(
                select(_runs.c.id).where(
                    _runs.c.project_id == project_id,
                    _runs.c.status == RUNNING,
                    _runs.c.lease_expires_at > now,
                )
            ).first()
            if busy is not None:
                return None
            run_id = connection.execute(
                insert(_runs)
                .values(
                    project_id=project_id,
                    project=project,
                    dry_run=dry_run,
                    trigger=trigger,
                    requested_by=requested_by,
                    rules=json.dumps(list(rules)),
                    status=RUNNING,
                    artifacts=0,
                    kept=0,
                    removed=0,
                    failed=0,
                    started_at=now,
                    lease_expires_at=now + timedelta(seconds=lease_seconds),
                )
                .returning(_runs.c.id)
            ).scalar_one()
        found = self.run(int(run_id))
        assert found is not None
        return found

    def record_decisions(
        self, run_id: int, rows: Sequence[DecisionRecord], lease_seconds: float
    ) -> None:
        """Add decisions to the run, count them, and renew its lease."""
        counts = {"kept": 0, "removed": 0, "failed": 0}
        for row in rows:
            if row.outcome == "kept" or row.outcome == "skipped":
                counts["kept"] += 1
            elif row.outcome in ("removed", "would-remove"):
                counts["removed"] += 1
            else:
                counts["failed"] += 1
        with write_transaction(
            self._engine, serialise_on=[f"retention-run:{run_id}"]
        ) as connection:
            for start in range(0, len(rows), _DECISIONS_PER_INSERT):
                connection.execute(
                    insert(_decisions),
                    [
                        {
                            "run_id": run_id,
                            "repository": row.repository,
                            "digest": row.digest,
                            "tags": json.dumps(row.tags),
                            "outcome": row.outcome,
                            "reason": row.reason[:1000],
                            "rule": row.rule,
                        }
                        for row in rows[start : start + _DECISIONS_PER_INSERT]
                    ],
                )
            connection.execute(
                update(_runs)
                .where(_runs.c.id == run_id)
                .values(
                    artifacts=_runs.c.artifacts + len(rows),
                    kept=_runs.c.kept + counts["kept"],
                    removed=_runs.c.removed + counts["removed"],
                    failed=_runs.c.failed + counts["failed"],
                    lease_expires_at=utcnow() + timedelta(seconds=lease_seconds),
                )
            )

    def finish_run(self, run_id: int, status: str, error: str | None = None) -> RunRecord | None:
        """The finished run; None when it no longer exists (its project was deleted)."""
        with write_transaction(
            self._engine, serialise_on=[f"retention-run:{run_id}"]
        ) as connection:
            connection.execute(
                update(_runs)
                .where(_runs.c.id == run_id)
                .values(
                    status=status,
                    error=error[:1000] if error else None,
                    finished_at=utcnow(),
                )
            )
        return self.run(run_id)

    def run(self, run_id: int) -> RunRecord | None:
        with read_transaction(self._engine) as connection:
            row = connection.execute(select(_runs).where(_runs.c.id == run_id)).first()
        return _run(row) if row is not None else None

    def runs(self, project: str, limit: int, before: int | None = None) -> list[RunRecord]:
        query = select(_runs).where(_runs.c.project == project)
        if before is not None:
            query = query.where(_runs.c.id < before)
        with read_transaction(self._engine) as connection:
            rows = connection.execute(query.order_by(_runs.c.id.desc()).limit(limit)).all()
        return [_run(row) for row in rows]

    def decisions(
        self, run_id: int, *, after: int | None, limit: int, outcome: str | None = None
    ) -> list[DecisionRecord]:
        query = select(_decisions).where(_decisions.c.run_id == run_id)
        if after is not None:
            query = query.where(_decisions.c.id > after)
        if outcome is not None:
            query = query.where(_decisions.c.outcome == outcome)
        with read_transaction(self._engine) as connection:
            rows = connection.execute(query.order_by(_decisions.c.id).limit(limit)).all()
        return [
            DecisionRecord(
                row.id,
                row.repository,
                row.digest,
                json.loads(row.tags),
                row.outcome,
                row.reason,
                row.rule,
            )
            for row in rows
        ]

    # -- what a project holds

    def project_exists(self, project: str) -> bool:
        with read_transaction(self._engine) as connection:
            found = connection.execute(
                select(_projects.c.id).where(_projects.c.name == project)
            ).first()
        return found is not None

    def repositories(self, project: str) -> list[str]:
        pattern = f"{_escape(project)}/%"
        with read_transaction(self._engine) as connection:
            return list(
                connection.execute(
                    select(_repositories.c.name)
                    .where(
                        or_(
                            _repositories.c.name == project,
                            _repositories.c.name.like(pattern, escape="\\"),
                        )
                    )
                    .order_by(_repositories.c.name)
                ).scalars()
            )

    def artifacts(self, repository: str) -> list[StoredArtifact]:
        with read_transaction(self._engine) as connection:
            repository_id = connection.execute(
                select(_repositories.c.id).where(_repositories.c.name == repository)
            ).scalar()
            if repository_id is None:
                return []
            manifests = connection.execute(
                select(_links.c.digest, _links.c.created_at, _manifests.c.subject_digest)
                .join(_manifests, _manifests.c.digest == _links.c.digest)
                .where(_links.c.repository_id == repository_id)
            ).all()
            tags: dict[str, list[tuple[str, datetime]]] = {}
            for name, digest, updated_at in connection.execute(
                select(_tags.c.name, _tags.c.manifest_digest, _tags.c.updated_at).where(
                    _tags.c.repository_id == repository_id
                )
            ):
                tags.setdefault(digest, []).append((name, aware(updated_at)))
            children: dict[str, list[str]] = {}
            for parent, child in connection.execute(
                select(_children.c.parent_digest, _children.c.child_digest)
                .join(_links, and_(_links.c.digest == _children.c.parent_digest))
                .where(_links.c.repository_id == repository_id)
            ):
                children.setdefault(parent, []).append(child)
            promoted: dict[str, str] = {}
            for digest, destination, tag in connection.execute(
                select(
                    _promotions.c.digest,
                    _promotions.c.destination_repository,
                    func.max(_promotions.c.tag),
                )
                .where(_promotions.c.source_repository == repository)
                .group_by(_promotions.c.digest, _promotions.c.destination_repository)
                .order_by(_promotions.c.destination_repository)
            ):
                promoted.setdefault(digest, f"{destination}:{tag}")
        found = []
        for digest, linked_at, subject in manifests:
            own = tags.get(digest, [])
            times = [aware(linked_at), *(at for _, at in own)]
            found.append(
                StoredArtifact(
                    digest=digest,
                    pushed_at=max(times),
                    tags=tuple(sorted(name for name, _ in own)),
                    children=tuple(sorted(children.get(digest, ()))),
                    subject=subject,
                    promoted_to=promoted.get(digest),
                )
            )
        return found

    def current_tags(self, repository: str, digest: str) -> list[str] | None:
        """The manifest's tags now (None: no longer in the repository)."""
        with read_transaction(self._engine) as connection:
            repository_id = connection.execute(
                select(_repositories.c.id).where(_repositories.c.name == repository)
            ).scalar()
            if repository_id is None:
                return None
            linked = connection.execute(
                select(_links.c.digest).where(
                    _links.c.repository_id == repository_id, _links.c.digest == digest
                )
            ).first()
            if linked is None:
                return None
            return sorted(
                connection.execute(
                    select(_tags.c.name).where(
                        _tags.c.repository_id == repository_id,
                        _tags.c.manifest_digest == digest,
                    )
                ).scalars()
            )
