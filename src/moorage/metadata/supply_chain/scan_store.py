"""SQL access for scanning: settings, the job queue, reports, inventories. Synchronous.

Every method is one short transaction and returns plain records. The records and constants are
in `scan_records`, the queue (claims, leases, re-matches after a database update) in
`scan_queue`; this module re-exports them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sqlalchemy import Engine, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from moorage.metadata.database import read_transaction, single_read, write_transaction
from moorage.metadata.registry.models import (
    utcnow,
)
from moorage.metadata.supply_chain.scan_queue import ScanQueue
from moorage.metadata.supply_chain.scan_records import (
    _BATCH,
    ERROR,
    MATCHED_GENERATION,
    PENDING,
    REMATCH,
    RUNNING,
    SCAN,
    SUCCESS,
    Claim,
    ClaimedJob,
    GenerationChange,
    IndexOutcome,
    ManifestEntry,
    ReportRecord,
    ScanRequest,
    ScanSettingsRecord,
    _chunks,
    _inventories,
    _jobs,
    _keys,
    _layers,
    _mchildren,
    _projects,
    _report,
    _reports,
    _settings,
    _utc,
)

__all__ = [
    "ERROR",
    "MATCHED_GENERATION",
    "PENDING",
    "REMATCH",
    "RUNNING",
    "SCAN",
    "SUCCESS",
    "Claim",
    "ClaimedJob",
    "GenerationChange",
    "IndexOutcome",
    "ManifestEntry",
    "ReportRecord",
    "ScanRequest",
    "ScanSettingsRecord",
    "ScanStore",
]


class ScanStore(ScanQueue):
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
