"""The pure rules of promotion: references, gate configuration, gate results, the record."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest

from moorage.config import ConfigError, load_settings
from moorage.domain.promotion import (
    DestinationReference,
    Gate,
    GateError,
    GateKind,
    GateResult,
    PromotionReferenceError,
    SourceReference,
    age_result,
    canonical_json,
    envelope,
    label_result,
    make_gate,
    pae,
    parse_destination,
    parse_source,
    preceding_stage,
    source_stage_result,
    statement,
    validate_gates,
)

DIGEST = "sha256:" + "ab" * 32
NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
MAX_GATES = 20  # docs/staging.md: "A project has at most 20 gates"
ORDER = ("dev", "staging", "prod")


def test_sources_are_tags_or_digests_and_destinations_are_tags() -> None:
    assert parse_source("dev/app:v1") == SourceReference("dev/app", tag="v1")
    assert parse_source(f"dev/team/app@{DIGEST}") == SourceReference("dev/team/app", digest=DIGEST)
    assert parse_destination("prod/app:1.0") == DestinationReference("prod/app", "1.0")
    assert str(parse_source(f"dev/app@{DIGEST}")) == f"dev/app@{DIGEST}"
    for bad in ("dev/app", "dev/app@sha256:12", "Dev/app:v1", "dev/app:", "dev/app:a/b"):
        with pytest.raises(PromotionReferenceError):
            parse_source(bad)
    for bad in (f"prod/app@{DIGEST}", "prod/app", "prod/app:bad tag"):
        with pytest.raises(PromotionReferenceError):
            parse_destination(bad)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"kind": "nope"}, "unknown gate kind"),
        ({"kind": "scan", "count": 2}, "a scan gate has no count"),
        ({"kind": "age"}, "needs minHours, maxDays or both"),
        ({"kind": "age", "min_hours": 48, "max_days": 1}, "shorter than maxDays"),
        ({"kind": "label"}, "needs a key"),
        ({"kind": "approval", "role": "maintainer"}, "count between 1 and 10"),
        ({"kind": "approval", "count": 11, "role": "maintainer"}, "count between 1 and 10"),
        ({"kind": "approval", "count": 1}, "the role"),
        ({"kind": "signature", "name": "Bad Name"}, "gate name"),
    ],
)
def test_gate_configuration_is_validated(fields: dict[str, object], message: str) -> None:
    with pytest.raises(GateError, match=message):
        make_gate(fields)


def test_gate_names_default_to_the_kind_and_must_differ() -> None:
    gate = make_gate({"kind": "source-stage"})
    assert gate.name == "source-stage"
    with pytest.raises(GateError, match="appears twice"):
        validate_gates([gate, make_gate({"kind": "source-stage"})])
    with pytest.raises(GateError, match=f"at most {MAX_GATES}"):
        validate_gates([make_gate({"kind": "scan", "name": f"g{i}"}) for i in range(21)])
    described = make_gate({"kind": "approval", "count": 2, "role": "maintainer"}).describe()
    assert described == {
        "kind": "approval",
        "name": "approval",
        "count": 2,
        "role": "maintainer",
        "allow_requester": False,
    }
    assert make_gate(described) == make_gate({"kind": "approval", "count": 2, "role": "maintainer"})


def test_stage_order() -> None:
    assert preceding_stage(ORDER, "prod") == "staging"
    assert preceding_stage(ORDER, "dev") is None
    assert preceding_stage(ORDER, "qa") is None
    gate = make_gate({"kind": "source-stage"})
    assert source_stage_result(gate, ORDER, "staging", "prod").passed
    assert not source_stage_result(gate, ORDER, "dev", "prod").passed
    assert "first stage" in source_stage_result(gate, ORDER, None, "dev").reason
    assert "no stage" in source_stage_result(gate, ORDER, "dev", None).reason
    assert "not in the configured order" in source_stage_result(gate, ORDER, "dev", "qa").reason


@pytest.mark.parametrize(
    ("age", "min_hours", "max_days", "passes"),
    [
        (timedelta(hours=30), 24, None, True),
        (timedelta(hours=3), 24, None, False),
        (timedelta(days=2), None, 7, True),
        (timedelta(days=9), None, 7, False),
        (timedelta(days=3), 24, 7, True),
        (timedelta(hours=1), 0, None, True),
    ],
)
def test_age_gate_bounds(
    age: timedelta, min_hours: int | None, max_days: int | None, passes: bool
) -> None:
    gate = make_gate({"kind": "age", "min_hours": min_hours, "max_days": max_days})
    assert age_result(gate, NOW - age, NOW).passed is passes
    naive = (NOW - age).replace(tzinfo=None)
    assert age_result(gate, naive, NOW).passed is passes
    assert not age_result(gate, None, NOW).passed


def test_label_gate_looks_at_annotations_then_labels() -> None:
    presence = make_gate({"kind": "label", "key": "qa"})
    exact = make_gate({"kind": "label", "key": "qa", "value": "passed"})
    on_config = [("manifest", {}), ("image configuration", {"qa": "passed"})]
    assert label_result(presence, on_config).passed
    assert label_result(exact, on_config).reason == "qa=passed on the image configuration"
    wrong = label_result(exact, [("manifest", {"qa": "failed"})])
    assert not wrong.passed
    assert "found qa=failed on the manifest" in wrong.reason
    assert not label_result(presence, [("manifest", {"other": "x"})]).passed


def test_the_statement_and_its_envelope() -> None:
    results = [GateResult("scan", GateKind.SCAN, True, "clean")]
    document = statement(
        destination=DestinationReference("prod/app", "1.0"),
        source=SourceReference("staging/app", tag="rc1"),
        digest=DIGEST,
        media_type="application/vnd.oci.image.manifest.v1+json",
        results=results,
        requester={"name": "lead", "kind": "user"},
        at=NOW,
        linked=["sha256:" + "cd" * 32],
    )
    assert document["_type"] == "https://in-toto.io/Statement/v1"
    assert document["subject"] == [{"name": "prod/app", "digest": {"sha256": "ab" * 32}}]
    assert document["predicate"]["promotedAt"] == "2026-12-06T12:00:00Z"
    assert document["predicate"]["gates"] == [
        {"name": "scan", "kind": "scan", "passed": True, "reason": "clean"}
    ]
    payload = canonical_json(document)
    assert json.loads(payload) == document
    signed = envelope(payload, "KID", "c2ln")
    assert base64.b64decode(signed["payload"]) == payload
    assert signed["signatures"] == [{"keyid": "KID", "sig": "c2ln"}]
    assert pae("a/b", b"xyz") == b"DSSEv1 3 a/b 3 xyz"


def test_gate_defaults() -> None:
    assert Gate(GateKind.SIGNATURE, "signature").describe() == {
        "kind": "signature",
        "name": "signature",
    }


def test_the_stage_order_setting() -> None:
    assert load_settings(environ={}).stages == ["dev", "staging", "prod"]
    assert load_settings(environ={"MOORAGE_STAGES": "build, test,live"}).stages == [
        "build",
        "test",
        "live",
    ]
    assert load_settings(environ={"MOORAGE_PROMOTION_BREAK_GLASS": "true"}).promotion_break_glass
    with pytest.raises(ConfigError, match="stages"):
        load_settings(environ={"MOORAGE_STAGES": "dev,dev"})
    with pytest.raises(ConfigError, match="stages"):
        load_settings(environ={"MOORAGE_STAGES": "Dev!"})
