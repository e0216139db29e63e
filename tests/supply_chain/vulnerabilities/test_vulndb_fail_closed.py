"""The matcher against imported generations never fails open, and rates what it finds.

- Bounds are coerced as the ecosystem's tooling does (node-fetch's "1.0").
- What still cannot be read makes the package *possibly affected*: a flagged finding.
- One finding per advisory and package version, with every location it was found in.
- Severity is borrowed from alias records of any imported source and from CVE JSON 5 records,
  and the finding says where it came from; changing a CVE record's rating is a change.
"""

from __future__ import annotations

import json
import sqlite3
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from moorage.scanning.harbor import VulnerabilityItem, finding_from_item, vulnerability_item
from moorage.scanning.packages import Distro, Ecosystem, Inventory, Package
from moorage.vulnerability.bundle import BundleError, SignatureError, build_manifest, parse_manifest
from moorage.vulnerability.cve import CveRecordError, open_cve_source, parse_cve_record
from moorage.vulnerability.database import VulnerabilityDatabase
from moorage.vulnerability.findings import Finding, Location, merge_findings
from moorage.vulnerability.matcher import match
from moorage.vulnerability.severity import Severity
from tests.support.osv import osv_record, write_bundle, write_osv_zip, write_tar

HIGH = "CVSS:3.1/AV:N/AC:L/PR:N/UI:R/S:U/C:H/I:H/A:N"  # 8.1
CRITICAL = "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:C/C:H/I:H/A:H"  # 10.0
MEDIUM = "CVSS:3.1/AV:N/AC:H/PR:N/UI:R/S:U/C:H/I:N/A:N"  # 5.3


def node_fetch_record() -> dict[str, Any]:
    """GHSA-r683-j2x4-v87g as it was published: the range starts at "1.0"."""
    return osv_record(
        "GHSA-r683-j2x4-v87g",
        "npm",
        "node-fetch",
        introduced="1.0",
        fixed="3.1.1",
        range_type="SEMVER",
        aliases=("CVE-2022-0235",),
        cvss_v3=HIGH,
    )


def cve_json(cve_id: str, **containers: Any) -> dict[str, Any]:
    return {
        "dataType": "CVE_RECORD",
        "dataVersion": "5.1",
        "cveMetadata": {"cveId": cve_id, "state": "PUBLISHED"},
        "containers": containers,
    }


def cna(*metrics: dict[str, Any]) -> dict[str, Any]:
    return {"providerMetadata": {"shortName": "GitHub_M"}, "metrics": list(metrics)}


def lang(ecosystem: Ecosystem, name: str, version: str, location: str) -> Package:
    return Package(ecosystem, name, version, location, layer="sha256:" + "2" * 64)


def database_with(
    tmp_path: Path, records: dict[str, list[dict[str, Any]]], cves: list[dict[str, Any]] = ()
) -> VulnerabilityDatabase:
    database = VulnerabilityDatabase(tmp_path / "vulndb")
    sources = []
    if cves:
        directory = tmp_path / "cvelist" / "cves" / "2022" / "0xxx"
        directory.mkdir(parents=True, exist_ok=True)
        for document in cves:
            name = document["cveMetadata"]["cveId"]
            (directory / f"{name}.json").write_text(json.dumps(document))
        sources.append(tmp_path / "cvelist")
    database.import_path(write_bundle(tmp_path / "bundle.tar.gz", records), cve_sources=sources)
    return database


# --- Coercion and possibly affected --------------------------------------------------------


def test_node_fetch_3_1_0_is_found_despite_the_short_bound(tmp_path: Path) -> None:
    database = database_with(tmp_path, {"npm": [node_fetch_record()]})
    generation = database.current()
    assert generation is not None
    packages = (
        lang(Ecosystem.NPM, "node-fetch", "3.1.0", "app/node_modules/node-fetch/package.json"),
        lang(Ecosystem.NPM, "node-fetch", "3.1.1", "other/node_modules/node-fetch/package.json"),
        lang(Ecosystem.NPM, "node-fetch", "0.9.0", "old/node_modules/node-fetch/package.json"),
    )
    result = match(Inventory(None, packages), generation)
    ((finding_id, version, possibly, severity),) = [
        (f.id, f.installed_version, f.possibly_affected, f.severity) for f in result.findings
    ]
    assert (finding_id, version, possibly, severity) == (
        "GHSA-r683-j2x4-v87g",
        "3.1.0",
        False,
        Severity.HIGH,
    )
    assert result.notes == ()


