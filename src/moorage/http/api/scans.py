"""Vulnerability scans: per-project settings, reports per manifest, and scan requests.

A report belongs to a manifest digest; it is served through a repository that holds the
manifest (404 otherwise), to callers with `read-scan` there. Asking for a scan needs `scan`;
scanning everything needs a system administrator. See `moorage.services.supply_chain.scanning`.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from moorage.domain.access import Action
from moorage.domain.digest import Digest
from moorage.domain.names import project_of
from moorage.http.access import (
    ADMIN,
    REPOSITORY,
    Permission,
    Scope,
    may_fetch_upstream,
    project_permission,
)
from moorage.http.api.common import NAME_PATTERN
from moorage.http.api.framework import ApiModel, ApiRoute, Call, RequestModel, UtcDateTime
from moorage.http.state import SERVICES
from moorage.scanning.report import ScanReport
from moorage.services.supply_chain.scanning import ScanSettingsInput, ScanSettingsView
from moorage.vulnerability.findings import Finding

SCANS = "scans"
SETTINGS_PATH = "/api/v1/projects/{project}/scan-settings"
REPORT_PATH = "/api/v1/repositories/{name:.+}/manifests/{digest:[^/]+}/scan"
SCAN_ALL_PATH = "/api/v1/scans"
READ_PROJECT = project_permission(Action.READ_PROJECT)
MANAGE_POLICIES = project_permission(Action.MANAGE_POLICIES)
READ_SCAN = Permission(Scope.REPOSITORY, Action.READ_SCAN)
SCAN = Permission(Scope.REPOSITORY, Action.SCAN)


class ScanSettings(ApiModel):
    project: str
    scan_on_push: bool
    attach_sbom: bool
    scanner: str | None = Field(description="a registered scanner adapter; null: built-in")
    updated_by: str | None
    updated_at: UtcDateTime | None


class NewScanSettings(RequestModel):
    """The project's complete scan settings (fields left out take their defaults)."""

    scan_on_push: bool = Field(False, description="scan every image pushed into the project")
    attach_sbom: bool = Field(
        False, description="attach each scanned image's SBOM to it as a referrer"
    )
    scanner: Annotated[str, Field(pattern=NAME_PATTERN, max_length=64)] | None = Field(
        None, description="the name of a registered scanner adapter; null: the built-in scanner"
    )


class FindingLocationView(ApiModel):
    location: str | None
    layer: str | None


class FindingView(ApiModel):
    id: str
    aliases: list[str]
    package: str
    ecosystem: str
    installed_version: str
    fixed_version: str | None
    severity: str
    cvss_score: float | None
    cvss_vector: str | None
    summary: str
    links: list[str]
    purl: str | None
    layer: str | None = Field(description="diff_id of the layer that installed the package")
    location: str | None = Field(description="the file the package was found in")
    locations: list[FindingLocationView] = Field(
        description="every file the same package version was found in (one finding for all)"
    )
    possibly_affected: bool = Field(
        description="the advisory names the package but its version could not be compared"
    )
    uncertainty: str | None = Field(description="why it is only possibly affected")
    severity_source: str | None = Field(
        description="the record and rating the severity came from (e.g. `GHSA-… CVSS_V3`)"
    )


class ScanReportView(ApiModel):
    digest: str
    status: str = Field(description="Pending, Running, Success or Error")
    scanner: str
    generation: str | None = Field(description="the vulnerability database generation matched")
    summary: dict[str, int] = Field(description="how many findings of each severity")
    worst_severity: str
    possibly_affected: int = Field(
        description="how many findings are possibly affected (counted in `summary` too)"
    )
    error: str | None
    children: list[str] = Field(description="for an index: its platform images' digests")
    notes: list[str] = Field(description="files or records that were skipped")
    created_at: UtcDateTime | None
    started_at: UtcDateTime | None
    finished_at: UtcDateTime | None = Field(description="when the layers were last catalogued")
    matched_at: UtcDateTime | None = Field(description="when the findings were last computed")
    rematches: int = Field(description="re-matches from the stored inventory since the scan")
    findings: list[FindingView]


class ScanAllResult(ApiModel):
    queued: int = Field(description="scan jobs queued (an image in several repositories once)")


def settings_view(view: ScanSettingsView) -> ScanSettings:
    return ScanSettings(
        project=view.project,
        scan_on_push=view.scan_on_push,
        attach_sbom=view.attach_sbom,
        scanner=view.scanner,
        updated_by=view.updated_by,
        updated_at=view.updated_at,
    )


