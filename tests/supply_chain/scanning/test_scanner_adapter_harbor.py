"""Harbor's scanner adapter documents: parsing what adapters send (leniently, within caps),
the severity scale, findings to reports and back, scan ids and registry URLs."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from moorage.domain.events import Actor
from moorage.scanning.harbor import (
    REPORT_HARBOR_V1_0,
    REPORT_V1_1,
    Artifact,
    HarborFormatError,
    Scanner,
    decode_scan_id,
    encode_scan_id,
    error_message,
    findings_from_report,
    metadata_document,
    parse_metadata,
    parse_report,
    parse_scan_request,
    report_type_of,
    same_origin,
    same_registry,
    severity_from_harbor,
    severity_to_harbor,
    vulnerability_report,
)
from moorage.scanning.report import ScanReport, ScanStatus
from moorage.services.supply_chain.scanner_adapters import is_adapter_pull, registry_url
from moorage.vulnerability.findings import Finding
from moorage.vulnerability.severity import Severity

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DIGEST = "sha256:" + "ab" * 32
MAX_VULNERABILITIES = 100_000  # the most findings an adapter's report may list

LOG4J = Finding(
    id="GHSA-jfh8-c2jp-5v3q",
    aliases=("CVE-2021-44228",),
    package="org.apache.logging.log4j:log4j-core",
    ecosystem="Maven",
    installed_version="2.14.1",
    fixed_version="2.15.0",
    severity=Severity.CRITICAL,
    cvss_score=10.0,
    cvss_vector="CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:C/C:H/I:H/A:H",
    summary="Remote code injection in Log4j",
    links=("https://github.com/advisories/GHSA-jfh8-c2jp-5v3q",),
    purl="pkg:maven/org.apache.logging.log4j/log4j-core@2.14.1",
    layer="sha256:" + "11" * 32,
    location="app/lib/log4j-core-2.14.1.jar",
)
OPENSSL = Finding(
    id="TEST-DEB-0001",
    aliases=(),
    package="openssl",
    ecosystem="Debian:12",
    installed_version="3.0.11-1~deb12u1",
    fixed_version=None,
    severity=Severity.UNKNOWN,
)
CVSS4 = Finding(
    id="TEST-CVSS4",
    aliases=(),
    package="minimist",
    ecosystem="npm",
    installed_version="1.2.5",
    fixed_version="1.2.6",
    severity=Severity.HIGH,
    cvss_score=8.7,
    cvss_vector="CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:N/VA:N/SC:N/SI:N/SA:N",
)
CVSS2 = Finding(
    id="TEST-CVSS2",
    aliases=(),
    package="zlib",
    ecosystem="Alpine:v3.19",
    installed_version="1.2.13-r0",
    fixed_version="1.2.13-r1",
    severity=Severity.MEDIUM,
    cvss_score=5.0,
    cvss_vector="AV:N/AC:L/Au:N/C:N/I:N/A:P",
)


def report_of(*findings: Finding) -> ScanReport:
    return ScanReport(
        digest=DIGEST,
        status=ScanStatus.SUCCESS,
        findings=findings,
        finished_at=datetime(2026, 12, 6, 1, 2, 3, tzinfo=UTC),
    )


def test_findings_survive_a_round_trip_through_the_harbor_report() -> None:
    findings = (LOG4J, OPENSSL, CVSS4, CVSS2)
    document = vulnerability_report(
        report_of(*findings),
        Artifact(repository="team/app", digest=DIGEST, mime_type=OCI_MANIFEST),
        Scanner(name="Moorage", vendor="Moorage", version="0.1.0"),
    )
    assert document["generated_at"] == "2026-12-06T01:02:03Z"
    assert document["severity"] == "Critical"
    assert document["artifact"] == {
        "repository": "team/app",
        "digest": DIGEST,
        "mime_type": OCI_MANIFEST,
    }
    log4j = document["vulnerabilities"][0]
    assert log4j["preferred_cvss"] == {
        "score_v3": 10.0,
        "vector_v3": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:C/C:H/I:H/A:H",
    }
    assert log4j["fix_version"] == "2.15.0"
    assert log4j["layer"] == {"diff_id": LOG4J.layer}
    assert document["vulnerabilities"][1]["fix_version"] == ""
    assert document["vulnerabilities"][2]["preferred_cvss"] == {}  # v4 is not in the spec
    assert document["vulnerabilities"][3]["preferred_cvss"]["vector_v2"] == CVSS2.cvss_vector

    parsed = parse_report(json.dumps(document))
    assert findings_from_report(parsed) == findings


def test_an_empty_report_and_the_severity_scale() -> None:
    document = vulnerability_report(
        report_of(), Artifact(repository="a", digest=DIGEST), Scanner(name="Moorage")
    )
    assert document["vulnerabilities"] == []
    assert document["severity"] == "Unknown"
    assert [severity_from_harbor(s) for s in ("Unknown", "Negligible", "LOW", "medium")] == [
        Severity.UNKNOWN,
        Severity.LOW,
        Severity.LOW,
        Severity.MEDIUM,
    ]
    assert severity_from_harbor("High") is Severity.HIGH
    assert severity_from_harbor("Critical") is Severity.CRITICAL
    assert severity_from_harbor("Apocalyptic") is Severity.UNKNOWN
    assert severity_to_harbor(Severity.NONE) == "Negligible"
    assert {severity_to_harbor(s) for s in Severity} <= {
        "Unknown",
        "Negligible",
        "Low",
        "Medium",
        "High",
        "Critical",
    }


def test_a_trivy_style_report_becomes_findings() -> None:
    document = {
        "generated_at": "2026-12-06T00:00:00.123456789Z",
        "artifact": {"repository": "library/app", "digest": DIGEST, "mime_type": OCI_MANIFEST},
        "scanner": {"name": "Trivy", "vendor": "Aqua Security", "version": "0.59.1"},
        "severity": "High",
        "vulnerabilities": [
            {
                "id": "CVE-2023-0464",
                "package": "libssl3",
                "version": "3.0.8-1",
                "fix_version": "3.0.9-1",
                "severity": "High",
                "description": "x" * 20_000,
                "links": ["https://avd.aquasec.com/nvd/cve-2023-0464"],
                "preferred_cvss": {"score_v3": 7.5, "vector_v3": "CVSS:3.1/AV:N/AC:L"},
                "cwe_ids": ["CWE-295"],
                "vendor_attributes": {"CVSS": {"nvd": {"V3Score": 7.5}}},
                "layer": {"digest": "sha256:" + "22" * 32, "diff_id": "sha256:" + "33" * 32},
            },
            {"id": "CVE-2023-0001", "package": "zlib", "version": "1", "severity": "Negligible",
             "fix_version": None, "links": None, "preferred_cvss": None},
            # duplicates are reported once
            {"id": "CVE-2023-0001", "package": "zlib", "version": "1", "severity": "Negligible"},
        ],
    }  # fmt: skip
    findings = findings_from_report(parse_report(json.dumps(document)))
    assert len(findings) == 2
    ssl, zlib = findings
    assert (ssl.id, ssl.package, ssl.installed_version, ssl.fixed_version) == (
        "CVE-2023-0464",
        "libssl3",
        "3.0.8-1",
        "3.0.9-1",
    )
    assert ssl.severity is Severity.HIGH
    assert (ssl.cvss_score, ssl.cvss_vector) == (7.5, "CVSS:3.1/AV:N/AC:L")
    assert ssl.layer == "sha256:" + "33" * 32
    assert len(ssl.summary) == 8192  # long descriptions are cut, not refused
    assert ssl.links == ("https://avd.aquasec.com/nvd/cve-2023-0464",)
    assert (zlib.fixed_version, zlib.severity, zlib.links, zlib.cvss_score) == (
        None,
        Severity.LOW,
        (),
        None,
    )


@pytest.mark.parametrize(
    "document",
    [
        "not json",
        "[]",
        '{"vulnerabilities": [{"package": "no id"}]}',
        '{"vulnerabilities": [{"id": "X", "links": "not a list"}]}',
        '{"vulnerabilities": [{"id": "' + "x" * 300 + '"}]}',
        '{"vulnerabilities": [{"id": "X", "links": [' + ",".join(['"u"'] * 40) + "]}]}",
    ],
)
def test_malformed_reports_are_refused_with_a_reason(document: str) -> None:
    with pytest.raises(HarborFormatError, match="malformed vulnerability report"):
        parse_report(document)


def test_reports_with_too_many_vulnerabilities_are_refused() -> None:
    items = [{"id": f"CVE-{index}"} for index in range(MAX_VULNERABILITIES + 1)]
    with pytest.raises(HarborFormatError):
        parse_report(json.dumps({"vulnerabilities": items}))


def test_metadata_chooses_the_newest_report_type_for_the_artifact() -> None:
    metadata = parse_metadata(
        json.dumps(
            {
                "scanner": {"name": "Trivy", "vendor": "Aqua", "version": "0.59"},
                "capabilities": [
                    {
                        "consumes_mime_types": [OCI_MANIFEST],
                        "produces_mime_types": [
                            "application/vnd.scanner.adapter.vuln.report.harbor+json;version=1.0",
                            "application/vnd.security.vulnerability.report; version=1.1",
                        ],
                    },
                    {
                        "type": "sbom",
                        "consumes_mime_types": [OCI_MANIFEST],
                        "produces_mime_types": ["application/vnd.security.sbom.report+json"],
                    },
                ],
                "properties": None,
            }
        )
    )
    assert metadata.report_type_for(OCI_MANIFEST) == REPORT_V1_1
    assert metadata.report_type_for("application/vnd.oci.image.index.v1+json") is None
    assert metadata.properties == {}
    older = metadata_document(metadata.scanner, [OCI_MANIFEST], {})
    older["capabilities"][0]["produces_mime_types"] = [REPORT_HARBOR_V1_0]
    assert parse_metadata(json.dumps(older)).report_type_for(OCI_MANIFEST) == REPORT_HARBOR_V1_0
    with pytest.raises(HarborFormatError):
        parse_metadata('{"scanner": {}}')


def test_accept_headers_name_a_report_type() -> None:
    assert report_type_of(REPORT_V1_1) == REPORT_V1_1
    assert report_type_of("application/vnd.security.vulnerability.report;version=1.1") == (
        REPORT_V1_1
    )
    assert report_type_of(REPORT_HARBOR_V1_0) == REPORT_HARBOR_V1_0
    assert report_type_of(f"text/html, {REPORT_HARBOR_V1_0}") == REPORT_HARBOR_V1_0
    assert report_type_of("") == REPORT_V1_1
    assert report_type_of("*/*") == REPORT_V1_1
    assert report_type_of("application/vnd.scanner.adapter.vuln.report.raw") is None
    assert report_type_of("application/vnd.security.sbom.report+json; version=1.0") is None


def test_scan_requests_and_error_responses() -> None:
    request = parse_scan_request(
        json.dumps(
            {
                "registry": {"url": "https://registry.example", "authorization": "Bearer x"},
                "artifact": {"repository": "a/b", "digest": DIGEST, "tag": "1.0"},
            }
        )
    )
    assert request.asks_for_vulnerabilities()
    assert request.artifact.tag == "1.0"
    sbom_only = request.model_copy(update={"enabled_capabilities": [{"type": "sbom"}]})
    assert not sbom_only.asks_for_vulnerabilities()
    for bad in ('{"registry": {"url": "x"}}', '{"registry": 1, "artifact": {}}', "{"):
        with pytest.raises(HarborFormatError, match="malformed scan request"):
            parse_scan_request(bad)
    assert error_message('{"error": {"message": "boom"}}') == "boom"
    assert error_message("<html>") is None


def test_scan_ids_are_opaque_and_checked() -> None:
    scan_id = encode_scan_id("team/app/api", DIGEST)
    assert "/" not in scan_id
    assert "team" not in scan_id
    assert decode_scan_id(scan_id) == ("team/app/api", DIGEST)
    for bad in ("", "x" * 2000, "not-base64!", encode_scan_id("a", "sha256:short"), "W10"):
        with pytest.raises(HarborFormatError):
            decode_scan_id(bad)


def test_registry_urls_compare_by_origin() -> None:
    own = ["https://registry.example", "http://127.0.0.1:5000"]
    assert same_registry("https://registry.example/", own)
    assert same_registry("https://REGISTRY.example:443", own)
    assert same_registry("http://127.0.0.1:5000", own)
    assert not same_registry("http://registry.example", own)
    assert not same_registry("https://registry.example:8443", own)
    assert not same_registry("https://registry.example/v2/other", own)
    assert not same_registry("https://evil.example", own)
    assert not same_registry("not a url", own)
    assert not same_registry("http://127.0.0.1:99999", own)


def test_an_adapter_url_is_matched_to_a_registry_by_origin_whatever_its_path() -> None:
    own = ["http://127.0.0.1:5000"]
    assert same_origin("http://127.0.0.1:5000/scanner", own)
    assert same_origin("http://127.0.0.1:5000", own)
    assert not same_origin("http://127.0.0.1:5001/scanner", own)
    assert not same_origin("https://127.0.0.1:5000/scanner", own)


def test_the_registry_url_given_to_adapters() -> None:
    assert registry_url("https://registry.example/", "0.0.0.0:5000", tls=False) == (
        "https://registry.example"
    )
    assert registry_url(None, "0.0.0.0:5000", tls=False) == "http://127.0.0.1:5000"
    assert registry_url(None, "[::]:443", tls=True) == "https://[::1]:443"
    assert registry_url(None, "10.1.2.3:8080", tls=True) == "https://10.1.2.3:8080"


def test_pulls_with_an_adapter_token_are_recognised() -> None:
    assert is_adapter_pull(Actor("scanner-adapter:trivy", "anonymous"))
    assert not is_adapter_pull(Actor("anonymous", "anonymous"))
    assert not is_adapter_pull(Actor("scanner-adapter:trivy", "user", id=3))