@pytest.mark.parametrize(
    ("record", "package"),
    [
        # The installed version cannot be read.
        (node_fetch_record(), lang(Ecosystem.NPM, "node-fetch", "3.1.0-", "a/package.json")),
        # A bound cannot be read, even coerced.
        (
            osv_record("TEST-BOUND", "npm", "left-pad", introduced="1.x", fixed="1.3.0"),
            lang(Ecosystem.NPM, "left-pad", "1.1.0", "a/package.json"),
        ),
        (
            osv_record("TEST-LAST", "PyPI", "urllib3", last_affected="2.0.0 final"),
            lang(Ecosystem.PYPI, "urllib3", "1.26.5", "a/METADATA"),
        ),
        (
            osv_record("TEST-MAVEN", "Maven", "g:a", fixed="2.0 beta"),
            lang(Ecosystem.MAVEN, "g:a", "1.0", "a.jar"),
        ),
    ],
)
def test_what_cannot_be_compared_is_possibly_affected(
    tmp_path: Path, record: dict[str, Any], package: Package
) -> None:
    ecosystem = record["affected"][0]["package"]["ecosystem"]
    database = database_with(tmp_path, {ecosystem: [record]})
    generation = database.current()
    assert generation is not None
    result = match(Inventory(None, (package,)), generation)
    (finding,) = result.findings
    assert finding.id == record["id"]
    assert finding.possibly_affected
    assert finding.uncertainty is not None
    assert record["id"] in finding.uncertainty


def test_a_limit_that_cannot_be_read_is_possibly_affected(tmp_path: Path) -> None:
    record = osv_record("TEST-LIMIT", "Go", "golang.org/x/net", range_type="SEMVER")
    record["affected"][0]["ranges"][0]["events"].append({"limit": "next"})
    database = database_with(tmp_path, {"Go": [record]})
    generation = database.current()
    assert generation is not None
    package = lang(Ecosystem.GO, "golang.org/x/net", "v0.17.0", "usr/bin/app")
    (finding,) = match(Inventory(None, (package,)), generation).findings
    assert finding.possibly_affected


def test_malformed_events_are_kept_and_make_the_package_possibly_affected(tmp_path: Path) -> None:
    record = osv_record("TEST-EVENTS", "crates.io", "smallvec", fixed="1.6.1")
    record["affected"][0]["ranges"][0]["events"] = [{"introduced": "0", "fixed": "1.6.1"}]
    listed = osv_record("TEST-LISTED", "crates.io", "smallvec", versions=["1.6.0"])
    listed["affected"][0]["versions"] = ["1.6.0", None]
    unknown_type = osv_record("TEST-TYPE", "crates.io", "smallvec", fixed="1.6.1")
    unknown_type["affected"][0]["ranges"][0]["type"] = "CARGO"
    database = database_with(tmp_path, {"crates.io": [record, listed, unknown_type]})
    generation = database.current()
    assert generation is not None
    package = lang(Ecosystem.CRATES_IO, "smallvec", "1.5.0", "usr/bin/tool")
    findings = match(Inventory(None, (package,)), generation).findings
    assert {(f.id, f.possibly_affected) for f in findings} == {
        ("TEST-EVENTS", True),
        ("TEST-LISTED", True),
        ("TEST-TYPE", True),
    }


def test_a_damaged_stored_record_makes_its_package_possibly_affected(tmp_path: Path) -> None:
    database = database_with(tmp_path, {"npm": [node_fetch_record()]})
    generation = database.current()
    assert generation is not None
    path = generation.path
    generation.close()
    # Damage the published file behind the database's back (a disk error, a bad copy).
    connection = sqlite3.connect(path)
    connection.execute("UPDATE record SET document = '{\"id\": 1'")
    connection.commit()
    connection.close()
    reopened = VulnerabilityDatabase(tmp_path / "vulndb").current()
    assert reopened is not None
    package = lang(Ecosystem.NPM, "node-fetch", "3.1.1", "a/package.json")
    (finding,) = match(Inventory(None, (package,)), reopened).findings
    assert finding.id == "GHSA-r683-j2x4-v87g"
    assert finding.possibly_affected
    assert finding.uncertainty is not None
    assert "damaged" in finding.uncertainty


