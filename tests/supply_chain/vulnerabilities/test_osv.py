"""OSV records: parsing (malformed records are rejected with a reason) and the matcher.

Advisories with real ids are abridged copies of the published ones; `TEST-` ids are made up
for distribution edge cases, with real package names and versions.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from moorage.vulnerability.osv import (
    CannotCompareError,
    Event,
    EventKind,
    MalformedRecordError,
    RangeType,
    Record,
    affected,
    ecosystem_applies,
    load_record,
    parse_record,
    parse_records,
)
from moorage.vulnerability.versions import InvalidVersionError, UnsupportedEcosystemError

Document = dict[str, Any]


def _range(*events: tuple[str, str], kind: str = "ECOSYSTEM") -> Document:
    return {"type": kind, "events": [{key: value} for key, value in events]}


def _entry(
    ecosystem: str, name: str, *ranges: Document, versions: list[str] | None = None
) -> Document:
    entry: Document = {"package": {"ecosystem": ecosystem, "name": name}, "ranges": list(ranges)}
    if versions is not None:
        entry["versions"] = versions
    return entry


def _record(record_id: str, *entries: Document, **fields: Any) -> Record:
    return parse_record(
        {"id": record_id, "modified": "2024-05-01T12:00:00Z", "affected": list(entries), **fields}
    )


LOG4J: Document = {
    "schema_version": "1.4.0",
    "id": "GHSA-jfh8-c2jp-5v3q",
    "modified": "2024-02-16T08:12:56Z",
    "published": "2021-12-10T00:40:56Z",
    "aliases": ["CVE-2021-44228"],
    "summary": "Remote code injection in Log4j",
    "severity": [{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:C/C:H/I:H/A:H"}],
    "affected": [
        {
            "package": {
                "ecosystem": "Maven",
                "name": "org.apache.logging.log4j:log4j-core",
                "purl": "pkg:maven/org.apache.logging.log4j/log4j-core",
            },
            "ranges": [
                {"type": "ECOSYSTEM", "events": [{"introduced": "2.13.0"}, {"fixed": "2.15.0"}]},
                {"type": "ECOSYSTEM", "events": [{"introduced": "2.0-beta9"}, {"fixed": "2.3.1"}]},
                {"type": "ECOSYSTEM", "events": [{"introduced": "2.4"}, {"fixed": "2.12.2"}]},
            ],
            "database_specific": {"source": "https://github.com/github/advisory-database"},
        }
    ],
    "database_specific": {"severity": "CRITICAL", "cwe_ids": ["CWE-502"], "github_reviewed": True},
}

MINIMIST = _record(
    "GHSA-xvch-5gv4-984h",
    _entry(
        "npm",
        "minimist",
        _range(("introduced", "0"), ("fixed", "0.2.4"), kind="SEMVER"),
        _range(("introduced", "1.0.0"), ("fixed", "1.2.6"), kind="SEMVER"),
    ),
    aliases=["CVE-2021-44906"],
)
REQUESTS = _record(
    "GHSA-j8r2-6x86-q33q",
    _entry("PyPI", "requests", _range(("introduced", "2.3.0"), ("fixed", "2.31.0"))),
    aliases=["CVE-2023-32681"],
)
OPENSSL_DEBIAN_12 = _record(
    "TEST-2024-0001",
    _entry("Debian:12", "openssl", _range(("introduced", "0"), ("fixed", "3.0.11-1~deb12u2"))),
    upstream=["CVE-2023-5363"],
)
OPENSSL_DEBIAN_11 = _record(
    "TEST-2024-0002",
    _entry("Debian:11", "openssl", _range(("introduced", "0"), ("fixed", "1.1.1w-0+deb11u1"))),
)
ZLIB_ANY_DEBIAN = _record(
    "TEST-2024-0003",
    _entry("Debian", "zlib", _range(("introduced", "0"), ("fixed", "1:1.2.13.dfsg-1"))),
)
CURL_LAST_AFFECTED = _record(
    "TEST-2024-0004",
    _entry(
        "Debian:12",
        "curl",
        _range(("introduced", "7.74.0-1"), ("last_affected", "7.88.1-10+deb12u5")),
    ),
)
LODASH_LIMITS = _record(
    "TEST-2024-0005",
    _entry("npm", "lodash", _range(("introduced", "0"), ("limit", "4.17.21"), kind="SEMVER")),
    _entry(
        "npm",
        "lodash-es",
        _range(("introduced", "4.0.0"), ("fixed", "4.17.0"), ("limit", "4.10.0"), kind="SEMVER"),
        _range(("introduced", "4.17.5"), ("limit", "*"), kind="SEMVER"),
    ),
)
URLLIB3_LISTED = _record(
    "TEST-2024-0006",
    _entry("PyPI", "urllib3", versions=["1.26.4", "1.26.5"]),
)
OPENSSL_WITHDRAWN = _record(
    "TEST-2024-0007",
    _entry("Debian:12", "openssl", _range(("introduced", "0"), ("fixed", "3.0.11-1~deb12u2"))),
    withdrawn="2024-06-01T00:00:00Z",
)
ZLIB_GIT = _record(
    "TEST-2024-0008",
    {
        "package": {"ecosystem": "Debian:12", "name": "zlib"},
        "ranges": [
            {
                "type": "GIT",
                "repo": "https://github.com/madler/zlib",
                "events": [
                    {"introduced": "0"},
                    {"fixed": "04f42ceca40f73e2978b50e93806c2a18c1281fc"},
                ],
            }
        ],
    },
    {
        "package": {"ecosystem": "Debian:12", "name": "libxml2"},
        "ranges": [
            {
                "type": "GIT",
                "repo": "https://gitlab.gnome.org/GNOME/libxml2",
                "events": [{"introduced": "0"}],
            }
        ],
        "versions": ["2.9.14+dfsg-1.3~deb12u1"],
    },
)
BUSYBOX_ALPINE = _record(
    "TEST-2024-0009",
    _entry("Alpine:v3.19", "busybox", _range(("introduced", "0"), ("fixed", "1.36.1-r16"))),
    _entry(
        "Alpine:v3.19", "openrc", _range(("introduced", "0"), ("fixed", "0.52.1_git20240101-r0"))
    ),
)
OPENSSL_UBUNTU = _record(
    "TEST-2024-0010",
    _entry(
        "Ubuntu:22.04:LTS", "openssl", _range(("introduced", "0"), ("fixed", "3.0.2-0ubuntu1.12"))
    ),
    severity=[{"type": "Ubuntu", "score": "medium"}],
)
INTERVALS_UNSORTED = _record(
    "TEST-2024-0011",
    _entry(
        "Go",
        "stdlib",
        _range(
            ("fixed", "1.21.5"),
            ("introduced", "1.21.0-0"),
            ("fixed", "1.20.12"),
            ("introduced", "0"),
            kind="SEMVER",
        ),
    ),
    _entry(
        "Go",
        "golang.org/x/net",
        _range(("introduced", "0"), ("fixed", "0.17.0"), kind="SEMVER"),
    ),
)
EMPTY_RANGE = _record(
    "TEST-2024-0012",
    _entry("PyPI", "jinja2", _range(("introduced", "3.1.3"), ("fixed", "3.1.3"))),
)


@pytest.mark.parametrize(
    ("name", "version", "expected"),
    [
        ("org.apache.logging.log4j:log4j-core", "2.14.1", True),
        ("org.apache.logging.log4j:log4j-core", "2.13.0", True),
        ("org.apache.logging.log4j:log4j-core", "2.15.0", False),  # fixed exactly
        ("org.apache.logging.log4j:log4j-core", "2.16.0", False),
        ("org.apache.logging.log4j:log4j-core", "2.12.1", True),
        ("org.apache.logging.log4j:log4j-core", "2.12.2", False),
        ("org.apache.logging.log4j:log4j-core", "2.12.4", False),  # between two ranges
        ("org.apache.logging.log4j:log4j-core", "2.4", True),
        ("org.apache.logging.log4j:log4j-core", "2.3", True),
        ("org.apache.logging.log4j:log4j-core", "2.3.1", False),
        ("org.apache.logging.log4j:log4j-core", "2.0", True),
        ("org.apache.logging.log4j:log4j-core", "2.0-rc1", True),
        ("org.apache.logging.log4j:log4j-core", "2.0-beta9", True),
        ("org.apache.logging.log4j:log4j-core", "2.0-beta8", False),
        ("log4j:log4j", "1.2.17", False),  # another package
        ("org.apache.logging.log4j:log4j-api", "2.14.1", False),
    ],
)
def test_log4j_core_maven_ranges(name: str, version: str, expected: bool) -> None:
    assert affected(parse_record(LOG4J), "Maven", name, version) is expected


def test_log4j_record_in_another_ecosystem_does_not_match() -> None:
    assert not affected(parse_record(LOG4J), "npm", "org.apache.logging.log4j:log4j-core", "2.14.1")


@pytest.mark.parametrize(
    ("record", "ecosystem", "name", "version", "expected"),
    [
        # Two SEMVER ranges.
        (MINIMIST, "npm", "minimist", "0.0.8", True),
        (MINIMIST, "npm", "minimist", "0.2.4", False),
        (MINIMIST, "npm", "minimist", "0.2.5", False),
        (MINIMIST, "npm", "minimist", "1.2.5", True),
        (MINIMIST, "npm", "minimist", "1.2.6", False),
        # PEP 440 with name normalisation.
        (REQUESTS, "PyPI", "requests", "2.25.0", True),
        (REQUESTS, "PyPI", "Requests", "2.30.0", True),
        (REQUESTS, "PyPI", "requests", "2.31.0", False),
        (REQUESTS, "PyPI", "requests", "2.2.1", False),
        (REQUESTS, "PyPI", "requests", "2.31.0rc1", True),
        # A Debian 12 record, with the ~deb12u ordering.
        (OPENSSL_DEBIAN_12, "Debian:12", "openssl", "3.0.9-1", True),
        (OPENSSL_DEBIAN_12, "Debian:12", "openssl", "3.0.11-1~deb12u1", True),
        (OPENSSL_DEBIAN_12, "Debian:12", "openssl", "3.0.11-1~deb12u2", False),
        (OPENSSL_DEBIAN_12, "Debian:12", "openssl", "3.0.11-1", False),
        (OPENSSL_DEBIAN_12, "Debian:12", "openssl", "3.0.15-1~deb12u1", False),
        (OPENSSL_DEBIAN_12, "Debian:11", "openssl", "1.1.1n-0+deb11u5", False),
        (OPENSSL_DEBIAN_12, "Debian", "openssl", "3.0.9-1", False),  # release unknown
        (OPENSSL_DEBIAN_12, "Debian:12", "libssl3", "3.0.9-1", False),  # binary, not source
        (OPENSSL_DEBIAN_11, "Debian:11", "openssl", "1.1.1n-0+deb11u5", True),
        (OPENSSL_DEBIAN_11, "Debian:12", "openssl", "1.1.1n-0+deb11u5", False),
        # A record without a release covers every Debian release, and only Debian.
        (ZLIB_ANY_DEBIAN, "Debian:11", "zlib", "1:1.2.11.dfsg-2+deb11u2", True),
        (ZLIB_ANY_DEBIAN, "Debian:12", "zlib", "1:1.2.13.dfsg-1", False),
        (ZLIB_ANY_DEBIAN, "Debian:13", "zlib", "1:1.3.dfsg-3.1", False),
        (ZLIB_ANY_DEBIAN, "Ubuntu:22.04:LTS", "zlib", "1:1.2.11.dfsg-2ubuntu9.2", False),
        # last_affected is inclusive.
        (CURL_LAST_AFFECTED, "Debian:12", "curl", "7.64.0-4", False),
        (CURL_LAST_AFFECTED, "Debian:12", "curl", "7.74.0-1", True),
        (CURL_LAST_AFFECTED, "Debian:12", "curl", "7.88.1-10+deb12u5", True),
        (CURL_LAST_AFFECTED, "Debian:12", "curl", "7.88.1-10+deb12u6", False),
        # limit ends a range whatever its other events say; "*" is no limit.
        (LODASH_LIMITS, "npm", "lodash", "4.17.20", True),
        (LODASH_LIMITS, "npm", "lodash", "4.17.21", False),
        (LODASH_LIMITS, "npm", "lodash", "5.0.0", False),
        (LODASH_LIMITS, "npm", "lodash-es", "3.10.1", False),
        (LODASH_LIMITS, "npm", "lodash-es", "4.9.0", True),
        (LODASH_LIMITS, "npm", "lodash-es", "4.10.0", False),
        (LODASH_LIMITS, "npm", "lodash-es", "4.17.4", False),
        (LODASH_LIMITS, "npm", "lodash-es", "4.17.5", True),
        (LODASH_LIMITS, "npm", "lodash-es", "9.0.0", True),
        # versions[] alone.
        (URLLIB3_LISTED, "PyPI", "urllib3", "1.26.4", True),
        (URLLIB3_LISTED, "PyPI", "urllib3", "1.26.5", True),
        (URLLIB3_LISTED, "PyPI", "urllib3", "1.26.6", False),
        (URLLIB3_LISTED, "PyPI", "urllib3", "1.26.3", False),
        # A withdrawn record affects nothing.
        (OPENSSL_WITHDRAWN, "Debian:12", "openssl", "3.0.9-1", False),
        # GIT ranges are ignored; versions[] still counts. (An entry with only a GIT range
        # says nothing readable: see test_an_entry_with_nothing_to_evaluate_is_possibly_affected.)
        (ZLIB_GIT, "Debian:12", "libxml2", "2.9.14+dfsg-1.3~deb12u1", True),
        (ZLIB_GIT, "Debian:12", "libxml2", "2.9.14+dfsg-1.3~deb12u2", False),
        # Alpine: only the named release; -rN compares as a number; _git suffixes.
        (BUSYBOX_ALPINE, "Alpine:v3.19", "busybox", "1.36.1-r2", True),
        (BUSYBOX_ALPINE, "Alpine:v3.19", "busybox", "1.36.1-r15", True),
        (BUSYBOX_ALPINE, "Alpine:v3.19", "busybox", "1.36.1-r16", False),
        (BUSYBOX_ALPINE, "Alpine:v3.19", "busybox", "1.36.1-r20", False),
        (BUSYBOX_ALPINE, "Alpine:v3.18", "busybox", "1.36.1-r2", False),
        (BUSYBOX_ALPINE, "Alpine:v3.19", "openrc", "0.52.1-r0", True),
        (BUSYBOX_ALPINE, "Alpine:v3.19", "openrc", "0.52.1_git20231201-r0", True),
        (BUSYBOX_ALPINE, "Alpine:v3.19", "openrc", "0.52.1_git20240101-r0", False),
        (BUSYBOX_ALPINE, "Alpine:v3.19", "openrc", "0.52.1_git20240101-r1", False),
        # Ubuntu releases are ecosystems of their own, :LTS included.
        (OPENSSL_UBUNTU, "Ubuntu:22.04:LTS", "openssl", "3.0.2-0ubuntu1.10", True),
        (OPENSSL_UBUNTU, "Ubuntu:22.04:LTS", "openssl", "3.0.2-0ubuntu1.12", False),
        (OPENSSL_UBUNTU, "Ubuntu:24.04:LTS", "openssl", "3.0.2-0ubuntu1.10", False),
        (OPENSSL_UBUNTU, "Ubuntu:22.04", "openssl", "3.0.2-0ubuntu1.10", False),
        (OPENSSL_UBUNTU, "Ubuntu:Pro:22.04:LTS", "openssl", "3.0.2-0ubuntu1.10", False),
        # Events are walked in version order, not in the order written; Go's v and go1.x.
        (INTERVALS_UNSORTED, "Go", "stdlib", "go1.20.11", True),
        (INTERVALS_UNSORTED, "Go", "stdlib", "go1.20.12", False),
        (INTERVALS_UNSORTED, "Go", "stdlib", "go1.21rc2", True),  # "-0" takes in the rc's
        (INTERVALS_UNSORTED, "Go", "stdlib", "go1.21.0", True),
        (INTERVALS_UNSORTED, "Go", "stdlib", "go1.21.4", True),
        (INTERVALS_UNSORTED, "Go", "stdlib", "1.21.5", False),
        (INTERVALS_UNSORTED, "Go", "stdlib", "go1.22.0", False),
        (INTERVALS_UNSORTED, "Go", "golang.org/x/net", "v0.15.0", True),
        (INTERVALS_UNSORTED, "Go", "golang.org/x/net", "v0.17.0", False),
        (INTERVALS_UNSORTED, "Go", "golang.org/x/net", "v0.0.0-20210226172049-e18ecbb05110", True),
        # Introduced and fixed at the same version: nothing is affected.
        (EMPTY_RANGE, "PyPI", "jinja2", "3.1.3", False),
        (EMPTY_RANGE, "PyPI", "jinja2", "3.1.2", False),
    ],
)
def test_matcher(record: Record, ecosystem: str, name: str, version: str, expected: bool) -> None:
    assert affected(record, ecosystem, name, version) is expected


# --- Versions that cannot be compared ----------------------------------------------------


def test_an_unparsable_installed_version_cannot_be_compared() -> None:
    with pytest.raises(CannotCompareError) as raised:
        affected(OPENSSL_DEBIAN_12, "Debian:12", "openssl", "latest")
    error = raised.value
    assert (error.record_id, error.package, error.version) == (
        "TEST-2024-0001",
        "openssl",
        "latest",
    )
    assert isinstance(error.cause, InvalidVersionError)
    assert "TEST-2024-0001" in str(error)


def test_an_ecosystem_without_a_known_order_cannot_be_compared() -> None:
    record = _record(
        "TEST-2024-0013",
        _entry("Hackage", "aeson", _range(("introduced", "0"), ("fixed", "2.0.1.0"))),
    )
    with pytest.raises(CannotCompareError) as raised:
        affected(record, "Hackage", "aeson", "1.5.6.0")
    assert isinstance(raised.value.cause, UnsupportedEcosystemError)


def test_semver_ranges_need_no_ecosystem_order() -> None:
    record = _record(
        "TEST-2024-0014",
        _entry("Hackage", "aeson", _range(("introduced", "0"), ("fixed", "2.0.1"), kind="SEMVER")),
    )
    assert affected(record, "Hackage", "aeson", "1.5.6")
    assert not affected(record, "Hackage", "aeson", "2.0.1")


def test_an_unparsable_event_version_cannot_be_compared() -> None:
    record = _record(
        "TEST-2024-0015",
        _entry("Debian:12", "openssl", _range(("introduced", "0"), ("fixed", "<end-of-life>"))),
    )
    with pytest.raises(CannotCompareError):
        affected(record, "Debian:12", "openssl", "3.0.11-1")


def test_a_listed_version_matches_even_when_ranges_cannot_be_compared() -> None:
    record = _record(
        "TEST-2024-0016",
        _entry("Debian:12", "openssl", _range(("introduced", "0")), versions=["3.0.x-custom"]),
    )
    assert affected(record, "Debian:12", "openssl", "3.0.x-custom")


def test_another_range_that_matches_wins_over_one_that_cannot_be_compared() -> None:
    record = _record(
        "TEST-2024-0017",
        _entry(
            "Debian:12",
            "openssl",
            _range(("introduced", "0"), ("fixed", "<end-of-life>")),
            _range(("introduced", "3.0.0-1"), ("fixed", "3.0.11-1~deb12u2")),
        ),
    )
    assert affected(record, "Debian:12", "openssl", "3.0.9-1")
    with pytest.raises(CannotCompareError):
        affected(record, "Debian:12", "openssl", "3.0.15-1~deb12u1")


def test_records_for_other_packages_are_not_compared_at_all() -> None:
    record = _record(
        "TEST-2024-0018",
        _entry("Debian:12", "openssl", _range(("introduced", "0"), ("fixed", "<end-of-life>"))),
    )
    assert not affected(record, "Debian:12", "zlib", "1:1.2.13.dfsg-1")
    assert not affected(record, "Debian:11", "openssl", "3.0.9-1")


# --- Ecosystems --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record_ecosystem", "package_ecosystem", "expected"),
    [
        ("Debian:12", "Debian:12", True),
        ("Debian:12", "Debian:11", False),
        ("Debian:12", "Debian", False),
        ("Debian", "Debian:12", True),
        ("Debian", "Debian", True),
        ("Debian", "Ubuntu:22.04:LTS", False),
        ("Alpine:v3.19", "Alpine:v3.19", True),
        ("Alpine:v3.19", "Alpine:v3.20", False),
        ("Ubuntu:22.04:LTS", "Ubuntu:22.04:LTS", True),
        ("Ubuntu:22.04:LTS", "Ubuntu:Pro:22.04:LTS", False),
        ("Ubuntu", "Ubuntu:Pro:18.04:LTS", True),
        ("PyPI", "PyPI", True),
        ("PyPI", "pypi", False),
        ("Red Hat:enterprise_linux:9::appstream", "Red Hat:enterprise_linux:9::baseos", False),
    ],
)
def test_ecosystem_applies(record_ecosystem: str, package_ecosystem: str, expected: bool) -> None:
    assert ecosystem_applies(record_ecosystem, package_ecosystem) is expected


# --- Parsing -----------------------------------------------------------------------------


def test_parse_keeps_what_matching_and_rating_need() -> None:
    record = parse_record(LOG4J)
    assert record.id == "GHSA-jfh8-c2jp-5v3q"
    assert record.aliases == ("CVE-2021-44228",)
    assert record.modified == datetime(2024, 2, 16, 8, 12, 56, tzinfo=UTC)
    assert record.published == datetime(2021, 12, 10, 0, 40, 56, tzinfo=UTC)
    assert record.withdrawn is None
    assert record.summary == "Remote code injection in Log4j"
    assert record.severity[0].type == "CVSS_V3"
    assert record.database_severities == ("CRITICAL",)
    (entry,) = record.affected
    assert entry.package is not None
    assert entry.package.purl == "pkg:maven/org.apache.logging.log4j/log4j-core"
    assert [version_range.type for version_range in entry.ranges] == [RangeType.ECOSYSTEM] * 3
    assert entry.ranges[0].events == (
        Event(EventKind.INTRODUCED, "2.13.0"),
        Event(EventKind.FIXED, "2.15.0"),
    )


def test_parse_reads_distribution_severity_words_and_upstream_ids() -> None:
    record = parse_record(
        {
            "id": "DEBIAN-CVE-2023-5363",
            "modified": "2024-09-03T00:00:00.123456789Z",
            "upstream": ["CVE-2023-5363"],
            "affected": [
                {
                    "package": {"ecosystem": "Debian:12", "name": "openssl"},
                    "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}]}],
                    "ecosystem_specific": {"urgency": "not yet assigned"},
                    "database_specific": {"severity": "HIGH"},
                }
            ],
        }
    )
    assert record.upstream == ("CVE-2023-5363",)
    assert record.modified == datetime(2024, 9, 3, 0, 0, 0, 123456, tzinfo=UTC)
    assert record.affected[0].database_severities == ("HIGH", "not yet assigned")


def test_timestamps_with_an_offset_are_kept_in_utc() -> None:
    record = parse_record({"id": "TEST-2024-0019", "modified": "2024-05-01T14:00:00+02:00"})
    assert record.modified == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert record.affected == ()


def test_optional_fields_may_be_null_or_empty() -> None:
    record = parse_record(
        {
            "id": "TEST-2024-0020",
            "modified": "2024-05-01T12:00:00Z",
            "withdrawn": None,
            "summary": "",
            "aliases": None,
            "affected": [{"package": {"ecosystem": "npm", "name": "left-pad", "purl": ""}}],
        }
    )
    assert record.summary == ""
    assert record.aliases == ()
    assert record.affected[0].package is not None
    assert record.affected[0].package.purl is None


def _broken(path: tuple[str | int, ...], value: Any) -> Document:
    """LOG4J with the value at `path` replaced (or removed, for `...`)."""
    document = copy.deepcopy(LOG4J)
    parent: Any = document
    for key in path[:-1]:
        parent = parent[key]
    if value is ...:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return document


RANGE = ("affected", 0, "ranges", 0)

MALFORMED: list[tuple[Document, str]] = [
    (_broken(("modified",), ...), "modified must be an RFC 3339 timestamp"),
    (_broken(("modified",), "yesterday"), "modified must be an RFC 3339 timestamp"),
    (_broken(("modified",), "2021-12-10T00:40:56"), "modified must be an RFC 3339 timestamp"),
    (_broken(("modified",), "2021-13-45T00:40:56Z"), "modified is not a valid date and time"),
    (_broken(("affected",), {}), "affected must be a list"),
    (_broken(("affected",), ["log4j"]), "affected[0] must be an object"),
    (_broken(("affected", 0, "package", "ecosystem"), ...), "affected[0].package.ecosystem must"),
    (_broken(("affected", 0, "package", "name"), 7), "affected[0].package.name must"),
]

# Parts of an affected entry that cannot be read: the record is kept, the entry says why, and
# the package it names is possibly affected rather than silently not affected.
UNREADABLE: list[tuple[Document, str]] = [
    (_broken((*RANGE, "type"), "SEMVERISH"), "affected[0].ranges[0].type must be one of"),
    (_broken((*RANGE, "events"), []), "affected[0].ranges[0].events must include an introduced"),
    (_broken((*RANGE, "events"), ...), "affected[0].ranges[0].events must include an introduced"),
    (_broken((*RANGE, "events"), "2.13.0"), "affected[0].ranges[0].events must be a list"),
    (
        _broken((*RANGE, "events", 0), {"introduced": "2.13.0", "fixed": "2.15.0"}),
        "affected[0].ranges[0].events[0] must hold exactly one of",
    ),
    (
        _broken((*RANGE, "events", 1), {"patched": "2.15.0"}),
        "affected[0].ranges[0].events[1] has an unknown event 'patched'",
    ),
    (
        _broken((*RANGE, "events", 1), {"fixed": 2.15}),
        "affected[0].ranges[0].events[1].fixed must be a non-empty string",
    ),
    (
        _broken((*RANGE, "events", 1), {"fixed": ""}),
        "affected[0].ranges[0].events[1].fixed must be a non-empty string",
    ),
    (
        _broken((*RANGE, "events"), [{"fixed": "2.15.0"}]),
        "affected[0].ranges[0].events must include an introduced event",
    ),
    (
        _broken(
            (*RANGE, "events"),
            [{"introduced": "0"}, {"fixed": "2.15.0"}, {"last_affected": "2.14.1"}],
        ),
        "must not mix fixed and last_affected",
    ),
    (_broken(("affected", 0, "ranges"), "2.13.0"), "affected[0].ranges must be a list"),
    (_broken(("affected", 0, "versions"), ["2.14.1", 2]), "affected[0].versions[1] must be"),
]


@pytest.mark.parametrize(("document", "reason"), UNREADABLE)
def test_an_unreadable_range_makes_the_package_possibly_affected(
    document: Document, reason: str
) -> None:
    record = parse_record(document)
    assert any(reason in why for why in record.affected[0].unreadable)
    # No readable range contains 2.15.0, but the unreadable part might.
    with pytest.raises(CannotCompareError) as raised:
        affected(record, "Maven", "org.apache.logging.log4j:log4j-core", "2.15.0")
    assert "unreadable" in str(raised.value)
    # Another package is still not affected, and a range that says "affected" still does.
    assert not affected(record, "Maven", "org.apache.logging.log4j:log4j-api", "2.14.1")


@pytest.mark.parametrize(
    ("document", "check"),
    [
        # An unreadable withdrawal does not withdraw the record.
        (_broken(("withdrawn",), "soon"), lambda record: record.withdrawn is None),
        (_broken(("aliases",), "CVE-2021-44228"), lambda record: record.aliases == ()),
        (
            _broken(("aliases",), [44228, "CVE-2021-44228"]),
            lambda record: record.aliases == ("CVE-2021-44228",),
        ),
        (_broken(("severity",), [{"type": "CVSS_V3"}]), lambda record: record.severity == ()),
        (_broken(("summary",), 12), lambda record: record.summary == ""),
    ],
)
def test_informative_fields_that_cannot_be_read_do_not_cost_the_record(
    document: Document, check: Any
) -> None:
    record = parse_record(document)
    assert check(record)
    assert affected(record, "Maven", "org.apache.logging.log4j:log4j-core", "2.14.1")


def test_a_git_range_without_its_repo_is_ignored_like_any_git_range() -> None:
    record = parse_record(_broken(RANGE, {"type": "GIT", "events": [{"introduced": "0"}]}))
    assert record.affected[0].ranges[0].type is RangeType.GIT
    assert record.affected[0].unreadable == ()


def test_an_entry_with_nothing_to_evaluate_is_possibly_affected() -> None:
    only_git = parse_record(
        _broken(
            ("affected", 0),
            {
                "package": {"ecosystem": "Maven", "name": "org.apache.logging.log4j:log4j-core"},
                "ranges": [
                    {
                        "type": "GIT",
                        "repo": "https://example.invalid/r",
                        "events": [{"introduced": "0"}],
                    }
                ],
            },
        )
    )
    with pytest.raises(CannotCompareError):
        affected(only_git, "Maven", "org.apache.logging.log4j:log4j-core", "2.14.1")
    bare = parse_record(
        _broken(("affected", 0), {"package": {"ecosystem": "npm", "name": "left-pad"}})
    )
    with pytest.raises(CannotCompareError):
        affected(bare, "npm", "left-pad", "1.3.0")
    assert not affected(bare, "npm", "right-pad", "1.3.0")


@pytest.mark.parametrize(("document", "reason"), MALFORMED)
def test_malformed_records_are_rejected_with_a_reason(document: Document, reason: str) -> None:
    with pytest.raises(MalformedRecordError) as raised:
        parse_record(document)
    assert reason in raised.value.reason
    assert raised.value.record_id == "GHSA-jfh8-c2jp-5v3q"
    assert str(raised.value).startswith("GHSA-jfh8-c2jp-5v3q: ")


@pytest.mark.parametrize(
    "document",
    [
        [],
        "GHSA-jfh8-c2jp-5v3q",
        None,
        _broken(("id",), ...),
        _broken(("id",), ""),
        _broken(("id",), 12),
        _broken(("id",), "GHSA jfh8"),
        _broken(("id",), "G" * 256),
    ],
)
def test_records_without_a_usable_id_are_rejected(document: object) -> None:
    with pytest.raises(MalformedRecordError) as raised:
        parse_record(document)
    assert raised.value.record_id is None


@pytest.mark.parametrize("text", ["", "{", "[1, 2", "\x00", "[" * 100_000])
def test_text_that_is_not_json_is_rejected(text: str) -> None:
    with pytest.raises(MalformedRecordError):
        load_record(text)


def test_load_record_reads_json_text_and_bytes() -> None:
    assert load_record(json.dumps(LOG4J)).id == "GHSA-jfh8-c2jp-5v3q"
    assert load_record(json.dumps(LOG4J).encode()).id == "GHSA-jfh8-c2jp-5v3q"


def test_parse_records_skips_the_bad_record_and_keeps_the_rest() -> None:
    bad = _broken(("modified",), "yesterday")
    good_too = {"id": "TEST-2024-0021", "modified": "2024-05-01T12:00:00Z"}
    outcome = parse_records([LOG4J, bad, "not a record", good_too])
    assert [record.id for record in outcome.records] == ["GHSA-jfh8-c2jp-5v3q", "TEST-2024-0021"]
    assert [(item.record_id, item.reason[:30]) for item in outcome.rejected] == [
        ("GHSA-jfh8-c2jp-5v3q", "modified must be an RFC 3339 t"),
        (None, "the record must be an object"),
    ]


# --- Bounds written the way the ecosystem's tooling writes them --------------------------

NODE_FETCH = _record(
    "GHSA-r683-j2x4-v87g",
    _entry(
        "npm",
        "node-fetch",
        _range(("introduced", "0"), ("fixed", "2.6.7"), kind="SEMVER"),
        _range(("introduced", "3.0.0"), ("fixed", "3.1.1"), kind="SEMVER"),
    ),
)
# The record as published once: its range starts at "1.0", which is not strict SemVer.
NODE_FETCH_SHORT_BOUND = _record(
    "GHSA-r683-j2x4-v87g",
    _entry("npm", "node-fetch", _range(("introduced", "1.0"), ("fixed", "3.1.1"), kind="SEMVER")),
)


@pytest.mark.parametrize(
    ("record", "ecosystem", "name", "version", "expected"),
    [
        (NODE_FETCH_SHORT_BOUND, "npm", "node-fetch", "3.1.0", True),
        (NODE_FETCH_SHORT_BOUND, "npm", "node-fetch", "1.0.0", True),
        (NODE_FETCH_SHORT_BOUND, "npm", "node-fetch", "0.9.9", False),
        (NODE_FETCH_SHORT_BOUND, "npm", "node-fetch", "3.1.1", False),
        (NODE_FETCH_SHORT_BOUND, "npm", "node-fetch", "v3.1.0", True),  # as package.json may say
        (NODE_FETCH, "npm", "node-fetch", "3.1", True),
        (
            _record(
                "TEST-CARGO",
                _entry(
                    "crates.io",
                    "smallvec",
                    _range(("introduced", "1.0"), ("fixed", "1.6.1"), kind="SEMVER"),
                ),
            ),
            "crates.io",
            "smallvec",
            "1.6.0",
            True,
        ),
        (
            _record(
                "TEST-GO-SHORT",
                _entry(
                    "Go",
                    "golang.org/x/text",
                    _range(("introduced", "0"), ("fixed", "0.3"), kind="SEMVER"),
                ),
            ),
            "Go",
            "golang.org/x/text",
            "v0.2.9",
            True,
        ),
        (
            _record(
                "TEST-PYPI-V",
                _entry("PyPI", "django", _range(("introduced", "v4.0"), ("fixed", "4.2.1"))),
            ),
            "PyPI",
            "Django",
            "4.2",
            True,
        ),
    ],
)
def test_bounds_are_coerced_as_the_ecosystem_does(
    record: Record, ecosystem: str, name: str, version: str, expected: bool
) -> None:
    assert affected(record, ecosystem, name, version) is expected


@pytest.mark.parametrize(
    "events",
    [
        [("introduced", "not-a-version"), ("fixed", "3.1.1")],
        [("introduced", "0"), ("fixed", "three")],
        [("introduced", "0"), ("last_affected", "3.x")],
        [("introduced", "0"), ("limit", "~3")],
        [("introduced", "1.2.3.4"), ("fixed", "3.1.1")],
    ],
)
def test_an_unreadable_bound_is_possibly_affected_never_not_affected(
    events: list[tuple[str, str]],
) -> None:
    record = _record("TEST-BOUND", _entry("npm", "node-fetch", _range(*events, kind="SEMVER")))
    with pytest.raises(CannotCompareError) as raised:
        affected(record, "npm", "node-fetch", "3.1.0")
    assert raised.value.record_id == "TEST-BOUND"


def test_a_readable_range_that_says_affected_wins_over_an_unreadable_one() -> None:
    record = _record(
        "TEST-MIXED",
        _entry(
            "npm",
            "node-fetch",
            _range(("introduced", "junk"), ("fixed", "1.0.0"), kind="SEMVER"),
            _range(("introduced", "3.0.0"), ("fixed", "3.1.1"), kind="SEMVER"),
        ),
    )
    assert affected(record, "npm", "node-fetch", "3.1.0")
