"""SQL access for scanning: settings, the job queue, reports, inventories. Synchronous.

Every method is one short transaction and returns plain records. Jobs are claimed inside a
write transaction (SQLite: under the write gate; PostgreSQL: a conditional UPDATE whose row
count says whether this process won), so any number of processes can run the queue.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TypeVar

from sqlalchemy import Connection, Engine, Table, and_, delete, func, or_, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite

from moorage.metadata.database import read_transaction, single_read, write_transaction
from moorage.metadata.iam_models import Project
from moorage.metadata.models import (
    Manifest,
    ManifestChild,
    Repository,
    RepositoryManifest,
    utcnow,
)
from moorage.metadata.scan_models import (
    ImageInventoryRow,
    InventoryKeyRow,
    LayerInventoryRow,
    ScanJobRow,
    ScanReportRow,
    ScanSettingsRow,
    ScanStateRow,
)

_settings: Table = ScanSettingsRow.__table__  # type: ignore[assignment]
_jobs: Table = ScanJobRow.__table__  # type: ignore[assignment]
_reports: Table = ScanReportRow.__table__  # type: ignore[assignment]
_inventories: Table = ImageInventoryRow.__table__  # type: ignore[assignment]
_keys: Table = InventoryKeyRow.__table__  # type: ignore[assignment]
_layers: Table = LayerInventoryRow.__table__  # type: ignore[assignment]
_state: Table = ScanStateRow.__table__  # type: ignore[assignment]
_projects: Table = Project.__table__  # type: ignore[assignment]
_repos: Table = Repository.__table__  # type: ignore[assignment]
_rm: Table = RepositoryManifest.__table__  # type: ignore[assignment]
_manifests: Table = Manifest.__table__  # type: ignore[assignment]
_mchildren: Table = ManifestChild.__table__  # type: ignore[assignment]

T = TypeVar("T")

MATCHED_GENERATION: Final = "matched-generation"
# Statements stay well below SQLite's limit of 32766 bound parameters.
_BATCH: Final = 400

PENDING: Final = "Pending"
RUNNING: Final = "Running"
SUCCESS: Final = "Success"
ERROR: Final = "Error"
SCAN: Final = "scan"
REMATCH: Final = "rematch"


def _utc(moment: datetime | None) -> datetime | None:
    # SQLite hands back naive UTC.
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class ScanSettingsRecord:
    scan_on_push: bool = False
    attach_sbom: bool = False
    scanner: str | None = None
    updated_by: str | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ReportRecord:
    digest: str
    repository: str
    media_type: str
    status: str
    scanner: str
    generation: str | None
    findings: str  # JSON array
    error: str | None
    children: tuple[str, ...]
    notes: tuple[str, ...]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    matched_at: datetime | None
    rematches: int


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    digest: str
    repository: str
    kind: str
    attempts: int


@dataclass(frozen=True, slots=True)
class Claim:
    job: ClaimedJob | None
    abandoned: tuple[ClaimedJob, ...] = ()  # jobs that used up their attempts


@dataclass(frozen=True, slots=True)
class ScanRequest:
    """One manifest to queue: an image (a job) or an index (a report over its children)."""

    repository: str
    digest: str
    media_type: str
    scanner: str
    rescan: bool  # start over even when a completed report exists
    children: tuple[str, ...] = ()  # an index's scannable children (queued on their own)


@dataclass(frozen=True, slots=True)
class IndexOutcome:
    status: str
    generation: str | None
    findings: str
    error: str | None
    notes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    repository_id: int
    repository: str
    digest: str
    media_type: str


@dataclass(frozen=True, slots=True)
class GenerationChange:
    """What advancing the matched generation did (None when another process did it first)."""

    previous: str | None
    current: str
    rematch: tuple[str, ...] = ()
    confirmed: int = 0  # unaffected reports now marked as matched against `current`
    digests_checked: int = 0


def _report(row: Any) -> ReportRecord:
    return ReportRecord(
        digest=row.digest,
        repository=row.repository,
        media_type=row.media_type,
        status=row.status,
        scanner=row.scanner,
        generation=row.generation,
        findings=row.findings,
        error=row.error,
        children=tuple(json.loads(row.children)),
        notes=tuple(json.loads(row.notes)),
        created_at=_utc(row.created_at) or utcnow(),
        started_at=_utc(row.started_at),
        finished_at=_utc(row.finished_at),
        matched_at=_utc(row.matched_at),
        rematches=row.rematches,
    )


def _chunks(items: Sequence[T], size: int = _BATCH) -> Iterable[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class ScanStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert

    # -- settings

    def settings_of(self, project: str) -> ScanSettingsRecord | None:
        """The project's scan settings (defaults when never set); None if there is no project."""
        query = (
            select(
                _projects.c.id,
                _settings.c.scan_on_push,
                _settings.c.attach_sbom,
                _settings.c.scanner,
                _settings.c.updated_by,
                _settings.c.updated_at,
            )
            .select_from(_projects.outerjoin(_settings, _settings.c.project_id == _projects.c.id))
            .where(_projects.c.name == project)
        )
        with single_read(self._engine) as connection:
            row = connection.execute(query).first()
        if row is None:
            return None
        if row.scan_on_push is None:
            return ScanSettingsRecord()
        return ScanSettingsRecord(
            bool(row.scan_on_push),
            bool(row.attach_sbom),
            row.scanner,
            row.updated_by,
            _utc(row.updated_at),
        )

    def put_settings(
        self, project: str, new: ScanSettingsRecord
    ) -> tuple[ScanSettingsRecord, ScanSettingsRecord] | None:
        """Replace the project's settings; (before, after), or None if there is no project."""
        before = self.settings_of(project)
        if before is None:
            return None
        now = utcnow()
        values = {
            "scan_on_push": new.scan_on_push,
            "attach_sbom": new.attach_sbom,
            "scanner": new.scanner,
            "updated_by": new.updated_by,
            "updated_at": now,
        }
        with write_transaction(self._engine) as connection:
            project_id = connection.execute(
                select(_projects.c.id).where(_projects.c.name == project)
            ).scalar()
            if project_id is None:
                return None
            statement = self._insert(_settings).values(project_id=project_id, **values)
            connection.execute(
                statement.on_conflict_do_update(
                    index_elements=[_settings.c.project_id], set_=values
                )
            )
        after = ScanSettingsRecord(
            new.scan_on_push, new.attach_sbom, new.scanner, new.updated_by, now
        )
        return before, after

    # -- requests

    def request(self, requests: Sequence[ScanRequest]) -> int:
        """Queue scans in one transaction; how many new jobs were queued.

        A digest with a job already queued or running is not queued again. Its report becomes
        Pending unless it is already Pending or Running, or it is complete and `rescan` is off.
        """
        queued = 0
        now = utcnow()
        with write_transaction(self._engine) as connection:
            for request in requests:
                queued += self._request(connection, request, now)
        return queued

    def _request(self, connection: Connection, request: ScanRequest, now: datetime) -> int:
        current = connection.execute(
            select(_reports.c.status).where(_reports.c.digest == request.digest)
        ).scalar()
        fresh = {
            "repository": request.repository,
            "media_type": request.media_type,
            "status": PENDING,
            "scanner": request.scanner,
            "generation": None,
            "findings": "[]",
            "error": None,
            "children": json.dumps(list(request.children)),
            "notes": "[]",
            "created_at": now,
            "started_at": None,
            "finished_at": None,
            "matched_at": None,
            "rematches": 0,
        }
        if current is None:
            connection.execute(
                self._insert(_reports)
                .values(digest=request.digest, **fresh)
                .on_conflict_do_nothing()
            )
        elif current in (SUCCESS, ERROR):
            if not request.rescan:
                return 0
            connection.execute(
                update(_reports).where(_reports.c.digest == request.digest).values(**fresh)
            )
        if request.children:
            return 0  # an index has no job: its children do the work
        return self._queue(connection, request.digest, request.repository, SCAN, now)

    def _queue(
        self, connection: Connection, digest: str, repository: str, kind: str, now: datetime
    ) -> int:
        existing = connection.execute(
            select(_jobs.c.kind, _jobs.c.lease_owner).where(_jobs.c.digest == digest)
        ).first()
        if existing is None:
            # A concurrent request (another process, on PostgreSQL) may have queued it first.
            return int(
                connection.execute(
                    self._insert(_jobs)
                    .values(
                        digest=digest,
                        repository=repository,
                        kind=kind,
                        requested_at=now,
                        attempts=0,
                    )
                    .on_conflict_do_nothing()
                ).rowcount
            )
        if kind == SCAN and existing.kind == REMATCH and existing.lease_owner is None:
            # A full scan covers a re-match: one job does both.
            connection.execute(
                update(_jobs)
                .where(_jobs.c.digest == digest)
                .values(kind=SCAN, repository=repository)
            )
        return 0

    # -- the queue

    def has_available_job(self) -> bool:
        now = utcnow()
        with single_read(self._engine) as connection:
            return (
                connection.execute(
                    select(_jobs.c.digest)
                    .where(or_(_jobs.c.lease_owner.is_(None), _jobs.c.lease_expires_at < now))
                    .limit(1)
                ).first()
                is not None
            )

    def claim(self, owner: str, lease_seconds: float, max_attempts: int) -> Claim:
        """Lease the oldest available job to `owner`; jobs whose leases ran out `max_attempts`
        times are removed and returned as abandoned (their reports end in Error)."""
        now = utcnow()
        available = or_(_jobs.c.lease_owner.is_(None), _jobs.c.lease_expires_at < now)
        with write_transaction(self._engine) as connection:
            exhausted = connection.execute(
                select(_jobs.c.digest, _jobs.c.repository, _jobs.c.kind, _jobs.c.attempts)
                .where(available, _jobs.c.attempts >= max_attempts)
                .limit(_BATCH)
            ).all()
            abandoned = tuple(ClaimedJob(*row) for row in exhausted)
            if abandoned:
                connection.execute(
                    delete(_jobs).where(_jobs.c.digest.in_([job.digest for job in abandoned]))
                )
            row = connection.execute(
                select(_jobs.c.digest, _jobs.c.repository, _jobs.c.kind, _jobs.c.attempts)
                .where(available)
                .order_by(_jobs.c.requested_at, _jobs.c.digest)
                .limit(1)
            ).first()
            if row is None:
                return Claim(None, abandoned)
            won = connection.execute(
                update(_jobs)
                .where(_jobs.c.digest == row.digest, available)
                .values(
                    lease_owner=owner,
                    lease_expires_at=now + timedelta(seconds=lease_seconds),
                    attempts=_jobs.c.attempts + 1,
                )
            ).rowcount
        job = ClaimedJob(row.digest, row.repository, row.kind, row.attempts + 1) if won else None
        return Claim(job, abandoned)

    def renew(self, digest: str, owner: str, lease_seconds: float) -> bool:
        with write_transaction(self._engine) as connection:
            return (
                connection.execute(
                    update(_jobs)
                    .where(_jobs.c.digest == digest, _jobs.c.lease_owner == owner)
                    .values(lease_expires_at=utcnow() + timedelta(seconds=lease_seconds))
                ).rowcount
                > 0
            )

    def release(self, digest: str, owner: str) -> None:
        """Give a job back unfinished (the worker is stopping): it is claimable at once and
        the attempt does not count."""
        with write_transaction(self._engine) as connection:
            connection.execute(
                update(_jobs)
                .where(_jobs.c.digest == digest, _jobs.c.lease_owner == owner)
                .values(
                    lease_owner=None,
                    lease_expires_at=None,
                    attempts=func.max(_jobs.c.attempts - 1, 0)
                    if self._engine.dialect.name == "sqlite"
                    else func.greatest(_jobs.c.attempts - 1, 0),
                )
            )
            connection.execute(
                update(_reports)
                .where(_reports.c.digest == digest, _reports.c.status == RUNNING)
                .values(status=PENDING, started_at=None)
            )

    # -- reports

    def report(self, digest: str) -> ReportRecord | None:
        with single_read(self._engine) as connection:
            row = connection.execute(select(_reports).where(_reports.c.digest == digest)).first()
        return None if row is None else _report(row)

    def start(self, digest: str, scanner: str) -> None:
        with write_transaction(self._engine) as connection:
            connection.execute(
                update(_reports)
                .where(_reports.c.digest == digest)
                .values(status=RUNNING, scanner=scanner, started_at=utcnow())
            )

    def finish(
        self,
        digest: str,
        owner: str | None,
        *,
        status: str,
        generation: str | None,
        findings: str,
        error: str | None,
        notes: Sequence[str],
        scanned: bool,
    ) -> bool:
        """Store a job's result and remove the job, in one transaction.

        `scanned` marks a full scan (sets `finished_at`); a re-match only replaces the
        findings. False when the job is no longer this worker's (its lease ran out and
        another worker took it over: that worker's result will count).
        """
        now = utcnow()
        values: dict[str, Any] = {
            "status": status,
            "generation": generation,
            "findings": findings,
            "error": error,
            "notes": json.dumps(list(notes)),
            "matched_at": now if status == SUCCESS else None,
        }
        if scanned:
            values["finished_at"] = now
        else:
            values["rematches"] = _reports.c.rematches + 1
        with write_transaction(self._engine) as connection:
            if owner is not None:
                removed = connection.execute(
                    delete(_jobs).where(_jobs.c.digest == digest, _jobs.c.lease_owner == owner)
                ).rowcount
                if not removed:
                    return False
            connection.execute(update(_reports).where(_reports.c.digest == digest).values(values))
        return True

    def fail_abandoned(self, jobs: Sequence[ClaimedJob], reason: str) -> None:
        now = utcnow()
        with write_transaction(self._engine) as connection:
            for job in jobs:
                connection.execute(
                    update(_reports)
                    .where(_reports.c.digest == job.digest)
                    .values(status=ERROR, error=reason, finished_at=now, findings="[]")
                )

    def parents_with_reports(self, child: str) -> list[str]:
        """Indexes listing `child` that have a report of their own."""
        query = (
            select(_mchildren.c.parent_digest)
            .join(_reports, _reports.c.digest == _mchildren.c.parent_digest)
            .where(_mchildren.c.child_digest == child)
            .limit(_BATCH)
        )
        with read_transaction(self._engine) as connection:
            return list(connection.execute(query).scalars())

    def update_index(
        self,
        digest: str,
        aggregate: Callable[[tuple[ReportRecord | None, ...]], IndexOutcome],
    ) -> tuple[ReportRecord, ReportRecord] | None:
        """Recompute an index's report from its children's, atomically; (before, after)."""
        with write_transaction(self._engine) as connection:
            row = connection.execute(select(_reports).where(_reports.c.digest == digest)).first()
            if row is None:
                return None
            before = _report(row)
            children: dict[str, ReportRecord] = {}
            for chunk in _chunks(before.children):
                for child in connection.execute(
                    select(_reports).where(_reports.c.digest.in_(chunk))
                ):
                    children[child.digest] = _report(child)
            outcome = aggregate(tuple(children.get(child) for child in before.children))
            now = utcnow()
            values: dict[str, Any] = {
                "status": outcome.status,
                "generation": outcome.generation,
                "findings": outcome.findings,
                "error": outcome.error,
                "notes": json.dumps(list(outcome.notes)),
            }
            if outcome.status in (SUCCESS, ERROR):
                if before.status not in (SUCCESS, ERROR):
                    values["finished_at"] = now
                if outcome.findings != before.findings or before.matched_at is None:
                    values["matched_at"] = now
            if outcome.status == RUNNING and before.started_at is None:
                values["started_at"] = now
            connection.execute(update(_reports).where(_reports.c.digest == digest).values(values))
            row = connection.execute(select(_reports).where(_reports.c.digest == digest)).one()
        return before, _report(row)

    # -- inventories

    def save_inventory(
        self, digest: str, cataloger_version: str, inventory: str, keys: Iterable[tuple[str, str]]
    ) -> None:
        now = utcnow()
        rows = [{"digest": digest, "ecosystem": eco, "name": name} for eco, name in set(keys)]
        with write_transaction(self._engine) as connection:
            connection.execute(delete(_keys).where(_keys.c.digest == digest))
            statement = self._insert(_inventories).values(
                digest=digest,
                cataloger_version=cataloger_version,
                inventory=inventory,
                created_at=now,
            )
            connection.execute(
                statement.on_conflict_do_update(
                    index_elements=[_inventories.c.digest],
                    set_={"cataloger_version": cataloger_version, "inventory": inventory},
                )
            )
            for chunk in _chunks(rows):
                connection.execute(self._insert(_keys).on_conflict_do_nothing(), list(chunk))

    def inventory(self, digest: str) -> str | None:
        with single_read(self._engine) as connection:
            return connection.execute(
                select(_inventories.c.inventory).where(_inventories.c.digest == digest)
            ).scalar()

    def layer_inventory(self, diff_id: str, cataloger_version: str) -> str | None:
        with single_read(self._engine) as connection:
            return connection.execute(
                select(_layers.c.inventory).where(
                    _layers.c.diff_id == diff_id, _layers.c.cataloger_version == cataloger_version
                )
            ).scalar()

    def put_layer_inventory(self, diff_id: str, cataloger_version: str, inventory: str) -> None:
        with write_transaction(self._engine) as connection:
            connection.execute(
                self._insert(_layers)
                .values(
                    diff_id=diff_id,
                    cataloger_version=cataloger_version,
                    inventory=inventory,
                    created_at=utcnow(),
                )
                .on_conflict_do_nothing()
            )

    # -- database generations

    def matched_generation(self) -> str | None:
        with single_read(self._engine) as connection:
            return connection.execute(
                select(_state.c.value).where(_state.c.name == MATCHED_GENERATION)
            ).scalar()

    def advance_generation(
        self,
        previous: str | None,
        current: str,
        changed: frozenset[tuple[str, str]] | None,
        builtin_scanner: str,
    ) -> GenerationChange | None:
        """Move the matched generation from `previous` to `current` (compare-and-set) and queue
        a re-match of every image whose findings may differ; None if another process moved it.

        An image needs a re-match when its report was matched against neither generation (or
        never matched at all, e.g. scanned before any database existed), when `changed` is None,
        or when its stored keys meet `changed`. A report matched against `previous` whose
        packages did not change is marked as matched against `current` as it stands.
        """
        now = utcnow()
        with write_transaction(self._engine) as connection:
            stored = connection.execute(
                select(_state.c.value).where(_state.c.name == MATCHED_GENERATION)
            ).first()
            if (stored.value if stored is not None else None) != previous:
                return None
            if stored is None:
                connection.execute(
                    self._insert(_state).values(
                        name=MATCHED_GENERATION, value=current, updated_at=now
                    )
                )
            else:
                connection.execute(
                    update(_state)
                    .where(_state.c.name == MATCHED_GENERATION)
                    .values(value=current, updated_at=now)
                )
            affected: set[str] = set()
            if changed is not None:
                for keys in _chunks(sorted(changed)):
                    affected.update(
                        connection.execute(
                            select(_keys.c.digest)
                            .where(tuple_(_keys.c.ecosystem, _keys.c.name).in_(list(keys)))
                            .distinct()
                        ).scalars()
                    )
            candidates = connection.execute(
                select(_reports.c.digest, _reports.c.generation, _reports.c.status)
                .join(_inventories, _inventories.c.digest == _reports.c.digest)
                .where(
                    _reports.c.scanner == builtin_scanner,
                    _reports.c.status.in_((SUCCESS, ERROR)),
                )
            ).all()
            rematch: list[str] = []
            confirm: list[str] = []
            for digest, generation, status in candidates:
                if generation == current:
                    continue
                unchanged = (
                    changed is not None
                    and previous is not None
                    and generation == previous
                    and status == SUCCESS
                    and digest not in affected
                )
                (confirm if unchanged else rematch).append(digest)
            for chunk in _chunks(confirm):
                connection.execute(
                    update(_reports)
                    .where(_reports.c.digest.in_(list(chunk)), _reports.c.generation == previous)
                    .values(generation=current)
                )
            if previous is not None:
                self._confirm_indexes(connection, previous, current, frozenset(rematch))
            for digest in rematch:
                repository = connection.execute(
                    select(_reports.c.repository).where(_reports.c.digest == digest)
                ).scalar_one()
                self._queue(connection, digest, repository, REMATCH, now)
        return GenerationChange(previous, current, tuple(rematch), len(confirm), len(candidates))

    @staticmethod
    def _confirm_indexes(
        connection: Connection, previous: str, current: str, rematch: frozenset[str]
    ) -> None:
        """Indexes none of whose children is re-matched keep their findings under `current`
        (the others are recomputed when their children's re-matches finish)."""
        indexes = connection.execute(
            select(_reports.c.digest, _reports.c.children).where(
                _reports.c.generation == previous,
                _reports.c.status == SUCCESS,
                _reports.c.children != "[]",
            )
        ).all()
        unaffected = [
            digest for digest, children in indexes if not rematch.intersection(json.loads(children))
        ]
        for chunk in _chunks(unaffected):
            connection.execute(
                update(_reports)
                .where(_reports.c.digest.in_(list(chunk)), _reports.c.generation == previous)
                .values(generation=current)
            )

    # -- scan everything

    def manifests_after(self, after: tuple[int, str] | None, limit: int) -> list[ManifestEntry]:
        """Manifests of every repository, in (repository id, digest) order, for paging."""
        query = (
            select(_rm.c.repository_id, _repos.c.name, _rm.c.digest, _manifests.c.media_type)
            .select_from(_rm.join(_repos, _repos.c.id == _rm.c.repository_id))
            .join(_manifests, _manifests.c.digest == _rm.c.digest)
            .order_by(_rm.c.repository_id, _rm.c.digest)
            .limit(limit)
        )
        if after is not None:
            query = query.where(
                or_(
                    _rm.c.repository_id > after[0],
                    and_(_rm.c.repository_id == after[0], _rm.c.digest > after[1]),
                )
            )
        with read_transaction(self._engine) as connection:
            return [ManifestEntry(*row) for row in connection.execute(query)]