def test_a_definite_match_through_another_name_wins_over_possibly(tmp_path: Path) -> None:
    # A Debian binary package is looked up by source and binary name; one decides.
    record = osv_record("TEST-DEB", "Debian:12", "openssl", fixed="3.0.11-1~deb12u2")
    record["affected"].append(
        {
            "package": {"ecosystem": "Debian:12", "name": "libssl3"},
            "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "x y"}]}],
        }
    )
    database = database_with(tmp_path, {"Debian": [record]})
    generation = database.current()
    assert generation is not None
    package = Package(
        Ecosystem.DEBIAN,
        "libssl3",
        "3.0.11-1~deb12u1",
        "var/lib/dpkg/status",
        source_name="openssl",
        source_version="3.0.11-1~deb12u1",
    )
    (finding,) = match(Inventory(Distro("debian", "12"), (package,)), generation).findings
    assert not finding.possibly_affected
    assert finding.fixed_version == "3.0.11-1~deb12u2"


# --- One finding, several locations ------------------------------------------------------


def test_the_same_package_version_in_two_files_is_one_finding(tmp_path: Path) -> None:
    stdlib = osv_record("GO-2024-0001", "Go", "stdlib", fixed="1.21.6", range_type="SEMVER")
    database = database_with(tmp_path, {"Go": [stdlib]})
    generation = database.current()
    assert generation is not None
    packages = (
        Package(Ecosystem.GO, "stdlib", "go1.21.5", "usr/bin/b", layer="sha256:" + "b" * 64),
        Package(Ecosystem.GO, "stdlib", "go1.21.5", "usr/bin/a", layer="sha256:" + "a" * 64),
        Package(Ecosystem.GO, "stdlib", "go1.21.4", "usr/bin/c", layer="sha256:" + "a" * 64),
    )
    findings = match(Inventory(None, packages), generation).findings
    assert [(f.installed_version, f.location) for f in findings] == [
        ("go1.21.4", "usr/bin/c"),
        ("go1.21.5", "usr/bin/a"),
    ]
    both = findings[1]
    assert [(place.location, place.layer) for place in both.all_locations] == [
        ("usr/bin/a", "sha256:" + "a" * 64),
        ("usr/bin/b", "sha256:" + "b" * 64),
    ]
    assert both.layer == "sha256:" + "a" * 64


# --- Severity from aliases and CVE records -----------------------------------------------


def test_a_go_record_borrows_the_severity_of_its_ghsa_alias(tmp_path: Path) -> None:
    go = osv_record(
        "GO-2023-2102",
        "Go",
        "golang.org/x/net",
        fixed="0.17.0",
        range_type="SEMVER",
        aliases=("CVE-2023-44487", "GHSA-qppj-fm5r-hxr3"),
    )
    ghsa = osv_record(
        "GHSA-qppj-fm5r-hxr3",
        "Go",
        "golang.org/x/net",
        fixed="0.17.0",
        range_type="SEMVER",
        aliases=("CVE-2023-44487",),
        cvss_v3=HIGH,
    )
    database = database_with(tmp_path, {"Go": [go], "GHSA": [ghsa]})
    generation = database.current()
    assert generation is not None
    package = lang(Ecosystem.GO, "golang.org/x/net", "v0.15.0", "usr/bin/app")
    findings = {f.id: f for f in match(Inventory(None, (package,)), generation).findings}
    assert findings["GO-2023-2102"].severity is Severity.HIGH
    assert findings["GO-2023-2102"].cvss_score == 8.1
    assert findings["GO-2023-2102"].severity_source == "GHSA-qppj-fm5r-hxr3 CVSS_V3"
    assert findings["GHSA-qppj-fm5r-hxr3"].severity_source == "GHSA-qppj-fm5r-hxr3 CVSS_V3"


