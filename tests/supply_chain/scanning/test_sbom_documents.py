"""SBOM documents from inventories: CycloneDX 1.6 as its schema checks it, SPDX 2.3 as
spdx-tools validates it, purls, the distribution, and the same input giving the same document."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from spdx_tools.spdx.parser.jsonlikedict.json_like_dict_parser import JsonLikeDictParser
from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

from moorage.scanning.packages import Distro, Ecosystem, Inventory, Package
from moorage.scanning.sbom import (
    CYCLONEDX_JSON,
    PROPERTY_LAYER,
    PROPERTY_LOCATION,
    PROPERTY_SOURCE_NAME,
    SPDX_JSON,
    ImageSubject,
    SbomDocument,
    SbomFormat,
    build_document,
    cyclonedx_document,
    spdx_document,
)
from moorage.vulnerability.findings import Finding
from moorage.vulnerability.severity import Severity

CREATED = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)
BOOKWORM = Distro("debian", "12", (), "Debian GNU/Linux 12 (bookworm)")
BASE_LAYER = "sha256:" + "1" * 64
APP_LAYER = "sha256:" + "2" * 64
SUBJECT = ImageSubject("team/app", "sha256:" + "ab" * 32, "https://registry.example")


def _debian(name: str, version: str, source: str | None = None, **extra: Any) -> Package:
    return Package(
        Ecosystem.DEBIAN,
        name,
        version,
        "var/lib/dpkg/status",
        source_name=source,
        source_version=extra.pop("source_version", None),
        arch="amd64",
        distro=BOOKWORM,
        layer=BASE_LAYER,
    )


LIBSSL = _debian("libssl3", "3.0.11-1~deb12u1", "openssl")
LIBGCC = _debian("libgcc-s1", "12.2.0-14", "gcc-12", source_version="12.2.0-14")
BASE_FILES = _debian("base-files", "12.4+deb12u5")
LOG4J = Package(
    Ecosystem.MAVEN,
    "org.apache.logging.log4j:log4j-core",
    "2.14.1",
    "app/app.jar!/BOOT-INF/lib/log4j-core-2.14.1.jar!/META-INF/maven/org.apache.logging.log4j"
    "/log4j-core/pom.properties",
    layer=APP_LAYER,
)
REQUESTS = Package(
    Ecosystem.PYPI,
    "requests",
    "2.28.0",
    "usr/lib/python3/dist-packages/requests-2.28.0.dist-info/METADATA",
    layer=APP_LAYER,
)
BABEL = Package(Ecosystem.NPM, "@babel/core", "7.22.0", "app/node_modules/@babel/core/package.json")
DEBIAN_APP = Inventory(BOOKWORM, (LIBSSL, LIBGCC, BASE_FILES, LOG4J, REQUESTS, BABEL))

LOG4SHELL = Finding(
    id="GHSA-jfh8-c2jp-5v3q",
    aliases=("CVE-2021-44228",),
    package=LOG4J.name,
    ecosystem="Maven",
    installed_version="2.14.1",
    fixed_version="2.15.0",
    severity=Severity.CRITICAL,
    cvss_score=10.0,
    cvss_vector="CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:C/C:H/I:H/A:H",
    summary="Remote code injection in Log4j",
    links=("https://logging.apache.org/log4j/2.x/security.html", "not a url"),
    purl=LOG4J.purl,
    layer=APP_LAYER,
    location=LOG4J.location,
)
OPENSSL_TEST = Finding(
    id="TEST-2026-0001",
    aliases=(),
    package="libssl3",
    ecosystem="Debian:12",
    installed_version="3.0.11-1~deb12u1",
    fixed_version=None,
    severity=Severity.UNKNOWN,
)


def _cyclonedx(document: SbomDocument) -> dict[str, Any]:
    assert document.media_type == CYCLONEDX_JSON
    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(document.body.decode())
    assert error is None, str(error)[:2000]
    parsed: dict[str, Any] = json.loads(document.body)
    assert parsed["bomFormat"] == "CycloneDX"
    assert parsed["specVersion"] == "1.6"
    return parsed


def _spdx(document: SbomDocument) -> dict[str, Any]:
    assert document.media_type == SPDX_JSON
    parsed: dict[str, Any] = json.loads(document.body)
    parser = JsonLikeDictParser()  # type: ignore[no-untyped-call]
    problems = validate_full_spdx_document(parser.parse(parsed))
    assert problems == [], problems[:5]
    return parsed


def _component(bom: dict[str, Any], purl_prefix: str) -> dict[str, Any]:
    matches = [c for c in bom["components"] if c.get("purl", "").startswith(purl_prefix)]
    assert len(matches) == 1, [c.get("purl") for c in bom["components"]]
    component: dict[str, Any] = matches[0]
    return component


def _properties(component: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in component.get("properties", [])}


def test_cyclonedx_describes_the_image_its_distribution_and_every_package() -> None:
    bom = _cyclonedx(cyclonedx_document(SUBJECT, DEBIAN_APP, created=CREATED))
    image = bom["metadata"]["component"]
    assert image["type"] == "container"
    assert image["name"] == "team/app"
    assert image["version"] == SUBJECT.digest
    assert image["purl"] == (
        f"pkg:oci/app@{SUBJECT.digest}?repository_url=registry.example/team/app"
    )
    assert image["hashes"] == [{"alg": "SHA-256", "content": "ab" * 32}]
    assert bom["metadata"]["timestamp"].startswith("2026-11-30T12:00:00")
    tools = bom["metadata"]["tools"]["components"]
    assert [(tool["name"], tool["type"]) for tool in tools] == [("moorage", "application")]

    systems = [c for c in bom["components"] if c["type"] == "operating-system"]
    assert [(s["name"], s["version"], s["description"]) for s in systems] == [
        ("debian", "12", "Debian GNU/Linux 12 (bookworm)")
    ]
    libraries = [c for c in bom["components"] if c["type"] == "library"]
    assert len(libraries) == len(DEBIAN_APP.packages)

    libssl = _component(bom, "pkg:deb/debian/libssl3@")
    assert libssl["purl"] == (
        "pkg:deb/debian/libssl3@3.0.11-1~deb12u1?arch=amd64&distro=debian-12&upstream=openssl"
    )
    assert libssl["version"] == "3.0.11-1~deb12u1"
    assert _properties(libssl)[PROPERTY_LOCATION] == "var/lib/dpkg/status"
    assert _properties(libssl)[PROPERTY_LAYER] == BASE_LAYER
    assert _properties(libssl)[PROPERTY_SOURCE_NAME] == "openssl"

    log4j = _component(bom, "pkg:maven/")
    assert log4j["purl"] == "pkg:maven/org.apache.logging.log4j/log4j-core@2.14.1"
    assert (log4j["group"], log4j["name"]) == ("org.apache.logging.log4j", "log4j-core")
    assert _properties(log4j)[PROPERTY_LOCATION] == LOG4J.location
    babel = _component(bom, "pkg:npm/")
    assert babel["purl"] == "pkg:npm/%40babel/core@7.22.0"
    assert (babel["group"], babel["name"]) == ("@babel", "core")
    assert PROPERTY_LAYER not in _properties(babel)  # not known: not invented
    assert _component(bom, "pkg:pypi/")["purl"] == "pkg:pypi/requests@2.28.0"


def test_cyclonedx_dependencies_put_distribution_packages_under_the_operating_system() -> None:
    bom = _cyclonedx(cyclonedx_document(SUBJECT, DEBIAN_APP, created=CREATED))
    refs = {c["bom-ref"]: c for c in bom["components"]}
    graph = {entry["ref"]: set(entry.get("dependsOn", [])) for entry in bom["dependencies"]}
    image_ref = bom["metadata"]["component"]["bom-ref"]
    (os_ref,) = [ref for ref, c in refs.items() if c["type"] == "operating-system"]
    distro_refs = {ref for ref, c in refs.items() if c.get("purl", "").startswith("pkg:deb/")}
    language_refs = {ref for ref, c in refs.items() if c["type"] == "library"} - distro_refs
    assert len(distro_refs) == 3
    assert len(language_refs) == 3
    assert graph[image_ref] == {os_ref} | language_refs
    assert graph[os_ref] == distro_refs
    # Every component has an entry, and every reference names a component or the image.
    assert set(graph) == set(refs) | {image_ref}
    assert set().union(*graph.values()) <= set(refs)


def test_cyclonedx_lists_the_findings_as_vulnerabilities_of_the_affected_components() -> None:
    document = cyclonedx_document(
        SUBJECT, DEBIAN_APP, created=CREATED, findings=[LOG4SHELL, OPENSSL_TEST], generation="7"
    )
    bom = _cyclonedx(document)
    vulnerabilities = {v["id"]: v for v in bom["vulnerabilities"]}
    assert set(vulnerabilities) == {"GHSA-jfh8-c2jp-5v3q", "TEST-2026-0001"}
    log4shell = vulnerabilities["GHSA-jfh8-c2jp-5v3q"]
    log4j_ref = _component(bom, "pkg:maven/")["bom-ref"]
    assert log4shell["affects"] == [
        {"ref": log4j_ref, "versions": [{"version": "2.14.1", "status": "affected"}]}
    ]
    (rating,) = log4shell["ratings"]
    assert rating["severity"] == "critical"
    assert rating["score"] == 10.0
    assert rating["method"] == "CVSSv31"
    assert rating["vector"].endswith("AV:N/AC:L/PR:N/UI:N/S:C/C:H/I:H/A:H")
    assert log4shell["source"]["name"] == "GitHub"
    assert [(r["id"], r["source"]["name"]) for r in log4shell["references"]] == [
        ("CVE-2021-44228", "NVD")
    ]
    assert log4shell["recommendation"] == f"Upgrade {LOG4J.name} to 2.15.0"
    # Only real URLs become advisories.
    assert [a["url"] for a in log4shell["advisories"]] == [
        "https://logging.apache.org/log4j/2.x/security.html"
    ]
    unknown = vulnerabilities["TEST-2026-0001"]
    assert unknown["ratings"] == [{"severity": "unknown"}]
    assert unknown["affects"][0]["ref"] == _component(bom, "pkg:deb/debian/libssl3@")["bom-ref"]
    assert _properties(bom["metadata"])["moorage:scan:database-generation"] == "7"


def test_the_same_input_gives_the_same_document_but_for_its_creation_time() -> None:
    for sbom_format in SbomFormat:
        first = build_document(sbom_format, SUBJECT, DEBIAN_APP, created=CREATED)
        again = build_document(sbom_format, SUBJECT, DEBIAN_APP, created=CREATED)
        later = build_document(
            sbom_format, SUBJECT, DEBIAN_APP, created=CREATED + timedelta(days=3)
        )
        assert first.body == again.body
        assert later.body != first.body
        assert later.fingerprint == first.fingerprint
        # Package order in the inventory does not matter.
        shuffled = replace(DEBIAN_APP, packages=tuple(reversed(DEBIAN_APP.packages)))
        assert build_document(sbom_format, SUBJECT, shuffled, created=CREATED).body == first.body
        # Any change of content does.
        fewer = replace(DEBIAN_APP, packages=DEBIAN_APP.packages[1:])
        assert (
            build_document(sbom_format, SUBJECT, fewer, created=CREATED).fingerprint
            != first.fingerprint
        )
        other_image = replace(SUBJECT, digest="sha256:" + "cd" * 32)
        assert (
            build_document(sbom_format, other_image, DEBIAN_APP, created=CREATED).fingerprint
            != first.fingerprint
        )


def test_spdx_describes_the_image_and_contains_every_package() -> None:
    document = _spdx(spdx_document(SUBJECT, DEBIAN_APP, created=CREATED))
    assert document["spdxVersion"] == "SPDX-2.3"
    assert document["documentNamespace"] == (
        f"https://registry.example/spdx/team/app/{SUBJECT.digest}"
    )
    assert document["creationInfo"]["created"] == "2026-11-30T12:00:00Z"
    packages = {p["SPDXID"]: p for p in document["packages"]}
    (image_id,) = document["documentDescribes"]
    image = packages[image_id]
    assert image["primaryPackagePurpose"] == "CONTAINER"
    assert image["versionInfo"] == SUBJECT.digest
    assert image["checksums"] == [{"algorithm": "SHA256", "checksumValue": "ab" * 32}]
    relationships = {
        (r["spdxElementId"], r["relationshipType"], r["relatedSpdxElement"])
        for r in document["relationships"]
    }
    assert ("SPDXRef-DOCUMENT", "DESCRIBES", image_id) in relationships
    contained = {related for element, kind, related in relationships if kind == "CONTAINS"}
    assert contained == set(packages) - {image_id}
    systems = [p for p in packages.values() if p["primaryPackagePurpose"] == "OPERATING-SYSTEM"]
    assert [(s["name"], s["versionInfo"]) for s in systems] == [("debian", "12")]
    purls = {
        ref["referenceLocator"]
        for p in packages.values()
        for ref in p.get("externalRefs", [])
        if ref["referenceType"] == "purl"
    }
    assert {package.purl for package in DEBIAN_APP.packages} <= purls
    libssl = next(p for p in packages.values() if p["name"] == "libssl3")
    assert libssl["sourceInfo"] == f"found in var/lib/dpkg/status in layer {BASE_LAYER}"
    assert libssl["comment"] == "built from source package openssl"


def test_spdx_without_a_public_url_uses_a_reserved_host() -> None:
    subject = ImageSubject("library/hello", "sha256:" + "0" * 64)
    document = _spdx(spdx_document(subject, DEBIAN_APP, created=CREATED))
    assert document["documentNamespace"] == (
        f"https://moorage.invalid/spdx/library/hello/{subject.digest}"
    )
    assert subject.purl == f"pkg:oci/hello@{subject.digest}"


@pytest.mark.parametrize("sbom_format", list(SbomFormat))
def test_an_image_without_a_distribution_and_odd_names_still_validates(
    sbom_format: SbomFormat,
) -> None:
    odd = (
        Package(Ecosystem.PYPI, "Zope_Interface", "5.0+local.1", "site-packages/z/METADATA"),
        Package(Ecosystem.GO, "github.com/example/tool", "v1.2.3+incompatible", "usr/bin/tool"),
        Package(Ecosystem.CRATES_IO, "serde", "1.0.0", "app/Cargo.lock"),
        Package(Ecosystem.NPM, "über name", "1.0.0 beta", "node_modules/x/package.json"),
        Package(Ecosystem.RPM, "openssl-libs", "1:3.0.7-27.el9", "var/lib/rpm/rpmdb.sqlite"),
        Package(Ecosystem.ALPINE, "busybox", "1.36.1-r15", "lib/apk/db/installed"),
    )
    document = build_document(sbom_format, SUBJECT, Inventory(None, odd), created=CREATED)
    if sbom_format is SbomFormat.CYCLONEDX:
        bom = _cyclonedx(document)
        assert not [c for c in bom["components"] if c["type"] == "operating-system"]
        assert len(bom["components"]) == len(odd)
        image_ref = bom["metadata"]["component"]["bom-ref"]
        graph = {entry["ref"]: entry.get("dependsOn", []) for entry in bom["dependencies"]}
        assert len(graph[image_ref]) == len(odd)
        assert _component(bom, "pkg:rpm/")["purl"] == "pkg:rpm/openssl-libs@3.0.7-27.el9?epoch=1"
    else:
        spdx = _spdx(document)
        assert len(spdx["packages"]) == len(odd) + 1


def test_the_same_package_in_two_places_is_two_components_and_exact_repeats_are_one() -> None:
    second_copy = replace(LOG4J, location="opt/other.jar!/META-INF/maven/x/pom.properties")
    inventory = Inventory(None, (LOG4J, second_copy, LOG4J))
    bom = _cyclonedx(cyclonedx_document(SUBJECT, inventory, created=CREATED, findings=[LOG4SHELL]))
    refs = [c["bom-ref"] for c in bom["components"]]
    assert len(refs) == 2
    assert len(set(refs)) == 2
    # The finding names its location: it affects that copy only.
    (vulnerability,) = bom["vulnerabilities"]
    locations = {c["bom-ref"]: _properties(c)[PROPERTY_LOCATION] for c in bom["components"]}
    assert [locations[a["ref"]] for a in vulnerability["affects"]] == [LOG4J.location]
    spdx = _spdx(spdx_document(SUBJECT, inventory, created=CREATED))
    assert len(spdx["packages"]) == 3


def test_an_empty_inventory_is_a_valid_document_of_the_image_alone() -> None:
    empty = Inventory(None, ())
    bom = _cyclonedx(cyclonedx_document(SUBJECT, empty, created=CREATED))
    assert bom.get("components", []) == []
    spdx = _spdx(spdx_document(SUBJECT, empty, created=CREATED))
    assert [p["SPDXID"] for p in spdx["packages"]] == spdx["documentDescribes"]


def test_file_names_and_media_types() -> None:
    assert SbomFormat.CYCLONEDX.media_type == "application/vnd.cyclonedx+json"
    assert SbomFormat.SPDX.media_type == "application/spdx+json"
    assert SUBJECT.file_stem + SbomFormat.SPDX.file_suffix == "app-abababababab.spdx.json"