def finding_view(finding: Finding) -> FindingView:
    return FindingView(
        id=finding.id,
        aliases=list(finding.aliases),
        package=finding.package,
        ecosystem=finding.ecosystem,
        installed_version=finding.installed_version,
        fixed_version=finding.fixed_version,
        severity=finding.severity.value,
        cvss_score=finding.cvss_score,
        cvss_vector=finding.cvss_vector,
        summary=finding.summary,
        links=list(finding.links),
        purl=finding.purl,
        layer=finding.layer,
        location=finding.location,
        locations=[
            FindingLocationView(location=place.location, layer=place.layer)
            for place in finding.all_locations
        ],
        possibly_affected=finding.possibly_affected,
        uncertainty=finding.uncertainty,
        severity_source=finding.severity_source,
    )


def report_view(report: ScanReport) -> ScanReportView:
    return ScanReportView(
        digest=report.digest,
        status=report.status.value,
        scanner=report.scanner,
        generation=report.generation,
        summary=report.summary,
        worst_severity=report.worst.value,
        possibly_affected=report.possibly_affected,
        error=report.error,
        children=list(report.children),
        notes=list(report.notes),
        created_at=report.created_at,
        started_at=report.started_at,
        finished_at=report.finished_at,
        matched_at=report.matched_at,
        rematches=report.rematches,
        findings=[finding_view(finding) for finding in report.findings],
    )


async def get_scan_settings(call: Call) -> ScanSettings:
    return settings_view(await call.run(call.iam.scans.settings, call.project))


async def put_scan_settings(call: Call) -> ScanSettings:
    body = call.body(NewScanSettings)
    view = await call.run(
        call.iam.scans.update_settings,
        call.actor,
        call.project,
        ScanSettingsInput(body.scan_on_push, body.attach_sbom, body.scanner),
    )
    return settings_view(view)


async def get_scan_report(call: Call) -> ScanReportView:
    digest = str(Digest.parse(call.param("digest")))
    report = await call.iam.scans.report_for(call.request[REPOSITORY], digest)
    return report_view(report)


async def request_scan(call: Call) -> ScanReportView:
    digest = str(Digest.parse(call.param("digest")))
    repository = call.request[REPOSITORY]
    await _fill_from_upstream(call, repository, digest)
    report = await call.iam.scans.request_scan(repository, digest, call.actor)
    return report_view(report)


async def _fill_from_upstream(call: Call, repository: str, digest: str) -> None:
    """An image of a proxy-cache project is cached as clients pull it: before it is scanned,
    the blobs nobody pulled yet are fetched through the proxy (upstream-fetch decides, as for
    a pull)."""
    cache = call.request.app[SERVICES].proxy
    proxy = await cache.config_for(project_of(repository))
    if proxy is None:
        return
    allowed = await may_fetch_upstream(
        call.request, repository, public_fetch=proxy.anonymous_fetch, challenge=False
    )

    async def may_fetch(_required: bool) -> bool:
        return allowed

    await cache.fill_image(proxy, repository, digest, call.actor, may_fetch)


async def scan_everything(call: Call) -> ScanAllResult:
    return ScanAllResult(queued=await call.iam.scans.scan_all(call.actor))


ROUTES: tuple[ApiRoute, ...] = (
    ApiRoute(
        "GET",
        SETTINGS_PATH,
        get_scan_settings,
        READ_PROJECT,
        "The project's scan settings",
        SCANS,
        response=ScanSettings,
    ),
    ApiRoute(
        "PUT",
        SETTINGS_PATH,
        put_scan_settings,
        MANAGE_POLICIES,
        "Replace the project's scan settings",
        SCANS,
        body=NewScanSettings,
        response=ScanSettings,
    ),
    ApiRoute(
        "GET",
        REPORT_PATH,
        get_scan_report,
        READ_SCAN,
        "The manifest's latest scan report",
        SCANS,
        response=ScanReportView,
    ),
    ApiRoute(
        "POST",
        REPORT_PATH,
        request_scan,
        SCAN,
        "Scan the manifest (again); the report stays Pending until the scan is done",
        SCANS,
        response=ScanReportView,
        status=202,
        errors=(422,),
    ),
    ApiRoute(
        "POST",
        SCAN_ALL_PATH,
        scan_everything,
        ADMIN,
        "Scan every image of every repository",
        SCANS,
        response=ScanAllResult,
        status=202,
    ),
)
