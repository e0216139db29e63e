"""Harbor's Pluggable Scanner Adapter API (v1.2): its documents, and their translation to and
from Moorage's findings and reports.

Pure: no HTTP and no storage. The client (`moorage.services.supply_chain.scanner_adapters`)
parses what an external adapter answers with these models; the server
(`moorage.http.scanner_api`) renders the built-in scanner's reports with them. Parsing is
lenient about missing or null optional fields (adapters differ) and strict about sizes: every
list and string an adapter sends is capped.

Severity: Harbor's scale is Unknown < Negligible < Low < Medium < High < Critical. Harbor's
`Negligible` becomes Low here (as the word "negligible" does everywhere in Moorage), and
Moorage's None (a CVSS score of 0.0) is sent as `Negligible`; the other levels map one to one.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Final, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from moorage.domain.digest import Digest
from moorage.domain.errors import RegistryError
from moorage.domain.mediatypes import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
)
from moorage.scanning.report import ScanReport
from moorage.vulnerability.findings import Finding, worst_severity
from moorage.vulnerability.severity import Severity

# -- media types

METADATA_V1_1: Final = "application/vnd.scanner.adapter.metadata+json; version=1.1"
SCAN_REQUEST_V1_1: Final = "application/vnd.scanner.adapter.scan.request+json; version=1.1"
SCAN_REQUEST_V1_0: Final = "application/vnd.scanner.adapter.scan.request+json; version=1.0"
SCAN_RESPONSE: Final = "application/vnd.scanner.adapter.scan.response+json; version=1.0"
ERROR: Final = "application/vnd.scanner.adapter.error+json; version=1.0"
# The two vulnerability report types: the same document under two names (newer Harbor and
# Trivy use the first). In order of preference.
REPORT_V1_1: Final = "application/vnd.security.vulnerability.report; version=1.1"
REPORT_HARBOR_V1_0: Final = "application/vnd.scanner.adapter.vuln.report.harbor+json; version=1.0"
REPORT_TYPES: Final = (REPORT_V1_1, REPORT_HARBOR_V1_0)
# What the built-in scanner reads: image manifests, and indexes (the worst of their platforms).
BUILTIN_CONSUMES: Final = (OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, DOCKER_MANIFEST_LIST)

VULNERABILITY: Final = "vulnerability"
PROPERTY_SCANNER_TYPE: Final = "harbor.scanner-adapter/scanner-type"
PROPERTY_DB_UPDATED_AT: Final = "harbor.scanner-adapter/vulnerability-database-updated-at"

# -- caps on what an adapter may send

MAX_VULNERABILITIES: Final = 100_000
MAX_CAPABILITIES: Final = 32
MAX_MIME_TYPES: Final = 32
MAX_PROPERTIES: Final = 64
MAX_LINKS: Final = 32
MAX_ALIASES: Final = 64
MAX_DESCRIPTION: Final = 8192
MAX_SCAN_ID: Final = 1024
_SHORT: Final = 256
_MEDIUM: Final = 1024
_LONG: Final = 4096


class HarborFormatError(ValueError):
    """A document does not follow the adapter API."""


def normalize_media_type(value: str) -> str:
    """`A/B;version=1.1` and `a/b; version=1.1` are the same type: lower case, one space."""
    parts = [part.strip().lower() for part in value.split(";")]
    return "; ".join(part for part in parts if part)


def same_media_type(left: str, right: str) -> bool:
    return normalize_media_type(left) == normalize_media_type(right)


def report_type_of(accept: str) -> str | None:
    """The report type an Accept header asks for (None: none that is served here).

    `*/*` or no header means the newer report type, which Harbor asks for by name anyway.
    """
    if not accept.strip() or accept.strip() == "*/*":
        return REPORT_V1_1
    for candidate in _accept_values(accept):
        for report_type in REPORT_TYPES:
            if same_media_type(candidate, report_type):
                return report_type
    return None


def _accept_values(accept: str) -> list[str]:
    # A report type has a comma-free `version=` parameter, so commas separate alternatives.
    return [value for value in (part.strip() for part in accept.split(",")) if value]


# -- documents


def _truncated(limit: int) -> BeforeValidator:
    def cut(value: object) -> object:
        return value[:limit] if isinstance(value, str) else value

    return BeforeValidator(cut)


def _null_as_empty(value: object) -> object:
    return [] if value is None else value


def _null_as_dict(value: object) -> object:
    return {} if value is None else value


ShortText = Annotated[str, Field(max_length=_SHORT)]
MimeTypes = Annotated[
    list[Annotated[str, Field(max_length=_SHORT)]],
    Field(max_length=MAX_MIME_TYPES),
    BeforeValidator(_null_as_empty),
]


class Document(BaseModel):
    """Read leniently (unknown fields ignored), written with every field."""

    model_config = ConfigDict(extra="ignore", frozen=True)


D = TypeVar("D", bound=Document)


class Scanner(Document):
    name: ShortText = ""
    vendor: ShortText = ""
    version: ShortText = ""


class Capability(Document):
    # Without a type, a capability is a vulnerability scan (the spec's backward compatibility).
    type: ShortText = VULNERABILITY
    consumes_mime_types: MimeTypes
    produces_mime_types: MimeTypes
    additional_attributes: dict[str, Any] | None = None


class AdapterMetadata(Document):
    scanner: Scanner
    capabilities: Annotated[list[Capability], Field(max_length=MAX_CAPABILITIES)]
    properties: Annotated[
        dict[ShortText, Annotated[str, Field(max_length=_LONG)]],
        Field(max_length=MAX_PROPERTIES),
        BeforeValidator(_null_as_dict),
    ] = Field(default_factory=dict)

    def report_type_for(self, artifact_media_type: str) -> str | None:
        """The preferred vulnerability report type produced for that artifact type, if any."""
        produced: list[str] = []
        for capability in self.capabilities:
            if capability.type != VULNERABILITY:
                continue
            if any(same_media_type(m, artifact_media_type) for m in capability.consumes_mime_types):
                produced.extend(capability.produces_mime_types)
        for report_type in REPORT_TYPES:
            if any(same_media_type(m, report_type) for m in produced):
                return report_type
        return None

    def vulnerability_consumes(self) -> list[str]:
        return [
            media_type
            for capability in self.capabilities
            if capability.type == VULNERABILITY
            for media_type in capability.consumes_mime_types
        ]


class Registry(Document):
    url: Annotated[str, Field(min_length=1, max_length=_MEDIUM)]
    authorization: Annotated[str, Field(max_length=_LONG * 4)] | None = None


class Artifact(Document):
    repository: Annotated[str, Field(min_length=1, max_length=_SHORT)]
    digest: Annotated[str, Field(min_length=1, max_length=200)]
    tag: Annotated[str, Field(max_length=128)] | None = None
    mime_type: Annotated[str, Field(max_length=_SHORT)] | None = None


class ScanRequest(Document):
    registry: Registry
    artifact: Artifact
    enabled_capabilities: (
        Annotated[list[dict[str, Any]], Field(max_length=MAX_CAPABILITIES)] | None
    ) = None

    def asks_for_vulnerabilities(self) -> bool:
        """Without `enabled_capabilities` every capability is asked for (the spec's default)."""
        if self.enabled_capabilities is None:
            return True
        return any(item.get("type") == VULNERABILITY for item in self.enabled_capabilities)


class ScanResponse(Document):
    id: Annotated[str, Field(min_length=1, max_length=MAX_SCAN_ID)]


class ErrorDetail(Document):
    message: Annotated[str, _truncated(_MEDIUM)] = ""


class ErrorResponse(Document):
    error: ErrorDetail


class Cvss(Document):
    score_v3: float | None = None
    score_v2: float | None = None
    vector_v3: Annotated[str, Field(max_length=_SHORT)] | None = None
    vector_v2: Annotated[str, Field(max_length=_SHORT)] | None = None


class Layer(Document):
    digest: Annotated[str, Field(max_length=200)] | None = None
    diff_id: Annotated[str, Field(max_length=200)] | None = None


class VulnerabilityItem(Document):
    id: Annotated[str, Field(min_length=1, max_length=_SHORT)]
    package: Annotated[str, Field(max_length=_MEDIUM)] = ""
    version: Annotated[str, Field(max_length=_SHORT)] = ""
    fix_version: Annotated[str, Field(max_length=_MEDIUM)] | None = None
    severity: ShortText = "Unknown"
    description: Annotated[str, _truncated(MAX_DESCRIPTION)] | None = None
    links: Annotated[
        list[Annotated[str, Field(max_length=2048)]],
        Field(max_length=MAX_LINKS),
        BeforeValidator(_null_as_empty),
    ] = Field(default_factory=list)
    preferred_cvss: Cvss | None = None
    cwe_ids: Annotated[
        list[Annotated[str, Field(max_length=64)]],
        Field(max_length=MAX_LINKS),
        BeforeValidator(_null_as_empty),
    ] = Field(default_factory=list)
    vendor_attributes: dict[str, Any] | None = None
    layer: Layer | None = None  # not in the spec, but Trivy sends it


class VulnerabilityReport(Document):
    generated_at: datetime | None = None
    artifact: Artifact | None = None
    scanner: Scanner | None = None
    severity: ShortText = "Unknown"
    vulnerabilities: Annotated[
        list[VulnerabilityItem],
        Field(max_length=MAX_VULNERABILITIES),
        BeforeValidator(_null_as_empty),
    ] = Field(default_factory=list)


def _parse(model: type[D], raw: bytes | str, what: str) -> D:
    try:
        return model.model_validate_json(raw)
    except ValidationError as error:
        first = error.errors(include_url=False, include_input=False)[:3]
        where = "; ".join(
            f"{'.'.join(str(part) for part in item['loc']) or '(root)'}: {item['msg']}"
            for item in first
        )
        raise HarborFormatError(f"malformed {what}: {where}"[:_MEDIUM]) from None


def parse_metadata(raw: bytes | str) -> AdapterMetadata:
    return _parse(AdapterMetadata, raw, "scanner metadata")


def parse_scan_request(raw: bytes | str) -> ScanRequest:
    return _parse(ScanRequest, raw, "scan request")


def parse_scan_response(raw: bytes | str) -> ScanResponse:
    return _parse(ScanResponse, raw, "scan response")


def parse_report(raw: bytes | str) -> VulnerabilityReport:
    return _parse(VulnerabilityReport, raw, "vulnerability report")


def error_message(raw: bytes | str) -> str | None:
    """The message of an ErrorResponse body, or None when the body is not one."""
    try:
        return ErrorResponse.model_validate_json(raw).error.message or None
    except ValidationError:
        return None


def error_document(message: str) -> dict[str, Any]:
    return {"error": {"message": message[:_MEDIUM]}}


# -- severities

_FROM_HARBOR: Final = {
    "unknown": Severity.UNKNOWN,
    "negligible": Severity.LOW,
    "low": Severity.LOW,
    "medium": Severity.MEDIUM,
    "high": Severity.HIGH,
    "critical": Severity.CRITICAL,
}
_TO_HARBOR: Final = {
    Severity.UNKNOWN: "Unknown",
    Severity.NONE: "Negligible",
    Severity.LOW: "Low",
    Severity.MEDIUM: "Medium",
    Severity.HIGH: "High",
    Severity.CRITICAL: "Critical",
}


def severity_from_harbor(label: str) -> Severity:
    return _FROM_HARBOR.get(label.strip().lower(), Severity.UNKNOWN)


def severity_to_harbor(severity: Severity) -> str:
    return _TO_HARBOR[severity]


# -- report -> findings


def findings_from_report(report: VulnerabilityReport) -> tuple[Finding, ...]:
    """An adapter's report as findings (one per vulnerability item, duplicates dropped)."""
    seen: set[tuple[str, str, str]] = set()
    findings: list[Finding] = []
    for item in report.vulnerabilities:
        key = (item.id, item.package, item.version)
        if key in seen:
            continue
        seen.add(key)
        findings.append(finding_from_item(item))
    return tuple(findings)


def finding_from_item(item: VulnerabilityItem) -> Finding:
    vendor = item.vendor_attributes or {}
    score, vector = _cvss_of(item.preferred_cvss, vendor.get("cvss"))
    layer = item.layer.diff_id if item.layer is not None else None
    return Finding(
        id=item.id,
        aliases=tuple(_strings(vendor.get("aliases"), MAX_ALIASES, _SHORT)),
        package=item.package,
        ecosystem=_string(vendor.get("ecosystem"), _SHORT) or "",
        installed_version=item.version,
        fixed_version=item.fix_version or None,
        severity=severity_from_harbor(item.severity),
        cvss_score=score,
        cvss_vector=vector,
        summary=item.description or "",
        links=tuple(item.links),
        purl=_string(vendor.get("purl"), _MEDIUM),
        layer=layer or _string(vendor.get("layer"), 200),
        location=_string(vendor.get("location"), _MEDIUM),
        possibly_affected=vendor.get("possibly_affected") is True,
        uncertainty=_string(vendor.get("uncertainty"), _MEDIUM),
        severity_source=_string(vendor.get("severity_source"), _SHORT),
    )


def _cvss_of(preferred: Cvss | None, exact: object) -> tuple[float | None, str | None]:
    # Moorage's own reports carry the exact rating (a CVSS 4 one included) beside the spec's
    # v3/v2 fields; other adapters only fill the latter.
    if isinstance(exact, Mapping):
        score, vector = exact.get("score"), _string(exact.get("vector"), _SHORT)
        if isinstance(score, int | float) and not isinstance(score, bool):
            return float(score), vector
    if preferred is None:
        return None, None
    if preferred.score_v3 is not None or preferred.vector_v3:
        return preferred.score_v3, preferred.vector_v3 or None
    return preferred.score_v2, preferred.vector_v2 or None


def _string(value: object, limit: int) -> str | None:
    return value[:limit] if isinstance(value, str) and value else None


def _strings(value: object, count: int, limit: int) -> list[str]:
    if not isinstance(value, list):
        return []
    return [item[:limit] for item in value[:count] if isinstance(item, str) and item]


# -- findings -> report


def vulnerability_report(
    report: ScanReport, artifact: Artifact, scanner: Scanner, generated_at: datetime | None = None
) -> dict[str, Any]:
    """A completed report as Harbor's vulnerability report document."""
    moment = generated_at or report.finished_at or datetime.now(UTC)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    findings = report.findings
    return {
        "generated_at": moment.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "artifact": artifact.model_dump(exclude_none=True),
        "scanner": scanner.model_dump(),
        "severity": severity_to_harbor(worst_severity(findings)) if findings else "Unknown",
        "vulnerabilities": [vulnerability_item(finding) for finding in findings],
    }


def vulnerability_item(finding: Finding) -> dict[str, Any]:
    vendor: dict[str, Any] = {"ecosystem": finding.ecosystem, "aliases": list(finding.aliases)}
    if finding.purl:
        vendor["purl"] = finding.purl
    if finding.location:
        vendor["location"] = finding.location
    if len(finding.all_locations) > 1:
        # Harbor's item has one layer; every file holding the package is listed here.
        vendor["locations"] = [place.to_json() for place in finding.all_locations]
    if finding.possibly_affected:
        vendor["possibly_affected"] = True
        vendor["uncertainty"] = finding.uncertainty
    if finding.severity_source:
        vendor["severity_source"] = finding.severity_source
    if finding.cvss_score is not None:
        vendor["cvss"] = {"score": finding.cvss_score, "vector": finding.cvss_vector}
    item: dict[str, Any] = {
        "id": finding.id,
        "package": finding.package,
        "version": finding.installed_version,
        "fix_version": finding.fixed_version or "",
        "severity": severity_to_harbor(finding.severity),
        "description": finding.summary,
        "links": list(finding.links),
        "preferred_cvss": _preferred_cvss(finding.cvss_score, finding.cvss_vector),
        "cwe_ids": [],
        "vendor_attributes": vendor,
    }
    if finding.layer:
        item["layer"] = {"diff_id": finding.layer}
    return item


def _preferred_cvss(score: float | None, vector: str | None) -> dict[str, Any]:
    """The spec knows CVSS v3 and v2 only; a v4 rating stays in vendor_attributes."""
    if vector is None:
        return {"score_v3": score} if score is not None else {}
    if vector.startswith("CVSS:3"):
        return {"score_v3": score, "vector_v3": vector}
    if vector.startswith("CVSS:"):
        return {}
    return {"score_v2": score, "vector_v2": vector}


def metadata_document(
    scanner: Scanner, consumes: Iterable[str], properties: Mapping[str, str]
) -> dict[str, Any]:
    return {
        "scanner": scanner.model_dump(),
        "capabilities": [
            {
                "type": VULNERABILITY,
                "consumes_mime_types": list(consumes),
                "produces_mime_types": list(REPORT_TYPES),
            }
        ],
        "properties": dict(properties),
    }


def scan_request_document(
    registry_url: str, authorization: str, repository: str, digest: str, media_type: str
) -> dict[str, Any]:
    return {
        "registry": {"url": registry_url, "authorization": authorization},
        "artifact": {"repository": repository, "digest": digest, "mime_type": media_type},
        "enabled_capabilities": [
            {"type": VULNERABILITY, "produces_mime_types": list(REPORT_TYPES)}
        ],
    }


# -- scan ids (the server side's): opaque to clients, decoded only here


def encode_scan_id(repository: str, digest: str) -> str:
    raw = json.dumps([repository, digest], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_scan_id(scan_id: str) -> tuple[str, str]:
    """(repository, digest) of a scan id; HarborFormatError when it is not one of ours."""
    if not scan_id or len(scan_id) > MAX_SCAN_ID:
        raise HarborFormatError("unknown scan id")
    try:
        raw = base64.urlsafe_b64decode(scan_id + "=" * (-len(scan_id) % 4))
        repository, digest = json.loads(raw)
    except (binascii.Error, ValueError, TypeError):
        raise HarborFormatError("unknown scan id") from None
    if not isinstance(repository, str) or not isinstance(digest, str):
        raise HarborFormatError("unknown scan id")
    try:
        return repository, str(Digest.parse(digest))
    except RegistryError:
        raise HarborFormatError("unknown scan id") from None


# -- registry URLs


def same_registry(url: str, candidates: Iterable[str]) -> bool:
    """Whether the base URL `url` is one of `candidates`: the same origin (scheme, host,
    port), and no path."""
    origin = _origin(url)
    if origin is None or urlsplit(url.strip()).path.strip("/"):
        return False
    return any(_origin(other) == origin for other in candidates)


def same_origin(url: str, candidates: Iterable[str]) -> bool:
    """Whether `url` (whatever its path) is served by the origin of one of `candidates`."""
    origin = _origin(url)
    return origin is not None and any(_origin(other) == origin for other in candidates)


_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


def _origin(url: str) -> tuple[str, str, int] | None:
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return scheme, parts.hostname.lower(), port or _DEFAULT_PORTS[scheme]
