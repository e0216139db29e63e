"""Severity: its order with Unknown kept apart, CVSS scores, database words, the rating order."""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moorage.vulnerability.osv import Record, parse_record
from moorage.vulnerability.severity import (
    UNRATED,
    CvssScore,
    RatingSource,
    Severity,
    UnknownSeverityError,
    rate,
    score_vector,
    severity_from_label,
    worst,
)

LOG4J_VECTOR = "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:C/C:H/I:H/A:H"
MEDIUM_VECTOR = "CVSS:3.1/AV:N/AC:H/PR:N/UI:N/S:U/C:N/I:N/A:H"
V4_VECTOR = "CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:H/VA:H/SC:N/SI:N/SA:N"


def test_known_severities_are_ordered() -> None:
    ordered = [Severity.NONE, Severity.LOW, Severity.MEDIUM, Severity.HIGH, Severity.CRITICAL]
    assert sorted(reversed(ordered)) == ordered
    assert Severity.LOW < Severity.HIGH <= Severity.HIGH < Severity.CRITICAL
    assert Severity.CRITICAL > Severity.MEDIUM >= Severity.NONE
    assert [severity.rank for severity in ordered] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("compare", [operator.lt, operator.le, operator.gt, operator.ge])
@pytest.mark.parametrize("other", list(Severity))
def test_unknown_cannot_be_ordered(compare: Callable[[Any, Any], bool], other: Severity) -> None:
    with pytest.raises(UnknownSeverityError):
        compare(Severity.UNKNOWN, other)
    with pytest.raises(UnknownSeverityError):
        compare(other, Severity.UNKNOWN)


def test_unknown_is_still_equal_to_itself_and_not_to_others() -> None:
    assert Severity.UNKNOWN == Severity.UNKNOWN
    assert Severity.UNKNOWN != Severity.NONE
    assert not Severity.UNKNOWN.is_known
    assert {Severity.UNKNOWN: "kept"}[Severity.UNKNOWN] == "kept"


def test_severities_do_not_order_against_strings() -> None:
    with pytest.raises(TypeError):
        operator.lt(Severity.HIGH, "Low")


@pytest.mark.parametrize(
    ("severity", "threshold", "unknown_as", "expected"),
    [
        (Severity.HIGH, Severity.HIGH, Severity.UNKNOWN, True),
        (Severity.CRITICAL, Severity.LOW, Severity.UNKNOWN, True),
        (Severity.MEDIUM, Severity.HIGH, Severity.UNKNOWN, False),
        (Severity.NONE, Severity.LOW, Severity.UNKNOWN, False),
        (Severity.UNKNOWN, Severity.LOW, Severity.UNKNOWN, False),
        (Severity.UNKNOWN, Severity.HIGH, Severity.CRITICAL, True),
        (Severity.UNKNOWN, Severity.HIGH, Severity.MEDIUM, False),
        (Severity.LOW, Severity.HIGH, Severity.CRITICAL, False),  # only Unknown is mapped
    ],
)
def test_meets_a_threshold(
    severity: Severity, threshold: Severity, unknown_as: Severity, expected: bool
) -> None:
    assert severity.meets(threshold, unknown_as=unknown_as) is expected


def test_a_threshold_must_be_known() -> None:
    with pytest.raises(UnknownSeverityError):
        Severity.HIGH.meets(Severity.UNKNOWN, unknown_as=Severity.HIGH)


@pytest.mark.parametrize(
    ("severities", "expected"),
    [
        ([], Severity.NONE),
        ([Severity.NONE], Severity.NONE),
        ([Severity.LOW, Severity.CRITICAL, Severity.HIGH], Severity.CRITICAL),
        ([Severity.UNKNOWN], Severity.UNKNOWN),
        ([Severity.NONE, Severity.UNKNOWN], Severity.UNKNOWN),
        ([Severity.UNKNOWN, Severity.LOW], Severity.LOW),
    ],
)
def test_worst(severities: list[Severity], expected: Severity) -> None:
    assert worst(severities) is expected
    assert worst(iter(severities)) is expected


