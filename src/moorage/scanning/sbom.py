"""Software bills of materials: an image's inventory as CycloneDX 1.6 or SPDX 2.3 JSON.

Pure functions from an `Inventory` (and, for CycloneDX, optionally the scan's findings) plus
what identifies the image to a document. The same input gives the same bytes except for the
creation time: identifiers (bom-refs, SPDX ids, the serial number and the SPDX namespace) are
derived from the image digest and the packages, never random, and packages are ordered.

The image is the document's subject (CycloneDX `metadata.component` of type `container`, the
SPDX package the document DESCRIBES); the distribution is an operating-system component that
holds the distribution's packages; every package carries its purl and where it was found as
properties in the `moorage:` namespace (see docs/scanning.md).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, Final

from cyclonedx.model import HashAlgorithm, HashType, Property, XsUri
from cyclonedx.model.bom import Bom, BomMetaData
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.model.dependency import Dependable, Dependency
from cyclonedx.model.impact_analysis import ImpactAnalysisAffectedStatus
from cyclonedx.model.tool import ToolRepository
from cyclonedx.model.vulnerability import (
    BomTarget,
    BomTargetVersionRange,
    Vulnerability,
    VulnerabilityAdvisory,
    VulnerabilityRating,
    VulnerabilityReference,
    VulnerabilityScoreSource,
    VulnerabilitySeverity,
    VulnerabilitySource,
)
from cyclonedx.output.json import JsonV1Dot6
from packageurl import PackageURL

from moorage import __version__
from moorage.scanning.packages import Distro, Ecosystem, Inventory, Package
from moorage.vulnerability.findings import Finding
from moorage.vulnerability.severity import Severity

CYCLONEDX_JSON: Final = "application/vnd.cyclonedx+json"
SPDX_JSON: Final = "application/spdx+json"

# Property names (CycloneDX) this module writes; documented in docs/scanning.md.
PROPERTY_LOCATION: Final = "moorage:package:location"
PROPERTY_LAYER: Final = "moorage:package:layer"
PROPERTY_ECOSYSTEM: Final = "moorage:package:ecosystem"
PROPERTY_SOURCE_NAME: Final = "moorage:package:source-name"
PROPERTY_SOURCE_VERSION: Final = "moorage:package:source-version"
PROPERTY_OS_PACKAGE: Final = "moorage:package:os-package"
PROPERTY_GENERATION: Final = "moorage:scan:database-generation"

TOOL_NAME: Final = "moorage"
DEFAULT_REGISTRY_URL: Final = "https://moorage.invalid"
# Distribution package databases: these belong to the operating-system component.
_DISTRO_ECOSYSTEMS: Final = frozenset({Ecosystem.DEBIAN, Ecosystem.ALPINE, Ecosystem.RPM})
_MAX_LINKS_PER_VULNERABILITY: Final = 20
_MAX_TEXT: Final = 2000  # summaries and other free text copied from advisories
_ID_NAMESPACE: Final = uuid.UUID("6f1f3c4e-8f0b-5d55-9a55-6d6f6f726167")  # fixed: stable serials


class SbomFormat(StrEnum):
    CYCLONEDX = "cyclonedx"
    SPDX = "spdx"

    @property
    def media_type(self) -> str:
        return CYCLONEDX_JSON if self is SbomFormat.CYCLONEDX else SPDX_JSON

    @property
    def file_suffix(self) -> str:
        return ".cdx.json" if self is SbomFormat.CYCLONEDX else ".spdx.json"


@dataclass(frozen=True, slots=True)
class ImageSubject:
    """The image a document describes."""

    repository: str
    digest: str  # the image manifest's digest, `sha256:<hex>`
    registry_url: str | None = None  # e.g. https://registry.example; None when unknown

    @property
    def registry_host(self) -> str | None:
        if not self.registry_url:
            return None
        return self.registry_url.split("://", 1)[-1].rstrip("/") or None

    @property
    def purl(self) -> str:
        """`pkg:oci/<name>@<digest>?repository_url=<host>/<repository>` (purl-spec's oci type)."""
        host = self.registry_host
        qualifiers = {"repository_url": f"{host}/{self.repository}"} if host else None
        name = self.repository.rsplit("/", 1)[-1]
        return str(PackageURL(type="oci", name=name, version=self.digest, qualifiers=qualifiers))

    @property
    def spdx_namespace(self) -> str:
        base = (self.registry_url or DEFAULT_REGISTRY_URL).rstrip("/")
        return f"{base}/spdx/{self.repository}/{self.digest}"

    @property
    def file_stem(self) -> str:
        """A file name for downloads: the repository's last segment and the digest's hex."""
        name = self.repository.rsplit("/", 1)[-1]
        return f"{name}-{self.digest.split(':', 1)[-1][:12]}"


@dataclass(frozen=True, slots=True)
class SbomDocument:
    format: SbomFormat
    body: bytes
    fingerprint: str  # sha256 of the content without its creation time

    @property
    def media_type(self) -> str:
        return self.format.media_type


def build_document(
    sbom_format: SbomFormat,
    subject: ImageSubject,
    inventory: Inventory,
    *,
    created: datetime,
    findings: Sequence[Finding] | None = None,
    generation: str | None = None,
) -> SbomDocument:
    """The document in `sbom_format`; findings go into CycloneDX only (SPDX 2.3 has no place)."""
    if sbom_format is SbomFormat.CYCLONEDX:
        return cyclonedx_document(
            subject, inventory, created=created, findings=findings, generation=generation
        )
    return spdx_document(subject, inventory, created=created)


# -- the packages, in a stable order with stable identifiers


@dataclass(frozen=True, slots=True)
class _Entry:
    package: Package
    key: str  # 16 hex digits identifying the package within the document
    purl: str | None

    @property
    def bom_ref(self) -> str:
        return f"package:{self.key}"

    @property
    def spdx_id(self) -> str:
        return f"SPDXRef-Package-{self.key}"

    @property
    def in_distro(self) -> bool:
        return self.package.ecosystem in _DISTRO_ECOSYSTEMS


def _entries(inventory: Inventory) -> list[_Entry]:
    entries: dict[str, _Entry] = {}
    for package in inventory.packages:
        identity = "\0".join(
            (
                str(package.ecosystem),
                package.name,
                package.version,
                package.location,
                package.layer or "",
                package.arch or "",
            )
        )
        key = hashlib.sha256(identity.encode()).hexdigest()[:16]
        entries.setdefault(key, _Entry(package, key, _normal_purl(package.purl)))
    return sorted(
        entries.values(),
        key=lambda entry: (
            str(entry.package.ecosystem),
            entry.package.name,
            entry.package.version,
            entry.package.location,
            entry.key,
        ),
    )


def _normal_purl(text: str) -> str | None:
    """The purl as packageurl-python writes it, so both formats carry the same string."""
    try:
        return str(PackageURL.from_string(text))
    except ValueError:
        return None


def _distro_key(distro: Distro) -> str:
    return hashlib.sha256(f"{distro.id}\0{distro.version_id or ''}".encode()).hexdigest()[:16]


def _fingerprint(document: dict[str, Any], *time_path: str) -> str:
    """sha256 of the canonical JSON of `document` with the creation time left out."""
    stripped = json.loads(json.dumps(document))
    node = stripped
    for part in time_path[:-1]:
        node = node.get(part, {})
    node.pop(time_path[-1], None)
    canonical = json.dumps(stripped, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _utc(moment: datetime) -> datetime:
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment.replace(microsecond=0)


# -- CycloneDX 1.6


def cyclonedx_document(
    subject: ImageSubject,
    inventory: Inventory,
    *,
    created: datetime,
    findings: Sequence[Finding] | None = None,
    generation: str | None = None,
) -> SbomDocument:
    entries = _entries(inventory)
    image = Component(
        type=ComponentType.CONTAINER,
        name=subject.repository,
        version=subject.digest,
        bom_ref=f"image:{subject.digest}",
        purl=PackageURL.from_string(subject.purl),
        hashes=_hashes(subject.digest),
    )
    metadata_properties = (
        [Property(name=PROPERTY_GENERATION, value=generation)] if generation else []
    )
    bom = Bom(
        serial_number=uuid.uuid5(_ID_NAMESPACE, f"cyclonedx\0{subject.spdx_namespace}"),
        metadata=BomMetaData(
            timestamp=_utc(created),
            component=image,
            tools=ToolRepository(
                components=[
                    Component(
                        type=ComponentType.APPLICATION,
                        name=TOOL_NAME,
                        version=__version__,
                        bom_ref=f"tool:{TOOL_NAME}",
                    )
                ]
            ),
            properties=metadata_properties,
        ),
    )
    _DependencyIndex(bom)
    components = {entry.key: _component(entry) for entry in entries}
    bom.components.update(components.values())  # one sort, not one insertion each
    operating_system: Component | None = None
    if inventory.distro is not None:
        operating_system = _os_component(inventory.distro)
        bom.components.add(operating_system)
        bom.register_dependency(
            operating_system,
            [components[entry.key] for entry in entries if entry.in_distro],
        )
    # The image holds the operating system, which holds the distribution's packages, and every
    # other package directly (all of them when the distribution is unknown). Each component
    # gets its own (empty) entry as it is registered as a dependency.
    direct = [
        components[entry.key] for entry in entries if not (entry.in_distro and operating_system)
    ]
    bom.register_dependency(image, [*([operating_system] if operating_system else []), *direct])
    if findings:
        for vulnerability in _vulnerabilities(findings, entries):
            bom.vulnerabilities.add(vulnerability)
    text = JsonV1Dot6(bom).output_as_string(indent=2)
    document = json.loads(text)
    return SbomDocument(
        SbomFormat.CYCLONEDX, text.encode(), _fingerprint(document, "metadata", "timestamp")
    )


class _DependencyIndex:
    """Dependency registration in constant time, for one Bom.

    The library's `Bom.register_dependency` finds a target by scanning every registered
    dependency, and its output step registers every component again: quadratic, 20 s for
    5,000 packages. Each target here is registered once with everything it depends on, so an
    index by bom-ref builds the same graph. It replaces the method on the instance, because a
    subclass of `Bom` is not serialized by the library.
    """

    def __init__(self, bom: Bom) -> None:
        self._bom = bom
        self._registered: dict[str, Dependency] = {}
        setattr(bom, "register_dependency", self.register)  # noqa: B010 - see above

    def register(self, target: Dependable, depends_on: Iterable[Dependable] | None = None) -> None:
        key = str(target.bom_ref.value)
        children = list(depends_on or ())
        if key in self._registered:
            if children:
                raise ValueError(f"the dependencies of {key} are registered already")
            return
        registered = Dependency(
            ref=target.bom_ref, dependencies=[Dependency(ref=child.bom_ref) for child in children]
        )
        self._registered[key] = registered
        self._bom.dependencies.add(registered)
        for child in children:
            self.register(child)


def _hashes(digest: str) -> list[HashType]:
    algorithm, _, hex_value = digest.partition(":")
    known = {"sha256": HashAlgorithm.SHA_256, "sha512": HashAlgorithm.SHA_512}
    return [HashType(alg=known[algorithm], content=hex_value)] if algorithm in known else []


def _component(entry: _Entry) -> Component:
    package = entry.package
    group, name = _group_and_name(package)
    properties = [
        Property(name=PROPERTY_ECOSYSTEM, value=str(package.ecosystem)),
        Property(name=PROPERTY_LOCATION, value=package.location),
    ]
    if package.layer:
        properties.append(Property(name=PROPERTY_LAYER, value=package.layer))
    if package.source_name:
        properties.append(Property(name=PROPERTY_SOURCE_NAME, value=package.source_name))
    if package.source_version:
        properties.append(Property(name=PROPERTY_SOURCE_VERSION, value=package.source_version))
    if package.owner:
        properties.append(Property(name=PROPERTY_OS_PACKAGE, value=package.owner))
    return Component(
        type=ComponentType.LIBRARY,
        name=name,
        group=group,
        version=package.version,
        bom_ref=entry.bom_ref,
        purl=PackageURL.from_string(entry.purl) if entry.purl else None,
        properties=properties,
    )


def _group_and_name(package: Package) -> tuple[str | None, str]:
    if package.ecosystem is Ecosystem.MAVEN and ":" in package.name:
        group, _, artifact = package.name.rpartition(":")
        return group, artifact
    if package.ecosystem is Ecosystem.NPM and package.name.startswith("@") and "/" in package.name:
        scope, _, name = package.name.partition("/")
        return scope, name
    return None, package.name


def _os_component(distro: Distro) -> Component:
    return Component(
        type=ComponentType.OPERATING_SYSTEM,
        name=distro.id,
        version=distro.version_id,
        description=distro.pretty_name,
        bom_ref=f"os:{_distro_key(distro)}",
    )


_SEVERITIES: Final = {
    Severity.UNKNOWN: VulnerabilitySeverity.UNKNOWN,
    Severity.NONE: VulnerabilitySeverity.NONE,
    Severity.LOW: VulnerabilitySeverity.LOW,
    Severity.MEDIUM: VulnerabilitySeverity.MEDIUM,
    Severity.HIGH: VulnerabilitySeverity.HIGH,
    Severity.CRITICAL: VulnerabilitySeverity.CRITICAL,
}


def _vulnerabilities(findings: Sequence[Finding], entries: Sequence[_Entry]) -> list[Vulnerability]:
    """One vulnerability per advisory id, affecting each package it was found in."""
    by_id: dict[str, list[Finding]] = {}
    for finding in findings:
        by_id.setdefault(finding.id, []).append(finding)
    refs = _package_refs(entries)
    result = []
    for advisory_id, group in sorted(by_id.items()):
        first = group[0]
        affected = sorted({ref for finding in group for ref in _refs_of(finding, refs)})
        recommendations = sorted(
            {f"Upgrade {f.package} to {f.fixed_version}" for f in group if f.fixed_version}
        )
        result.append(
            Vulnerability(
                bom_ref=f"vulnerability:{advisory_id}",
                id=advisory_id,
                source=_source_of(advisory_id),
                references=[
                    VulnerabilityReference(id=alias, source=_source_of(alias))
                    for alias in sorted(set(first.aliases) - {advisory_id})
                ],
                ratings=[_rating(first)],
                description=first.summary[:_MAX_TEXT] or None,
                recommendation="; ".join(recommendations)[:_MAX_TEXT] or None,
                advisories=_advisories(first.links),
                affects=[
                    BomTarget(
                        ref=ref,
                        versions=[
                            BomTargetVersionRange(
                                version=refs.versions[ref],
                                status=ImpactAnalysisAffectedStatus.AFFECTED,
                            )
                        ],
                    )
                    for ref in affected
                ],
            )
        )
    return result


@dataclass(frozen=True, slots=True)
class _PackageRefs:
    by_purl_and_location: Mapping[tuple[str, str], str]
    by_name_and_version: Mapping[tuple[str, str], list[str]]
    versions: Mapping[str, str]


def _package_refs(entries: Iterable[_Entry]) -> _PackageRefs:
    by_purl: dict[tuple[str, str], str] = {}
    by_name: dict[tuple[str, str], list[str]] = {}
    versions: dict[str, str] = {}
    for entry in entries:
        package = entry.package
        by_purl[(package.purl, package.location)] = entry.bom_ref
        by_name.setdefault((package.name, package.version), []).append(entry.bom_ref)
        versions[entry.bom_ref] = package.version
    return _PackageRefs(by_purl, by_name, versions)


def _refs_of(finding: Finding, refs: _PackageRefs) -> list[str]:
    if finding.purl is not None:
        exact = [
            ref
            for place in finding.all_locations
            if place.location is not None
            and (ref := refs.by_purl_and_location.get((finding.purl, place.location))) is not None
        ]
        if exact:
            return exact
    return refs.by_name_and_version.get((finding.package, finding.installed_version), [])


def _source_of(advisory_id: str) -> VulnerabilitySource:
    if advisory_id.startswith("CVE-"):
        return VulnerabilitySource(
            name="NVD", url=XsUri(f"https://nvd.nist.gov/vuln/detail/{advisory_id}")
        )
    if advisory_id.startswith("GHSA-"):
        return VulnerabilitySource(
            name="GitHub", url=XsUri(f"https://github.com/advisories/{advisory_id}")
        )
    return VulnerabilitySource(name="OSV")


def _rating(finding: Finding) -> VulnerabilityRating:
    vector = finding.cvss_vector
    method: VulnerabilityScoreSource | None = None
    if vector:
        method = VulnerabilityScoreSource.get_from_vector(vector)
        if method is VulnerabilityScoreSource.OTHER and "Au:" in vector:
            method = VulnerabilityScoreSource.CVSS_V2  # v2 vectors carry no prefix
    score = Decimal(str(finding.cvss_score)) if finding.cvss_score is not None else None
    return VulnerabilityRating(
        score=score, severity=_SEVERITIES[finding.severity], method=method, vector=vector
    )


def _advisories(links: Sequence[str]) -> list[VulnerabilityAdvisory]:
    advisories = []
    for link in sorted(set(links))[:_MAX_LINKS_PER_VULNERABILITY]:
        if link.startswith(("https://", "http://")) and len(link) <= _MAX_TEXT:
            advisories.append(VulnerabilityAdvisory(url=XsUri(link)))
    return advisories


# -- SPDX 2.3


_IMAGE_SPDX_ID: Final = "SPDXRef-Image"
_NOASSERTION: Final = "NOASSERTION"


def spdx_document(
    subject: ImageSubject, inventory: Inventory, *, created: datetime
) -> SbomDocument:
    entries = _entries(inventory)
    image_package: dict[str, Any] = {
        "SPDXID": _IMAGE_SPDX_ID,
        "name": subject.repository,
        "versionInfo": subject.digest,
        "downloadLocation": _NOASSERTION,
        "filesAnalyzed": False,
        "primaryPackagePurpose": "CONTAINER",
        "externalRefs": [_purl_ref(subject.purl)],
    }
    algorithm, _, hex_value = subject.digest.partition(":")
    if algorithm in ("sha256", "sha512"):
        image_package["checksums"] = [{"algorithm": algorithm.upper(), "checksumValue": hex_value}]
    packages = [image_package]
    relationships = [_relationship("SPDXRef-DOCUMENT", "DESCRIBES", _IMAGE_SPDX_ID)]
    if inventory.distro is not None:
        distro = inventory.distro
        os_id = f"SPDXRef-OperatingSystem-{_distro_key(distro)}"
        os_package: dict[str, Any] = {
            "SPDXID": os_id,
            "name": distro.id,
            "downloadLocation": _NOASSERTION,
            "filesAnalyzed": False,
            "primaryPackagePurpose": "OPERATING-SYSTEM",
        }
        if distro.version_id:
            os_package["versionInfo"] = distro.version_id
        if distro.pretty_name:
            os_package["description"] = distro.pretty_name
        packages.append(os_package)
        relationships.append(_relationship(_IMAGE_SPDX_ID, "CONTAINS", os_id))
    for entry in entries:
        packages.append(_spdx_package(entry))
        relationships.append(_relationship(_IMAGE_SPDX_ID, "CONTAINS", entry.spdx_id))
    document: dict[str, Any] = {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": f"{subject.repository}@{subject.digest}",
        "documentNamespace": subject.spdx_namespace,
        "creationInfo": {
            "created": _utc(created).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "creators": [f"Tool: {TOOL_NAME}-{__version__}"],
        },
        "documentDescribes": [_IMAGE_SPDX_ID],
        "packages": packages,
        "relationships": relationships,
    }
    body = json.dumps(document, indent=2, ensure_ascii=False).encode()
    return SbomDocument(SbomFormat.SPDX, body, _fingerprint(document, "creationInfo", "created"))


def _spdx_package(entry: _Entry) -> dict[str, Any]:
    package = entry.package
    where = f"found in {package.location}"
    if package.layer:
        where += f" in layer {package.layer}"
    result: dict[str, Any] = {
        "SPDXID": entry.spdx_id,
        "name": package.name,
        "versionInfo": package.version,
        "downloadLocation": _NOASSERTION,
        "filesAnalyzed": False,
        "primaryPackagePurpose": "LIBRARY",
        "sourceInfo": where,
    }
    if entry.purl:
        result["externalRefs"] = [_purl_ref(entry.purl)]
    comments = []
    if package.source_name:
        source = package.source_name
        if package.source_version:
            source += f" {package.source_version}"
        comments.append(f"built from source package {source}")
    if package.owner:
        comments.append(f"installed by the operating system package {package.owner}")
    if comments:
        result["comment"] = "; ".join(comments)
    return result


def _purl_ref(purl: str) -> dict[str, str]:
    return {
        "referenceCategory": "PACKAGE-MANAGER",
        "referenceType": "purl",
        "referenceLocator": purl,
    }


def _relationship(element: str, kind: str, related: str) -> dict[str, str]:
    return {
        "spdxElementId": element,
        "relationshipType": kind,
        "relatedSpdxElement": related,
    }
