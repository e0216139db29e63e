"""Scan records as the scan store returns them, its constants, and the tables it reads."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

from sqlalchemy import Table

from moorage.metadata.access.iam_models import Project
from moorage.metadata.registry.models import (
    Manifest,
    ManifestChild,
    Repository,
    RepositoryManifest,
    utcnow,
)
from moorage.metadata.supply_chain.scan_models import (
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