@pytest.mark.parametrize(
    ("kind", "vector", "score", "severity"),
    [
        ("CVSS_V3", LOG4J_VECTOR, 10.0, Severity.CRITICAL),
        ("CVSS_V3", "CVSS:3.0/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H", 9.8, Severity.CRITICAL),
        ("CVSS_V3", MEDIUM_VECTOR, 5.9, Severity.MEDIUM),
        ("CVSS_V3", "CVSS:3.1/AV:L/AC:H/PR:H/UI:R/S:U/C:L/I:N/A:N", 1.8, Severity.LOW),
        ("CVSS_V3", "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:N", 0.0, Severity.NONE),
        # The base score rates the finding; temporal metrics do not lower it.
        ("CVSS_V3", "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H/E:U", 9.8, Severity.CRITICAL),
        ("CVSS_V4", V4_VECTOR, 9.3, Severity.CRITICAL),
        (
            "CVSS_V4",
            "CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:L/VI:N/VA:N/SC:N/SI:N/SA:N",
            6.9,
            Severity.MEDIUM,
        ),
        ("CVSS_V2", "AV:N/AC:L/Au:N/C:C/I:C/A:C", 10.0, Severity.HIGH),  # v2 has no Critical
        ("CVSS_V2", "AV:N/AC:L/Au:N/C:P/I:N/A:N", 5.0, Severity.MEDIUM),
    ],
)
def test_score_vector(kind: str, vector: str, score: float, severity: Severity) -> None:
    assert score_vector(kind, vector) == CvssScore(score, severity, vector)


@pytest.mark.parametrize(
    ("kind", "vector"),
    [
        ("CVSS_V3", ""),
        ("CVSS_V3", "garbage"),
        ("CVSS_V3", "CVSS:3.1/AV:N"),
        ("CVSS_V3", "CVSS:3.1/AV:X/AC:L/PR:N/UI:N/S:C/C:H/I:H/A:H"),
        ("CVSS_V3", V4_VECTOR),  # the type and the vector must agree
        ("CVSS_V4", LOG4J_VECTOR),
        ("Ubuntu", "high"),
        ("CVSS_V5", LOG4J_VECTOR),
    ],
)
def test_vectors_that_do_not_score_give_none(kind: str, vector: str) -> None:
    assert score_vector(kind, vector) is None


_VECTOR_PIECES = ["CVSS:3.1/", "CVSS:4.0/", "AV:N", "/", "AC:L", "PR:", "S:C", "C:H", ":", "X"]


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["CVSS_V2", "CVSS_V3", "CVSS_V4"]),
    st.one_of(st.text(max_size=60), st.lists(st.sampled_from(_VECTOR_PIECES)).map("".join)),
)
def test_scoring_never_raises(kind: str, vector: str) -> None:
    scored = score_vector(kind, vector)
    assert scored is None or 0.0 <= scored.score <= 10.0


@pytest.mark.parametrize(
    ("label", "severity"),
    [
        ("CRITICAL", Severity.CRITICAL),
        ("HIGH", Severity.HIGH),
        ("MODERATE", Severity.MEDIUM),
        ("LOW", Severity.LOW),
        ("Important", Severity.HIGH),
        ("Moderate", Severity.MEDIUM),
        (" medium ", Severity.MEDIUM),
        ("negligible", Severity.LOW),
        ("unimportant", Severity.LOW),
        ("none", Severity.NONE),
        ("untriaged", Severity.UNKNOWN),
        ("not yet assigned", Severity.UNKNOWN),
        ("end-of-life", Severity.UNKNOWN),
        ("", Severity.UNKNOWN),
    ],
)
def test_severity_from_label(label: str, severity: Severity) -> None:
    assert severity_from_label(label) is severity


# --- The rating order --------------------------------------------------------------------


def _record(record_id: str, **fields: Any) -> Record:
    return parse_record({"id": record_id, "modified": "2024-05-01T12:00:00Z", **fields})


def _debian_openssl(**entry_fields: Any) -> dict[str, Any]:
    return {
        "package": {"ecosystem": "Debian:12", "name": "openssl"},
        "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}]}],
        **entry_fields,
    }


GHSA_LOG4J = _record(
    "GHSA-jfh8-c2jp-5v3q",
    aliases=["CVE-2021-44228"],
    severity=[{"type": "CVSS_V3", "score": LOG4J_VECTOR}],
    database_specific={"severity": "CRITICAL"},
)


