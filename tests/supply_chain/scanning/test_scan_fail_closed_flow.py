"""Through a real server: what the scanner cannot decide still gates pulls, duplicates are one
finding, OS-owned Python files are left to their OS package, and severities are borrowed.

One image, built in the test: a Debian layer whose dpkg database owns urllib3's egg-info
(python3-urllib3), node-fetch 3.1.0 under node_modules, left-pad with a version the advisory's
bound cannot be compared with, and two Go binaries of one toolchain (stdlib go1.21.5 twice).
The database is imported with `moorage vulndb import --cve` while the server runs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.supply_chain.scanning.test_scan_flow import FAST_POLL, Scanning
from tests.support.images import Image, Platform, image_from_layers
from tests.support.osv import osv_record, write_bundle
from tests.support.scan_images import (
    DEBIAN_12,
    Entry,
    dpkg_stanza,
    elf_with_sections,
    go_buildinfo,
    layer,
    npm_package,
)
from tests.support.server import RegistryProcess

HIGH = "CVSS:3.1/AV:N/AC:L/PR:N/UI:R/S:U/C:H/I:H/A:N"  # 8.1
LOW = "CVSS:3.1/AV:N/AC:H/PR:H/UI:R/S:U/C:L/I:N/A:N"  # 2.0
URLLIB3 = "usr/lib/python3/dist-packages/urllib3-1.26.12.egg-info/PKG-INFO"

pytestmark = pytest.mark.tools("objcopy")


def image(workdir: Path) -> Image:
    go = elf_with_sections(workdir / "go", {".go.buildinfo": go_buildinfo("go1.21.5", "")})
    status = "\n".join(
        [
            dpkg_stanza("python3-urllib3", "1.26.12-1+deb12u1", "python-urllib3", arch="all"),
            dpkg_stanza("tzdata", "2024a-0+deb12u1", arch="all"),
        ]
    )
    file_list = "/.\n/usr\n/usr/lib\n/usr/lib/python3\n/usr/lib/python3/dist-packages\n"
    file_list += f"/{URLLIB3.rpartition('/')[0]}\n/{URLLIB3}\n"
    return image_from_layers(
        Platform(),
        [
            layer(
                [
                    DEBIAN_12,
                    ("var/lib/dpkg/status", status.encode()),
                    ("var/lib/dpkg/info/python3-urllib3.list", file_list.encode()),
                    (URLLIB3, b"Metadata-Version: 1.2\nName: urllib3\nVersion: 1.26.12\n"),
                ]
            ),
            layer(
                [
                    npm_package("app/node_modules", "node-fetch", "3.1.0"),
                    npm_package("app/node_modules", "left-pad", "1.3.0-"),
                    Entry("usr/local/bin/api", go, 0o755),
                    Entry("usr/local/bin/worker", go, 0o755),
                ]
            ),
        ],
        "fail-closed",
    )


def bundle() -> dict[str, list[dict[str, Any]]]:
    return {
        "npm": [
            # As published: the range starts at "1.0", which is not strict SemVer.
            osv_record(
                "GHSA-r683-j2x4-v87g",
                "npm",
                "node-fetch",
                introduced="1.0",
                fixed="3.1.1",
                range_type="SEMVER",
                aliases=("CVE-2022-0235",),
                cvss_v3=HIGH,
            ),
            # left-pad's installed version ("1.3.0-") cannot be compared: possibly affected.
            osv_record(
                "GHSA-lp00-0000-0000",
                "npm",
                "left-pad",
                fixed="1.3.1",
                range_type="SEMVER",
                aliases=("CVE-2099-1111",),
            ),
        ],
        "PyPI": [osv_record("GHSA-v845-jxx5-vc9f", "PyPI", "urllib3", fixed="1.26.17")],
        "Go": [
            osv_record(
                "GO-2024-2600",
                "Go",
                "stdlib",
                fixed="1.21.8",
                range_type="SEMVER",
                aliases=("CVE-2023-45290", "GHSA-go00-0000-0000"),
            ),
            osv_record(
                "GHSA-go00-0000-0000",
                "Go",
                "stdlib",
                fixed="1.21.8",
                range_type="SEMVER",
                aliases=("CVE-2023-45290",),
                cvss_v3=HIGH,
            ),
        ],
    }


def cve_directory(path: Path) -> Path:
    record = {
        "dataType": "CVE_RECORD",
        "dataVersion": "5.1",
        "cveMetadata": {"cveId": "CVE-2099-1111", "state": "PUBLISHED"},
        "containers": {
            "cna": {
                "providerMetadata": {"shortName": "example"},
                "metrics": [{"cvssV3_1": {"vectorString": LOW, "baseScore": 2.0}}],
            }
        },
    }
    target = path / "cves" / "2099" / "1xxx"
    target.mkdir(parents=True)
    (target / "CVE-2099-1111.json").write_text(json.dumps(record))
    return path


@pytest.fixture
def scanning(start_registry: Callable[..., RegistryProcess]) -> Iterator[Scanning]:
    session = Scanning(start_registry(env=dict(FAST_POLL)))
    yield session
    session.close()


def test_the_scan_fails_closed_end_to_end(scanning: Scanning, tmp_path: Path) -> None:
    project = scanning.project(scan_on_push=True)
    repository = f"{project}/app"
    digest = scanning.push(repository, image(tmp_path / "image"), "v1")
    output = scanning.vulndb(
        "import",
        str(write_bundle(tmp_path / "bundle.tar.gz", bundle())),
        "--cve",
        str(cve_directory(tmp_path / "cvelist")),
    )
    assert "CVE records rating severity: 1" in output
    generation = re.search(r"generation (\S+) is current", output)
    assert generation is not None
    status = scanning.api.get("/vulnerability-database")
    assert status.status_code == 200, status.text
    assert status.json()["current"]["cveRecords"] == 1
    assert "1 CVE ratings" in scanning.vulndb("status")
    report = scanning.wait(
        repository,
        digest,
        lambda r: r["status"] == "Success" and r["generation"] == generation.group(1),
        "matching",
    )
    findings = {(f["id"], f["package"]): f for f in report["findings"]}
    assert set(findings) == {
        ("GHSA-r683-j2x4-v87g", "node-fetch"),
        ("GHSA-lp00-0000-0000", "left-pad"),
        ("GO-2024-2600", "stdlib"),
        ("GHSA-go00-0000-0000", "stdlib"),
    }

    # node-fetch 3.1.0 is within [1.0, 3.1.1).
    node_fetch = findings[("GHSA-r683-j2x4-v87g", "node-fetch")]
    assert (node_fetch["severity"], node_fetch["possiblyAffected"]) == ("High", False)

    # left-pad: possibly affected, rated by the CVE record, counted in the summary.
    left_pad = findings[("GHSA-lp00-0000-0000", "left-pad")]
    assert left_pad["possiblyAffected"] is True
    assert "cannot compare" in left_pad["uncertainty"]
    assert left_pad["severity"] == "Low"
    assert left_pad["severitySource"] == "CVE-2099-1111 CVE record (cna) CVSS_V3"
    assert report["possiblyAffected"] == 1
    assert report["summary"]["Low"] == 1
    assert sum(report["summary"].values()) == len(report["findings"])

    # Two binaries, one toolchain: one finding per advisory with both files; rated by GHSA.
    stdlib = findings[("GO-2024-2600", "stdlib")]
    assert [place["location"] for place in stdlib["locations"]] == [
        "usr/local/bin/api",
        "usr/local/bin/worker",
    ]
    assert stdlib["severity"] == "High"
    assert stdlib["severitySource"] == "GHSA-go00-0000-0000 CVSS_V3"
    assert report["summary"]["High"] == 3

    # urllib3 belongs to python3-urllib3: not matched against PyPI, still in the SBOM.
    assert not any(f["package"] == "urllib3" for f in report["findings"])
    assert any("matched through those OS packages" in note for note in report["notes"])
    sbom = scanning.api.get(f"/repositories/{repository}/manifests/{digest}/sbom")
    assert sbom.status_code == 200, sbom.text
    document = sbom.json()
    urllib3 = next(c for c in document["components"] if c["name"] == "urllib3")
    assert {"name": "moorage:package:os-package", "value": "python3-urllib3"} in urllib3[
        "properties"
    ]
    go_refs = {c["bom-ref"] for c in document["components"] if c["name"] == "stdlib"}
    vulnerability = next(v for v in document["vulnerabilities"] if v["id"] == "GO-2024-2600")
    assert {item["ref"] for item in vulnerability["affects"]} == go_refs
    assert len(go_refs) == 2

    # The policy: at Critical nothing definite blocks; the possibly affected finding does
    # when the policy says to block those, and does not when it ignores them.
    policy = f"/projects/{project}/vulnerability-policy"
    manifest = f"/v2/{repository}/manifests/v1"
    accept = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
    put = scanning.api.put(
        policy, json={"enabled": True, "severity": "Critical", "possiblyAffected": "block"}
    )
    assert put.status_code == 200, put.text
    denied = scanning.v2.get(manifest, headers=accept)
    assert denied.status_code == 403, denied.text
    assert "left-pad" in denied.text
    assert "possibly affected" in denied.text
    put = scanning.api.put(
        policy, json={"enabled": True, "severity": "Critical", "possiblyAffected": "ignore"}
    )
    assert put.status_code == 200, put.text
    assert scanning.v2.get(manifest, headers=accept).status_code == 200
    # By default a possibly affected finding is judged like any other: Low does not reach High.
    put = scanning.api.put(policy, json={"enabled": True, "severity": "Low"})
    assert put.status_code == 200, put.text
    assert put.json()["possiblyAffected"] == "finding"
    assert scanning.v2.get(manifest, headers=accept).status_code == 403
