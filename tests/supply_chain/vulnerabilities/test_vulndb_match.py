"""The matcher against a real imported generation: which advisories affect which packages.

Each case names real packages and versions; the expected findings (and the non-findings: fixed
exactly, another release, withdrawn, before `introduced`) are the oracle.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from moorage.scanning.packages import Distro, Ecosystem, Inventory, Package
from moorage.vulnerability.database import Generation, VulnerabilityDatabase
from moorage.vulnerability.findings import Finding
from moorage.vulnerability.matcher import MatchResult, lookup_keys, match
from moorage.vulnerability.severity import Severity
from tests.support.osv import log4shell, osv_record, write_bundle

DEBIAN_12 = Distro("debian", "12", pretty_name="Debian GNU/Linux 12 (bookworm)")
UBUNTU_2204 = Distro("ubuntu", "22.04", ("debian",))
ALPINE_319 = Distro("alpine", "3.19.1")
ROCKY_9 = Distro("rocky", "9.3", ("rhel", "centos", "fedora"))
DPKG_STATUS = "var/lib/dpkg/status"
APK_INSTALLED = "lib/apk/db/installed"
HIGH_VECTOR = "CVSS:3.1/AV:N/AC:L/PR:N/UI:R/S:U/C:H/I:H/A:N"  # 8.1


def _two_ranges() -> dict[str, Any]:
    record = osv_record("TEST-TWO-RANGES", "npm", "semver", introduced="0", fixed="5.7.2")
    record["affected"][0]["ranges"] = [
        {"type": "SEMVER", "events": [{"introduced": "0"}, {"fixed": "5.7.2"}]},
        {"type": "SEMVER", "events": [{"introduced": "6.0.0"}, {"fixed": "6.3.1"}]},
        {"type": "SEMVER", "events": [{"introduced": "7.0.0"}, {"fixed": "7.5.2"}]},
    ]
    return record


def _scoped_and_unscoped() -> dict[str, Any]:
    record = osv_record("TEST-TWO-ENTRIES", "Debian:12", "glibc", fixed="2.36-9+deb12u4")
    record["affected"].append(
        {
            "package": {"ecosystem": "Debian", "name": "glibc"},
            "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "2.37-1"}]}],
        }
    )
    return record


RECORDS: dict[str, list[dict[str, Any]]] = {
    "Debian": [
        osv_record("TEST-DEB-OPENSSL", "Debian:12", "openssl", fixed="3.0.11-1~deb12u2"),
        osv_record("TEST-DEB11-OPENSSL", "Debian:11", "openssl", fixed="9.9.9-1"),
        osv_record("TEST-DEB-ZLIB", "Debian:12", "zlib", fixed="1:1.2.13.dfsg-1"),
        osv_record("TEST-DEB-CURL", "Debian:12", "curl", last_affected="7.88.1-10+deb12u5"),
        osv_record("TEST-DEB-TAR", "Debian:12", "tar", versions=["1.34+dfsg-1.2"]),
        osv_record("TEST-DEB-WITHDRAWN", "Debian:12", "openssl", fixed="3.0.99-1", withdrawn=True),
        osv_record("TEST-DEB-ANY", "Debian", "systemd", fixed="252.22-1~deb12u1"),
        osv_record("TEST-DEB-GIT", "Debian:12", "bash", fixed="abc123", range_type="GIT"),
        osv_record(
            "TEST-DSA-GCC",
            "Debian:12",
            "gcc-12",
            fixed="12.2.0-14+deb12u1",
            aliases=("CVE-2023-4039",),
        ),
        osv_record("TEST-DEB-BADVERSION", "Debian:12", "perl", fixed="5.36.0-7+deb12u1"),
        _scoped_and_unscoped(),
    ],
    "Ubuntu": [
        osv_record("TEST-UBU-2204", "Ubuntu:22.04:LTS", "openssl", fixed="3.0.2-0ubuntu1.15"),
        osv_record("TEST-UBU-2004", "Ubuntu:20.04:LTS", "openssl", fixed="9.9.9"),
        osv_record("TEST-UBU-PRO", "Ubuntu:Pro:22.04:LTS", "openssl", fixed="3.0.2-0ubuntu1.16"),
    ],
    "Alpine": [
        osv_record("TEST-ALP-BUSYBOX", "Alpine:v3.19", "busybox", fixed="1.36.1-r16"),
        osv_record("TEST-ALP-REVISION", "Alpine:v3.19", "busybox", fixed="1.36.1-r2"),
        osv_record("TEST-ALP-318", "Alpine:v3.18", "busybox", fixed="9.9.9-r0"),
        osv_record("TEST-ALP-GIT-FIXED", "Alpine:v3.19", "apk-tools", fixed="2.14.0-r0"),
        osv_record("TEST-ALP-GIT-OPEN", "Alpine:v3.19", "apk-tools", fixed="2.14.1-r0"),
    ],
    "PyPI": [
        osv_record(
            "GHSA-j8r2-6x86-q33q",
            "PyPI",
            "Requests",
            introduced="2.3.0",
            fixed="2.31.0",
            aliases=("CVE-2023-32681",),
            cvss_v3="CVSS:3.1/AV:N/AC:H/PR:N/UI:R/S:C/C:H/I:N/A:N",
        ),
        osv_record(
            "TEST-PYPI-UNDERSCORE",
            "PyPI",
            "Typing_Extensions",
            fixed="4.8.0",
            database_severity="LOW",
        ),
    ],
    "Maven": [log4shell()],
    "Go": [
        osv_record("TEST-GO-STDLIB", "Go", "stdlib", fixed="1.21.6", range_type="SEMVER"),
        osv_record(
            "TEST-GO-XNET",
            "Go",
            "golang.org/x/net",
            fixed="0.17.0",
            range_type="SEMVER",
            aliases=("CVE-2023-44487",),
        ),
    ],
    "npm": [
        osv_record(
            "GHSA-xvch-5gv4-984h",
            "npm",
            "minimist",
            fixed="1.2.6",
            range_type="SEMVER",
            cvss_v3="CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H",
        ),
        _two_ranges(),
        # Rates the DSA above through the alias they share (Debian records carry no CVSS).
        osv_record(
            "TEST-GHSA-GCC",
            "npm",
            "left-pad-unused",
            aliases=("CVE-2023-4039",),
            cvss_v3=HIGH_VECTOR,
        ),
    ],
    "Rocky Linux": [
        osv_record("TEST-ROCKY", "Rocky Linux:9", "openssl", fixed="1:3.0.7-25.el9_3"),
    ],
}


@pytest.fixture(scope="module")
def generation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Generation]:
    root = tmp_path_factory.mktemp("match")
    database = VulnerabilityDatabase(root / "vulndb")
    database.import_path(write_bundle(root / "bundle.tar.gz", RECORDS))
    current = database.current()
    assert current is not None
    yield current
    current.close()


def deb(
    name: str, version: str, source: str | None = None, source_version: str | None = None
) -> Package:
    return Package(
        Ecosystem.DEBIAN,
        name,
        version,
        DPKG_STATUS,
        source_name=source or name,
        source_version=source_version or version,
        arch="amd64",
        layer="sha256:" + "1" * 64,
    )


def apk(name: str, version: str, origin: str) -> Package:
    return Package(Ecosystem.ALPINE, name, version, APK_INSTALLED, origin, version, "x86_64")


def lang(ecosystem: Ecosystem, name: str, version: str, location: str = "app") -> Package:
    return Package(ecosystem, name, version, location)


def run(generation: Generation, distro: Distro | None, *packages: Package) -> MatchResult:
    return match(Inventory(distro, packages), generation)


def found(result: MatchResult) -> set[tuple[str, str, str]]:
    return {(f.id, f.package, f.installed_version) for f in result.findings}


def one(result: MatchResult, advisory: str, package: str) -> Finding:
    hits = [f for f in result.findings if f.id == advisory and f.package == package]
    assert len(hits) == 1, result.findings
    return hits[0]


# --- Debian ------------------------------------------------------------------------------


def test_debian_binary_packages_match_their_source_package_records(generation: Generation) -> None:
    result = run(
        generation,
        DEBIAN_12,
        deb("libssl3", "3.0.11-1~deb12u1", "openssl"),
        deb("openssl", "3.0.11-1~deb12u1"),
    )
    assert found(result) == {
        ("TEST-DEB-OPENSSL", "libssl3", "3.0.11-1~deb12u1"),
        ("TEST-DEB-OPENSSL", "openssl", "3.0.11-1~deb12u1"),
    }
    finding = one(result, "TEST-DEB-OPENSSL", "libssl3")
    assert finding.ecosystem == "Debian:12"
    assert finding.fixed_version == "3.0.11-1~deb12u2"
    assert finding.severity is Severity.UNKNOWN  # Debian records carry no rating
    assert finding.purl == ("pkg:deb/debian/libssl3@3.0.11-1~deb12u1?arch=amd64&upstream=openssl")
    assert finding.location == DPKG_STATUS
    assert finding.layer == "sha256:" + "1" * 64
    assert finding.links == ("https://osv.dev/vulnerability/TEST-DEB-OPENSSL",)


def test_a_record_for_another_debian_release_does_not_match(generation: Generation) -> None:
    result = run(generation, DEBIAN_12, deb("openssl", "3.0.9-1"))
    assert "TEST-DEB11-OPENSSL" not in {f.id for f in result.findings}
    assert "TEST-DEB-OPENSSL" in {f.id for f in result.findings}
    on_bullseye = run(generation, Distro("debian", "11"), deb("openssl", "1.1.1w-0+deb11u1"))
    assert found(on_bullseye) == {("TEST-DEB11-OPENSSL", "openssl", "1.1.1w-0+deb11u1")}


def test_the_tilde_orders_before_the_release_it_precedes(generation: Generation) -> None:
    # 3.0.11-1~deb12u2 is the fix; 3.0.11-1 (no tilde) sorts after it.
    assert found(run(generation, DEBIAN_12, deb("openssl", "3.0.11-1~deb12u2"))) == set()
    assert found(run(generation, DEBIAN_12, deb("openssl", "3.0.11-1"))) == set()


def test_the_exact_fixed_version_does_not_match(generation: Generation) -> None:
    fixed = run(generation, DEBIAN_12, deb("zlib1g", "1:1.2.13.dfsg-1", "zlib"))
    assert fixed.findings == ()
    older = run(generation, DEBIAN_12, deb("zlib1g", "1:1.2.12.dfsg-1", "zlib"))
    assert found(older) == {("TEST-DEB-ZLIB", "zlib1g", "1:1.2.12.dfsg-1")}


def test_last_affected_is_inclusive_and_has_no_fixed_version(generation: Generation) -> None:
    result = run(generation, DEBIAN_12, deb("curl", "7.88.1-10+deb12u5"))
    assert one(result, "TEST-DEB-CURL", "curl").fixed_version is None
    after = run(generation, DEBIAN_12, deb("curl", "7.88.1-10+deb12u6"))
    assert after.findings == ()


def test_a_versions_list_matches_exactly_those_versions(generation: Generation) -> None:
    listed = run(generation, DEBIAN_12, deb("tar", "1.34+dfsg-1.2"))
    assert found(listed) == {("TEST-DEB-TAR", "tar", "1.34+dfsg-1.2")}
    assert one(listed, "TEST-DEB-TAR", "tar").fixed_version is None
    assert run(generation, DEBIAN_12, deb("tar", "1.34+dfsg-1.3")).findings == ()


def test_withdrawn_records_never_match(generation: Generation) -> None:
    ids = {f.id for f in run(generation, DEBIAN_12, deb("openssl", "3.0.9-1")).findings}
    assert "TEST-DEB-WITHDRAWN" not in ids
    stored = {record.id for record in generation.records_for("Debian", "openssl")}
    assert "TEST-DEB-WITHDRAWN" in stored  # kept, so a later generation's change is seen


def test_an_unscoped_debian_record_applies_to_every_release(generation: Generation) -> None:
    for release in ("11", "12", "13"):
        distro = Distro("debian", release)
        result = run(generation, distro, deb("systemd", "252.17-1~deb12u1"))
        assert found(result) == {("TEST-DEB-ANY", "systemd", "252.17-1~deb12u1")}


def test_an_entry_with_only_a_git_range_is_possibly_affected(generation: Generation) -> None:
    # GIT ranges need the repository; with no version list beside them nothing can be read.
    result = run(generation, DEBIAN_12, deb("bash", "5.2.15-2+b2"))
    (finding,) = result.findings
    assert (finding.id, finding.possibly_affected) == ("TEST-DEB-GIT", True)
    assert result.notes == ()


def test_the_source_version_is_compared_for_the_source_package(generation: Generation) -> None:
    # gcc-12's binary packages carry their own version; the DSA is about the source version.
    result = run(
        generation,
        DEBIAN_12,
        deb("cpp-12", "12.2.0-14+b1", "gcc-12", "12.2.0-14"),
        deb("libgcc-s1", "12.2.0-14+deb12u1", "gcc-12", "12.2.0-14+deb12u1"),
    )
    assert found(result) == {("TEST-DSA-GCC", "cpp-12", "12.2.0-14+b1")}
    finding = one(result, "TEST-DSA-GCC", "cpp-12")
    assert finding.fixed_version == "12.2.0-14+deb12u1"
    # No CVSS of its own: rated through the GHSA record that shares CVE-2023-4039.
    assert finding.severity is Severity.HIGH
    assert finding.cvss_score == 8.1
    assert finding.aliases == ("CVE-2023-4039",)


def test_one_finding_per_advisory_and_package(generation: Generation) -> None:
    # Both the Debian:12 entry and the unscoped Debian entry cover glibc 2.36-9+deb12u3.
    result = run(generation, DEBIAN_12, deb("libc6", "2.36-9+deb12u3", "glibc"))
    assert found(result) == {("TEST-TWO-ENTRIES", "libc6", "2.36-9+deb12u3")}
    assert one(result, "TEST-TWO-ENTRIES", "libc6").fixed_version == "2.36-9+deb12u4"


def test_a_version_that_cannot_be_ordered_is_possibly_affected(
    generation: Generation,
) -> None:
    result = run(generation, DEBIAN_12, deb("perl", "not a version"))
    (finding,) = result.findings
    assert finding.id == "TEST-DEB-BADVERSION"
    assert finding.possibly_affected
    assert finding.uncertainty is not None
    assert "cannot compare" in finding.uncertainty
    assert finding.fixed_version == "5.36.0-7+deb12u1"  # what to upgrade to is still known
    assert result.notes == ()


# --- Ubuntu, Alpine, rpm -----------------------------------------------------------------


def test_ubuntu_records_apply_to_their_release_only(generation: Generation) -> None:
    result = run(generation, UBUNTU_2204, deb("libssl3", "3.0.2-0ubuntu1.10", "openssl"))
    assert {f.id for f in result.findings} == {"TEST-UBU-2204", "TEST-UBU-PRO"}
    assert one(result, "TEST-UBU-2204", "libssl3").ecosystem == "Ubuntu:22.04:LTS"
    assert one(result, "TEST-UBU-PRO", "libssl3").fixed_version == "3.0.2-0ubuntu1.16"
    focal = run(
        generation, Distro("ubuntu", "20.04"), deb("libssl1.1", "1.1.1f-1ubuntu2", "openssl")
    )
    assert {f.id for f in focal.findings} == {"TEST-UBU-2004"}


def test_alpine_matches_the_origin_in_the_image_release(generation: Generation) -> None:
    result = run(generation, ALPINE_319, apk("ssl_client", "1.36.1-r15", "busybox"))
    # -r15 < -r16 (affected); -r15 > -r2 numerically (not affected); v3.18 is another release.
    assert found(result) == {("TEST-ALP-BUSYBOX", "ssl_client", "1.36.1-r15")}
    assert one(result, "TEST-ALP-BUSYBOX", "ssl_client").ecosystem == "Alpine:v3.19"
    assert lookup_keys(apk("ssl_client", "1.36.1-r15", "busybox"), ALPINE_319) == (
        ("Alpine", "busybox"),
    )


def test_alpine_git_snapshots_sort_after_their_release(generation: Generation) -> None:
    # 2.14.0_git20231201 is newer than 2.14.0 and older than 2.14.1.
    result = run(generation, ALPINE_319, apk("apk-tools", "2.14.0_git20231201-r0", "apk-tools"))
    assert {f.id for f in result.findings} == {"TEST-ALP-GIT-OPEN"}


def test_rpm_packages_match_by_distribution(generation: Generation) -> None:
    package = Package(
        Ecosystem.RPM,
        "openssl-libs",
        "1:3.0.7-24.el9",
        "var/lib/rpm/rpmdb.sqlite",
        "openssl",
        "1:3.0.7-24.el9",
        "x86_64",
    )
    result = run(generation, ROCKY_9, package)
    assert found(result) == {("TEST-ROCKY", "openssl-libs", "1:3.0.7-24.el9")}
    assert one(result, "TEST-ROCKY", "openssl-libs").ecosystem == "Rocky Linux:9"
    fedora = run(generation, Distro("fedora", "40"), package)
    assert fedora.findings == ()
    assert fedora.notes == ("rpm packages of fedora are not matched: OSV has no advisories for it",)
    assert lookup_keys(package, Distro("fedora", "40")) == ()


# --- Language ecosystems -----------------------------------------------------------------


def test_pypi_names_are_compared_canonically(generation: Generation) -> None:
    result = run(
        generation,
        DEBIAN_12,
        lang(Ecosystem.PYPI, "requests", "2.25.0"),
        lang(Ecosystem.PYPI, "typing-extensions", "4.7.1"),
        lang(Ecosystem.PYPI, "requests", "2.31.0", "other"),
    )
    assert found(result) == {
        ("GHSA-j8r2-6x86-q33q", "requests", "2.25.0"),
        ("TEST-PYPI-UNDERSCORE", "typing-extensions", "4.7.1"),
    }
    assert one(result, "TEST-PYPI-UNDERSCORE", "typing-extensions").severity is Severity.LOW
    requests = one(result, "GHSA-j8r2-6x86-q33q", "requests")
    assert requests.severity is Severity.MEDIUM
    assert requests.cvss_score == 6.1
    assert lookup_keys(lang(Ecosystem.PYPI, "Typing_Extensions", "1"), None) == (
        ("PyPI", "typing-extensions"),
    )


def test_maven_log4shell(generation: Generation) -> None:
    name = "org.apache.logging.log4j:log4j-core"
    result = run(
        generation,
        None,
        lang(Ecosystem.MAVEN, name, "2.14.1", "app.jar"),
        lang(Ecosystem.MAVEN, name, "2.15.0", "fixed.jar"),
        lang(Ecosystem.MAVEN, name, "2.0-beta8", "old.jar"),
    )
    assert found(result) == {("GHSA-jfh8-c2jp-5v3q", name, "2.14.1")}
    finding = result.findings[0]
    assert finding.severity is Severity.CRITICAL
    assert finding.cvss_score == 10.0
    assert finding.aliases == ("CVE-2021-44228",)
    assert finding.ids == {"GHSA-jfh8-c2jp-5v3q", "CVE-2021-44228"}
    assert finding.fixed_version == "2.15.0"
    assert finding.summary == "Remote code injection in Log4j"
    assert finding.purl == "pkg:maven/org.apache.logging.log4j/log4j-core@2.14.1"


def test_go_modules_and_the_standard_library(generation: Generation) -> None:
    result = run(
        generation,
        None,
        lang(Ecosystem.GO, "stdlib", "go1.21.5", "usr/bin/app"),
        lang(Ecosystem.GO, "golang.org/x/net", "v0.16.0", "usr/bin/app"),
        lang(Ecosystem.GO, "golang.org/x/net", "v0.17.0", "usr/bin/other"),
        lang(Ecosystem.GO, "stdlib", "go1.21.6", "usr/bin/other"),
    )
    assert found(result) == {
        ("TEST-GO-STDLIB", "stdlib", "go1.21.5"),
        ("TEST-GO-XNET", "golang.org/x/net", "v0.16.0"),
    }
    assert one(result, "TEST-GO-STDLIB", "stdlib").fixed_version == "1.21.6"


def test_the_lowest_fix_above_the_installed_version_in_the_matching_range(
    generation: Generation,
) -> None:
    result = run(
        generation,
        None,
        lang(Ecosystem.NPM, "semver", "6.1.0"),
        lang(Ecosystem.NPM, "semver", "7.3.8", "b"),
        lang(Ecosystem.NPM, "semver", "6.3.1", "c"),
    )
    fixes = {f.installed_version: f.fixed_version for f in result.findings}
    assert fixes == {"6.1.0": "6.3.1", "7.3.8": "7.5.2"}


def test_findings_come_in_a_stable_order(generation: Generation) -> None:
    packages = (
        lang(Ecosystem.NPM, "minimist", "1.2.5"),
        deb("libssl3", "3.0.11-1~deb12u1", "openssl"),
        lang(Ecosystem.PYPI, "requests", "2.25.0"),
        deb("zlib1g", "1:1.2.12.dfsg-1", "zlib"),
    )
    forward = run(generation, DEBIAN_12, *packages)
    backward = run(generation, DEBIAN_12, *reversed(packages))
    assert forward == backward
    assert [f.id for f in forward.findings] == [
        "TEST-DEB-OPENSSL",
        "TEST-DEB-ZLIB",
        "GHSA-j8r2-6x86-q33q",
        "GHSA-xvch-5gv4-984h",
    ]


def test_lookup_keys_name_the_source_and_the_binary_package() -> None:
    assert lookup_keys(deb("libssl3", "3.0.11-1~deb12u1", "openssl"), DEBIAN_12) == (
        ("Debian", "openssl"),
        ("Debian", "libssl3"),
    )
    assert lookup_keys(deb("openssl", "3.0.11-1~deb12u1"), UBUNTU_2204) == (("Ubuntu", "openssl"),)
    assert lookup_keys(lang(Ecosystem.GO, "stdlib", "go1.22.0"), None) == (("Go", "stdlib"),)
    assert lookup_keys(deb("bash", "5.2"), Distro("linuxmint", "21")) == ()
