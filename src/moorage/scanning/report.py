"""Scan reports: the state of one manifest digest's scan and what it found.

The scan service stores and serves these; the vulnerability policy, the SBOM exporter, the
Harbor-compatible scanner API and promotion gates read them through `ReportReader`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from moorage.scanning.packages import Inventory
from moorage.vulnerability.findings import (
    Finding,
    possibly_affected_count,
    severity_counts,
    worst_severity,
)
from moorage.vulnerability.severity import Severity


class ScanStatus(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCESS = "Success"
    ERROR = "Error"

    @property
    def completed(self) -> bool:
        return self in (ScanStatus.SUCCESS, ScanStatus.ERROR)


BUILTIN_SCANNER = "moorage"


@dataclass(frozen=True, slots=True)
class ScanReport:
    digest: str  # the manifest (or index) digest the report is about
    status: ScanStatus
    scanner: str = BUILTIN_SCANNER  # the built-in scanner or a registered adapter's name
    generation: str | None = None  # the vulnerability database generation matched against
    findings: tuple[Finding, ...] = ()
    error: str | None = None  # why the scan ended in Error
    children: tuple[str, ...] = ()  # for an index: the digests of the platform manifests
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    notes: tuple[str, ...] = field(default=())  # files or records that were skipped
    matched_at: datetime | None = None  # when the findings were last computed
    rematches: int = 0  # re-matches from the stored inventory since the last full scan

    @property
    def summary(self) -> dict[str, int]:
        return severity_counts(self.findings)

    @property
    def possibly_affected(self) -> int:
        """How many of the findings are possibly affected (counted in `summary` too)."""
        return possibly_affected_count(self.findings)

    @property
    def worst(self) -> Severity:
        return worst_severity(self.findings)


class ReportReader(Protocol):
    """Read access to scan results, for policies, exporters and gates."""

    def report(self, digest: str) -> ScanReport | None:
        """The latest report for a manifest digest (any status); None if never scanned."""
        ...

    def inventory(self, digest: str) -> Inventory | None:
        """The squashed package inventory stored for an image manifest digest, if scanned."""
        ...


class ScanFailedError(Exception):
    """A scan could not complete; the report ends in Error with this reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ScanTarget:
    repository: str
    digest: str
    media_type: str


class ExternalScanner(Protocol):
    """A registered scanner adapter (Harbor's pluggable scanner API) as the scan service uses it."""

    @property
    def name(self) -> str: ...

    async def scan(self, target: ScanTarget) -> tuple[Finding, ...]:
        """Scan one image manifest; raise ScanFailedError with a reason when it cannot."""
        ...


class ScannerResolver(Protocol):
    def external_for(self, scanner_name: str) -> ExternalScanner | None:
        """The registered adapter of that name, or None when there is none."""
        ...