def test_a_cve_record_rates_an_advisory_that_lists_its_id(tmp_path: Path) -> None:
    rustsec = osv_record(
        "RUSTSEC-2021-0003", "crates.io", "smallvec", fixed="1.6.1", aliases=("CVE-2021-25900",)
    )
    pysec = osv_record(
        "PYSEC-2023-74", "PyPI", "requests", fixed="2.31.0", aliases=("CVE-2023-32681",)
    )
    cves = [
        cve_json(
            "CVE-2021-25900",
            cna=cna({"cvssV3_1": {"vectorString": CRITICAL, "baseScore": 10.0}}),
        ),
        # No CNA rating: CISA's ADP container rates it.
        cve_json(
            "CVE-2023-32681",
            cna={"providerMetadata": {"shortName": "GitHub_M"}},
            adp=[
                {
                    "providerMetadata": {"shortName": "CISA-ADP"},
                    "metrics": [{"cvssV3_1": {"vectorString": MEDIUM}}],
                }
            ],
        ),
    ]
    database = database_with(tmp_path, {"crates.io": [rustsec], "PyPI": [pysec]}, cves)
    generation = database.current()
    assert generation is not None
    assert generation.info.cve_records == 2
    packages = (
        lang(Ecosystem.CRATES_IO, "smallvec", "1.6.0", "usr/bin/tool"),
        lang(Ecosystem.PYPI, "requests", "2.30.0", "site-packages/requests/METADATA"),
    )
    findings = {f.id: f for f in match(Inventory(None, packages), generation).findings}
    assert findings["RUSTSEC-2021-0003"].severity is Severity.CRITICAL
    assert findings["RUSTSEC-2021-0003"].severity_source == (
        "CVE-2021-25900 CVE record (cna) CVSS_V3"
    )
    assert findings["PYSEC-2023-74"].severity is Severity.MEDIUM
    assert findings["PYSEC-2023-74"].severity_source == (
        "CVE-2023-32681 CVE record (adp:CISA-ADP) CVSS_V3"
    )


def test_an_alias_record_outranks_a_cve_record_and_unreadable_vectors_rate_nothing(
    tmp_path: Path,
) -> None:
    go = osv_record(
        "GO-2024-0002", "Go", "stdlib", fixed="1.21.6", range_type="SEMVER", aliases=("CVE-2024-1",)
    )
    cves = [
        cve_json(
            "CVE-2024-1",
            cna=cna(
                {"cvssV3_1": {"vectorString": "CVSS:3.1/AV:N/garbage"}},
                {"cvssV4_0": "not an object"},
                "not a metric",
            ),
        )
    ]
    database = database_with(tmp_path, {"Go": [go]}, cves)
    generation = database.current()
    assert generation is not None
    package = lang(Ecosystem.GO, "stdlib", "go1.21.5", "usr/bin/app")
    (finding,) = match(Inventory(None, (package,)), generation).findings
    assert finding.severity is Severity.UNKNOWN
    assert finding.severity_source is None


def test_a_changed_cve_rating_is_a_change_that_triggers_a_rematch(tmp_path: Path) -> None:
    rustsec = osv_record(
        "RUSTSEC-2021-0003", "crates.io", "smallvec", fixed="1.6.1", aliases=("CVE-2021-25900",)
    )
    unrelated = osv_record("RUSTSEC-2021-0004", "crates.io", "other", fixed="1.0.0")
    bundle = write_bundle(tmp_path / "bundle.tar.gz", {"crates.io": [rustsec, unrelated]})
    database = VulnerabilityDatabase(tmp_path / "vulndb")
    first_cve = tmp_path / "first" / "CVE-2021-25900.json"
    first_cve.parent.mkdir()
    first_cve.write_text(
        json.dumps(cve_json("CVE-2021-25900", cna=cna({"cvssV3_1": {"vectorString": MEDIUM}})))
    )
    database.import_path(bundle, cve_sources=[first_cve])
    first = database.current()
    assert first is not None
    # The same CVE data again changes nothing; another rating changes that package only.
    database.import_path(bundle, cve_sources=[first_cve])
    same = database.current()
    assert same is not None
    assert database.changed_packages(first.generation, same) == frozenset()
    second_cve = tmp_path / "second.zip"
    with zipfile.ZipFile(second_cve, "w") as archive:
        archive.writestr(
            "cves/2021/25xxx/CVE-2021-25900.json",
            json.dumps(cve_json("CVE-2021-25900", cna=cna({"cvssV3_1": {"vectorString": HIGH}}))),
        )
    database.import_path(bundle, cve_sources=[second_cve])
    second = database.current()
    assert second is not None
    assert database.changed_packages(same.generation, second) == frozenset(
        {("crates.io", "smallvec")}
    )
    # Without a CVE source, the rating goes away: a change too.
    database.import_path(bundle)
    third = database.current()
    assert third is not None
    assert database.changed_packages(second.generation, third) == frozenset(
        {("crates.io", "smallvec")}
    )


