"""Reports as stored and as read: findings in JSON, and an index's report from its images'.

An index's report is the worst of every image it reaches through its children, nested indexes
included (the scan request lists them all): Pending or Running until every one is complete,
then Error if any ended in Error, else Success. Its findings are the union of theirs (one per
advisory and installed package version, with the locations of every image that has it).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Final

from moorage.metadata.supply_chain.scan_store import (
    ERROR,
    PENDING,
    RUNNING,
    SUCCESS,
    IndexOutcome,
    ReportRecord,
)
from moorage.scanning.packages import Inventory
from moorage.scanning.report import ScanReport, ScanStatus
from moorage.vulnerability.findings import Finding, merge_findings

MAX_NOTES: Final = 200
MAX_ERROR_LENGTH: Final = 2000


def findings_json(findings: Iterable[Finding]) -> str:
    # One finding per advisory and package version, whatever wrote them (adapters too).
    ordered = sorted(merge_findings(findings), key=_finding_key)
    return json.dumps([finding.to_json() for finding in ordered], separators=(",", ":"))


def findings_from_json(text: str) -> tuple[Finding, ...]:
    return tuple(Finding.from_json(item) for item in json.loads(text))


def scan_report(record: ReportRecord) -> ScanReport:
    return ScanReport(
        digest=record.digest,
        status=ScanStatus(record.status),
        scanner=record.scanner,
        generation=record.generation,
        findings=findings_from_json(record.findings),
        error=record.error,
        children=record.children,
        created_at=record.created_at,
        started_at=record.started_at,
        finished_at=record.finished_at,
        notes=record.notes,
        matched_at=record.matched_at,
        rematches=record.rematches,
    )


def inventory_notes(inventory: Inventory, matcher_notes: Sequence[str] = ()) -> tuple[str, ...]:
    """What was skipped while cataloguing and matching, capped for the report."""
    notes = [f"{note.path}: {note.message}" for note in inventory.notes]
    notes.extend(matcher_notes)
    return capped(notes)


def capped(notes: Sequence[str]) -> tuple[str, ...]:
    unique = list(dict.fromkeys(notes))
    if len(unique) <= MAX_NOTES:
        return tuple(unique)
    return (*unique[:MAX_NOTES], f"and {len(unique) - MAX_NOTES} more notes")


def error_reason(reason: str) -> str:
    return reason if len(reason) <= MAX_ERROR_LENGTH else reason[: MAX_ERROR_LENGTH - 1] + "…"


def aggregate_index(children: Sequence[ReportRecord | None]) -> IndexOutcome:
    """The report of an index whose images (at any depth) have these reports (None: none yet)."""
    statuses = [child.status if child is not None else PENDING for child in children]
    found: list[Finding] = []
    notes: list[str] = []
    for child in children:
        if child is None:
            continue
        found.extend(findings_from_json(child.findings))
        notes.extend(f"{child.digest}: {note}" for note in child.notes)
    generations = {child.generation for child in children if child is not None}
    generation = generations.pop() if len(generations) == 1 else None
    if any(status in (PENDING, RUNNING) for status in statuses):
        status = (
            RUNNING if RUNNING in statuses or SUCCESS in statuses or ERROR in statuses else PENDING
        )
        return IndexOutcome(status, None, "[]", None, ())
    failed = [child for child in children if child is not None and child.status == ERROR]
    error = None
    if failed:
        first = failed[0]
        error = error_reason(
            f"{len(failed)} of {len(children)} platform images could not be scanned;"
            f" {first.digest}: {first.error}"
        )
    return IndexOutcome(
        ERROR if failed else SUCCESS,
        generation,
        findings_json(merge_findings(found)),
        error,
        capped(notes),
    )


def _finding_key(finding: Finding) -> tuple[str, str, str, str, str]:
    return (*finding.identity, finding.location or "")