def test_a_vector_on_the_record_rates_it() -> None:
    rating = rate(GHSA_LOG4J)
    assert rating.severity is Severity.CRITICAL
    assert rating.source is RatingSource.CVSS
    assert (rating.score, rating.vector, rating.record_id) == (
        10.0,
        LOG4J_VECTOR,
        "GHSA-jfh8-c2jp-5v3q",
    )


def test_the_matched_package_severity_comes_before_the_record_severity() -> None:
    record = _record(
        "TEST-2024-0101",
        severity=[{"type": "CVSS_V3", "score": LOG4J_VECTOR}],
        affected=[_debian_openssl(severity=[{"type": "CVSS_V3", "score": MEDIUM_VECTOR}])],
    )
    assert rate(record, record.affected[0]).severity is Severity.MEDIUM


def test_cvss_v3_is_preferred_over_v4_and_v4_used_alone() -> None:
    both = _record(
        "TEST-2024-0102",
        severity=[
            {"type": "CVSS_V4", "score": V4_VECTOR},
            {"type": "CVSS_V3", "score": MEDIUM_VECTOR},
        ],
    )
    assert rate(both).score == 5.9
    only_v4 = _record("TEST-2024-0103", severity=[{"type": "CVSS_V4", "score": V4_VECTOR}])
    assert rate(only_v4).score == 9.3


def test_an_invalid_vector_is_passed_over() -> None:
    record = _record(
        "TEST-2024-0104",
        severity=[{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N"}],
        database_specific={"severity": "MODERATE"},
    )
    rating = rate(record)
    assert (rating.severity, rating.source) == (Severity.MEDIUM, RatingSource.DATABASE)


def test_a_debian_record_borrows_cvss_from_its_alias() -> None:
    record = _record(
        "DEBIAN-CVE-2021-44228",
        upstream=["CVE-2021-44228"],
        affected=[_debian_openssl(ecosystem_specific={"urgency": "low"})],
    )
    rating = rate(record, record.affected[0], aliases=[GHSA_LOG4J])
    assert (rating.severity, rating.source, rating.record_id) == (
        Severity.CRITICAL,
        RatingSource.ALIAS_CVSS,
        "GHSA-jfh8-c2jp-5v3q",
    )


def test_without_cvss_the_database_word_rates_the_record() -> None:
    record = _record(
        "DEBIAN-CVE-2023-5363",
        affected=[_debian_openssl(ecosystem_specific={"urgency": "low"})],
    )
    rating = rate(record, record.affected[0])
    assert (rating.severity, rating.source, rating.score) == (
        Severity.LOW,
        RatingSource.DATABASE,
        None,
    )


def test_words_that_rate_nothing_are_passed_over() -> None:
    record = _record(
        "DEBIAN-CVE-2023-5363",
        affected=[_debian_openssl(ecosystem_specific={"urgency": "not yet assigned"})],
    )
    assert rate(record, record.affected[0]) == UNRATED
    alias = _record("GHSA-0000-0000-0000", database_specific={"severity": "HIGH"})
    rating = rate(record, record.affected[0], aliases=[alias])
    assert (rating.severity, rating.record_id) == (Severity.HIGH, "GHSA-0000-0000-0000")


def test_ubuntu_priority_rates_the_record() -> None:
    record = _record(
        "UBUNTU-CVE-2023-5363",
        severity=[{"type": "Ubuntu", "score": "medium"}],
        affected=[_debian_openssl()],
    )
    assert rate(record).severity is Severity.MEDIUM


def test_each_release_keeps_its_own_word() -> None:
    record = _record(
        "DEBIAN-CVE-2024-2398",
        affected=[
            {
                "package": {"ecosystem": "Debian:11", "name": "curl"},
                "ecosystem_specific": {"urgency": "unimportant"},
            },
            {
                "package": {"ecosystem": "Debian:12", "name": "curl"},
                "ecosystem_specific": {"urgency": "high"},
            },
        ],
    )
    assert rate(record, record.affected[0]).severity is Severity.LOW
    assert rate(record, record.affected[1]).severity is Severity.HIGH


def test_nothing_to_go_on_is_unrated() -> None:
    rating = rate(_record("TEST-2024-0105"))
    assert rating == UNRATED
    assert (rating.severity, rating.source) == (Severity.UNKNOWN, RatingSource.NONE)