@pytest.mark.parametrize(
    "document",
    [
        [],
        {"cveMetadata": {}},
        {"cveMetadata": {"cveId": "GHSA-1234"}, "containers": {}},
        {"cveMetadata": {"cveId": "CVE-2024-1"}},
        {"cveMetadata": {"cveId": "CVE-2024-1"}, "containers": []},
    ],
)
def test_cve_documents_of_another_shape_are_refused(document: object) -> None:
    with pytest.raises(CveRecordError):
        parse_cve_record(document)


def test_cve_sources_that_cannot_be_read_are_skipped_and_counted(tmp_path: Path) -> None:
    directory = tmp_path / "cves"
    directory.mkdir()
    (directory / "CVE-2024-0001.json").write_text("{not json")
    (directory / "CVE-2024-0002.json").write_text(json.dumps({"cveMetadata": {}}))
    (directory / "CVE-2024-0003.json").write_text(
        json.dumps(
            cve_json(
                "CVE-2024-0003",
                cna=cna({"cvssV2_0": {"vectorString": "AV:N/AC:L/Au:N/C:P/I:P/A:P"}}),
            )
        )
    )
    (directory / "README.md").write_text("not a record")
    database = VulnerabilityDatabase(tmp_path / "vulndb")
    result = database.import_path(
        write_osv_zip(
            tmp_path / "go.zip", [osv_record("GO-1", "Go", "stdlib", range_type="SEMVER")]
        ),
        cve_sources=[directory],
    )
    assert (result.cve_records, result.cve_skipped) == (1, 2)
    with pytest.raises(BundleError):
        open_cve_source(tmp_path / "missing")


def test_an_old_generation_without_cve_data_still_serves(tmp_path: Path) -> None:
    database = database_with(tmp_path, {"npm": [node_fetch_record()]})
    generation = database.current()
    assert generation is not None
    path = generation.path
    generation.close()
    connection = sqlite3.connect(path)
    connection.execute("DROP TABLE cve_score")
    connection.commit()
    connection.close()
    reopened = VulnerabilityDatabase(tmp_path / "vulndb").current()
    assert reopened is not None
    assert reopened.cve_scores(["CVE-2022-0235"]) == []
    package = lang(Ecosystem.NPM, "node-fetch", "3.1.0", "a/package.json")
    (finding,) = match(Inventory(None, (package,)), reopened).findings
    assert finding.severity is Severity.HIGH


def test_the_harbor_report_keeps_one_item_with_every_location() -> None:
    base = Finding(
        id="GO-2024-0001",
        aliases=(),
        package="stdlib",
        ecosystem="Go",
        installed_version="go1.21.5",
        fixed_version="1.21.6",
        severity=Severity.HIGH,
        layer="sha256:" + "a" * 64,
        location="usr/bin/a",
        severity_source="GHSA-x CVSS_V3",
    )
    (merged,) = merge_findings([base, replace(base, location="usr/bin/b")])
    item = vulnerability_item(merged)
    assert item["layer"] == {"diff_id": "sha256:" + "a" * 64}
    assert item["vendor_attributes"]["locations"] == [
        {"location": "usr/bin/a", "layer": "sha256:" + "a" * 64},
        {"location": "usr/bin/b", "layer": "sha256:" + "a" * 64},
    ]
    back = finding_from_item(VulnerabilityItem.model_validate(item))
    assert back.severity_source == "GHSA-x CVSS_V3"
    assert back.location == "usr/bin/a"
    uncertain = vulnerability_item(replace(base, possibly_affected=True, uncertainty="why"))
    assert uncertain["vendor_attributes"]["possibly_affected"] is True
    assert finding_from_item(VulnerabilityItem.model_validate(uncertain)).possibly_affected
    assert merged.all_locations[1] == Location("usr/bin/b", "sha256:" + "a" * 64)


def test_a_definite_finding_shows_only_the_fixes_of_ranges_that_were_read(tmp_path: Path) -> None:
    record = osv_record("TEST-TWO", "npm", "node-fetch", range_type="SEMVER")
    record["affected"][0]["ranges"] = [
        {"type": "SEMVER", "events": [{"introduced": "junk"}, {"fixed": "0.5.0"}]},
        {"type": "SEMVER", "events": [{"introduced": "3.0.0"}, {"fixed": "3.1.1"}]},
    ]
    database = database_with(tmp_path, {"npm": [record]})
    generation = database.current()
    assert generation is not None
    package = lang(Ecosystem.NPM, "node-fetch", "3.1.0", "a/package.json")
    (finding,) = match(Inventory(None, (package,)), generation).findings
    assert (finding.possibly_affected, finding.fixed_version) == (False, "3.1.1")


def test_cve_sources_are_refused_when_signatures_are_required(tmp_path: Path) -> None:
    cve = tmp_path / "CVE-2024-0003.json"
    cve.write_text(json.dumps(cve_json("CVE-2024-0003", cna=cna())))
    database = VulnerabilityDatabase(tmp_path / "vulndb")
    with pytest.raises(SignatureError, match="--cve"):
        database.import_path(
            write_osv_zip(tmp_path / "go.zip", [osv_record("GO-1", "Go", "stdlib")]),
            require_signature=True,
            cve_sources=[cve],
        )
    assert database.current() is None


def test_a_signed_bundle_may_carry_cve_records_under_cve(tmp_path: Path) -> None:
    root = tmp_path / "osv"
    write_osv_zip(
        root / "crates.io" / "all.zip",
        [
            osv_record(
                "RUSTSEC-2021-0003",
                "crates.io",
                "smallvec",
                fixed="1.6.1",
                aliases=("CVE-2021-25900",),
            )
        ],
    )
    (root / "CVE").mkdir()
    with zipfile.ZipFile(root / "CVE" / "cves.zip", "w") as archive:
        archive.writestr(
            "cves/2021/25xxx/CVE-2021-25900.json",
            json.dumps(
                cve_json("CVE-2021-25900", cna=cna({"cvssV3_1": {"vectorString": CRITICAL}}))
            ),
        )
        archive.writestr("cves/deltaLog.json", "[]")  # not a record: counted, skipped
    manifest = build_manifest(root, "2026-12-07T00:00:00Z")
    assert {(item["path"], item.get("kind")) for item in json.loads(manifest)["files"]} == {
        ("CVE/cves.zip", "cve"),
        ("crates.io/all.zip", None),
    }
    key = ed25519.Ed25519PrivateKey.generate()
    members = {"manifest.json": manifest, "manifest.json.sig": key.sign(manifest)}
    members |= {
        path.relative_to(root).as_posix(): path.read_bytes() for path in root.rglob("*.zip")
    }
    bundle = write_tar(tmp_path / "bundle.tar.gz", members)
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    database = VulnerabilityDatabase(tmp_path / "vulndb")
    result = database.import_path(bundle, public_key_pem=public, require_signature=True)
    assert (result.records, result.cve_records, result.cve_skipped, result.signed) == (
        1,
        1,
        1,
        True,
    )
    generation = database.current()
    assert generation is not None
    package = lang(Ecosystem.CRATES_IO, "smallvec", "1.6.0", "usr/bin/tool")
    (finding,) = match(Inventory(None, (package,)), generation).findings
    assert finding.severity is Severity.CRITICAL
    assert finding.severity_source == "CVE-2021-25900 CVE record (cna) CVSS_V3"
    # A manifest kind other than osv or cve is refused.
    with pytest.raises(BundleError, match="kind"):
        parse_manifest(manifest.replace(b'"cve"', b'"nvd"'))
