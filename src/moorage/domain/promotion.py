"""Promotion between stages, as pure rules: stage order, gates, references and the record.

A project may carry a stage label (`dev`, `staging`, `prod`: free-form, ordered by the `stages`
setting) and be promotion-only. An image reaches a promotion-only project only by promotion: an
exact digest, linked from another repository after the destination project's gates passed.

Gates are named checks; each yields a `GateResult` (passed or not, and why). Their kinds:

- `scan`: no vulnerability at or above a severity (the project's allowlists apply);
- `signature`: the destination's trust policy is satisfied by the source's signatures;
- `source-stage`: the source project's stage immediately precedes the destination's;
- `age`: the manifest has been in the source repository at least `minHours` and at most
  `maxDays`;
- `label`: an annotation of the manifest (or a label of its image configuration) is present,
  optionally with a given value;
- `approval`: `count` distinct users holding `role` in the destination project approved the
  digest before the promotion (the requester's own approval counts only with `allowRequester`).

Besides the configured gates, every promotion satisfies the source project's own pull policies
(results of kind `source-policy`), unless a `scan` or `signature` gate with
`replaceSourcePolicy` re-judges in their place.

What is promoted is recorded as an in-toto Statement v1 whose predicate says what moved where,
which gates ran with which results, who asked and when; the registry signs it as a DSSE envelope.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Final

from moorage.domain.digest import Digest
from moorage.domain.errors import RegistryError
from moorage.domain.names import is_valid_tag, validate_repository_name

STATEMENT_TYPE: Final = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE: Final = "https://moorage.dev/promotion/v1"
IN_TOTO_PAYLOAD_TYPE: Final = "application/vnd.in-toto+json"
# The artifact (and layer) type of a promotion record attached as a referrer.
DSSE_ENVELOPE_TYPE: Final = "application/vnd.dsse.envelope.v1+json"
ANNOTATION_PROMOTION: Final = "dev.moorage.promotion.source"

MAX_GATES: Final = 20
MAX_APPROVALS_NEEDED: Final = 10
MAX_MIN_HOURS: Final = 24 * 366
MAX_MAX_DAYS: Final = 3660
MAX_LABEL_LENGTH: Final = 255
MAX_STAGES: Final = 16
MAX_REASON_LENGTH: Final = 1000

_STAGE_RE: Final = re.compile(r"^[a-z0-9][a-z0-9._-]{0,31}$")
_GATE_NAME_RE: Final = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_LABEL_KEY_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,254}$")


class StageError(ValueError):
    pass


class GateError(ValueError):
    pass


class PromotionReferenceError(ValueError):
    """A promotion source or destination that is not `repository:tag` / `repository@digest`."""


def validate_stage(label: str) -> str:
    if not _STAGE_RE.fullmatch(label):
        raise StageError(
            f"a stage is 1 to 32 characters of [a-z0-9._-] starting with a letter or digit, not"
            f" {label[:40]!r}"
        )
    return label


def validate_stage_order(stages: Sequence[str]) -> list[str]:
    if len(stages) > MAX_STAGES:
        raise StageError(f"at most {MAX_STAGES} stages")
    for stage in stages:
        validate_stage(stage)
    if len(set(stages)) != len(stages):
        raise StageError("a stage may appear once in the order")
    return list(stages)


def preceding_stage(order: Sequence[str], stage: str) -> str | None:
    """The stage right before `stage` in the order; None when it is first or not in it."""
    if stage not in order:
        return None
    position = list(order).index(stage)
    return order[position - 1] if position > 0 else None


# -- references


@dataclass(frozen=True, slots=True)
class SourceReference:
    repository: str
    tag: str | None = None
    digest: str | None = None

    def __str__(self) -> str:
        return (
            f"{self.repository}@{self.digest}" if self.digest else f"{self.repository}:{self.tag}"
        )


@dataclass(frozen=True, slots=True)
class DestinationReference:
    repository: str
    tag: str

    def __str__(self) -> str:
        return f"{self.repository}:{self.tag}"


def _repository(text: str, what: str) -> str:
    try:
        return validate_repository_name(text)
    except RegistryError:
        raise PromotionReferenceError(
            f"the {what} repository {text[:200]!r} is not valid"
        ) from None


def parse_source(text: str) -> SourceReference:
    """`project/repo@sha256:...` or `project/repo:tag` (the tag is resolved when promoting)."""
    if "@" in text:
        name, _, digest = text.partition("@")
        try:
            parsed = Digest.parse(digest)
        except RegistryError:
            raise PromotionReferenceError(f"{digest[:140]!r} is not a digest") from None
        return SourceReference(_repository(name, "source"), digest=str(parsed))
    name, colon, tag = text.rpartition(":")
    if not colon or "/" in tag or not is_valid_tag(tag):
        raise PromotionReferenceError(
            f"the source {text[:200]!r} is neither repository:tag nor repository@digest"
        )
    return SourceReference(_repository(name, "source"), tag=tag)


def parse_destination(text: str) -> DestinationReference:
    """`project/repo:tag`: a promotion always sets a tag."""
    name, colon, tag = text.rpartition(":")
    if "@" in text or not colon or "/" in tag or not is_valid_tag(tag):
        raise PromotionReferenceError(f"the destination {text[:200]!r} is not repository:tag")
    return DestinationReference(_repository(name, "destination"), tag)


# -- gates


class GateKind(StrEnum):
    SCAN = "scan"
    SIGNATURE = "signature"
    SOURCE_STAGE = "source-stage"
    AGE = "age"
    LABEL = "label"
    APPROVAL = "approval"
    # Not configured: the results of the source project's own pull policies (vulnerability
    # policy, enforced trust rule), which every promotion must also satisfy.
    SOURCE_POLICY = "source-policy"


CONFIGURABLE_KINDS: Final = tuple(kind for kind in GateKind if kind is not GateKind.SOURCE_POLICY)


@dataclass(frozen=True, slots=True)
class Gate:
    """One configured gate; the fields beyond `kind` and `name` belong to one kind each."""

    kind: GateKind
    name: str
    severity: str | None = None  # scan: the threshold (default: the project policy's)
    min_hours: int | None = None  # age
    max_days: int | None = None  # age
    key: str | None = None  # label
    value: str | None = None  # label (None: presence is enough)
    count: int | None = None  # approval
    role: str | None = None  # approval
    allow_requester: bool = False  # approval
    # scan, signature: this gate re-judges in place of the source project's own pull policy
    replace_source_policy: bool = False

    def describe(self) -> dict[str, Any]:
        """The gate as configured (for the API, the audit log and the record)."""
        fields: dict[str, Any] = {"kind": self.kind.value, "name": self.name}
        for key in ("severity", "min_hours", "max_days", "key", "value", "count", "role"):
            value = getattr(self, key)
            if value is not None:
                fields[key] = value
        if self.kind is GateKind.APPROVAL:
            fields["allow_requester"] = self.allow_requester
        if self.replace_source_policy:
            fields["replace_source_policy"] = True
        return fields


_ALLOWED_FIELDS: Final[dict[GateKind, frozenset[str]]] = {
    GateKind.SCAN: frozenset({"severity", "replace_source_policy"}),
    GateKind.SIGNATURE: frozenset({"replace_source_policy"}),
    GateKind.SOURCE_STAGE: frozenset(),
    GateKind.AGE: frozenset({"min_hours", "max_days"}),
    GateKind.LABEL: frozenset({"key", "value"}),
    GateKind.APPROVAL: frozenset({"count", "role", "allow_requester"}),
}


def make_gate(fields: Mapping[str, Any]) -> Gate:
    """A gate from its configuration (snake_case keys), validated."""
    try:
        kind = GateKind(str(fields.get("kind")))
        if kind not in CONFIGURABLE_KINDS:
            raise ValueError(kind)
    except ValueError:
        raise GateError(
            f"unknown gate kind {str(fields.get('kind'))[:40]!r}; one of"
            f" {', '.join(kind.value for kind in CONFIGURABLE_KINDS)}"
        ) from None
    given = {key for key, value in fields.items() if value is not None and value is not False}
    extra = sorted(given - _ALLOWED_FIELDS[kind] - {"kind", "name"})
    if extra:
        raise GateError(f"a {kind.value} gate has no {', '.join(extra)}")
    name = str(fields.get("name") or kind.value)
    if not _GATE_NAME_RE.fullmatch(name):
        raise GateError(f"gate name {name[:70]!r} is not 1 to 64 characters of [a-z0-9._-]")
    gate = Gate(
        kind,
        name,
        severity=fields.get("severity"),
        min_hours=fields.get("min_hours"),
        max_days=fields.get("max_days"),
        key=fields.get("key"),
        value=fields.get("value"),
        count=fields.get("count"),
        role=fields.get("role"),
        allow_requester=bool(fields.get("allow_requester", False)),
        replace_source_policy=bool(fields.get("replace_source_policy", False)),
    )
    _check_kind_fields(gate)
    return gate


def _check_kind_fields(gate: Gate) -> None:
    if gate.kind is GateKind.AGE:
        if gate.min_hours is None and gate.max_days is None:
            raise GateError("an age gate needs minHours, maxDays or both")
        if gate.min_hours is not None and not 0 <= gate.min_hours <= MAX_MIN_HOURS:
            raise GateError(f"minHours is between 0 and {MAX_MIN_HOURS}")
        if gate.max_days is not None and not 1 <= gate.max_days <= MAX_MAX_DAYS:
            raise GateError(f"maxDays is between 1 and {MAX_MAX_DAYS}")
        if (
            gate.min_hours is not None
            and gate.max_days is not None
            and gate.min_hours >= gate.max_days * 24
        ):
            raise GateError("minHours must be shorter than maxDays, or no image could pass")
    elif gate.kind is GateKind.LABEL:
        if gate.key is None or not _LABEL_KEY_RE.fullmatch(gate.key):
            raise GateError("a label gate needs a key of up to 255 characters [A-Za-z0-9._/-]")
        if gate.value is not None and (
            len(gate.value) > MAX_LABEL_LENGTH or any(ord(c) < 32 for c in gate.value)
        ):
            raise GateError(f"a label value is at most {MAX_LABEL_LENGTH} printable characters")
    elif gate.kind is GateKind.APPROVAL:
        if gate.count is None or not 1 <= gate.count <= MAX_APPROVALS_NEEDED:
            raise GateError(f"an approval gate needs a count between 1 and {MAX_APPROVALS_NEEDED}")
        if gate.role is None or not _GATE_NAME_RE.fullmatch(gate.role):
            raise GateError("an approval gate needs the role its approvers hold")


def validate_gates(gates: Sequence[Gate]) -> list[Gate]:
    if len(gates) > MAX_GATES:
        raise GateError(f"a project has at most {MAX_GATES} gates")
    names = [gate.name for gate in gates]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise GateError(f"gate names must differ: {', '.join(duplicates)} appears twice")
    return list(gates)


@dataclass(frozen=True, slots=True)
class GateResult:
    name: str
    kind: GateKind
    passed: bool
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind.value,
            "passed": self.passed,
            "reason": self.reason[:MAX_REASON_LENGTH],
        }


def passed(gate: Gate, reason: str) -> GateResult:
    return GateResult(gate.name, gate.kind, True, reason)


def failed(gate: Gate, reason: str) -> GateResult:
    return GateResult(gate.name, gate.kind, False, reason)


def source_stage_result(
    gate: Gate, order: Sequence[str], source_stage: str | None, destination_stage: str | None
) -> GateResult:
    if destination_stage is None:
        return failed(gate, "the destination project has no stage")
    if destination_stage not in order:
        return failed(
            gate, f"stage {destination_stage} is not in the configured order {list(order)}"
        )
    wanted = preceding_stage(order, destination_stage)
    if wanted is None:
        return failed(gate, f"{destination_stage} is the first stage: nothing is promoted into it")
    if source_stage != wanted:
        found = f"stage {source_stage}" if source_stage else "no stage"
        return failed(
            gate,
            f"{destination_stage} accepts promotions from stage {wanted} only; the source"
            f" project has {found}",
        )
    return passed(gate, f"the source is at stage {wanted}, right before {destination_stage}")


def age_result(gate: Gate, since: datetime | None, now: datetime) -> GateResult:
    """How long the manifest has been in the source repository, against the gate's bounds."""
    if since is None:
        return failed(gate, "the source repository does not record when the manifest arrived")
    since = since if since.tzinfo is not None else since.replace(tzinfo=UTC)
    age = now - since
    hours = age / timedelta(hours=1)
    problems = []
    if gate.min_hours is not None and age < timedelta(hours=gate.min_hours):
        problems.append(
            f"it has been in the source for {hours:.1f} h, less than {gate.min_hours} h"
        )
    if gate.max_days is not None and age > timedelta(days=gate.max_days):
        problems.append(f"it has been in the source for {age.days} days, more than {gate.max_days}")
    if problems:
        return failed(gate, "; ".join(problems))
    return passed(gate, f"in the source repository for {hours:.1f} h")


def label_result(gate: Gate, found: Iterable[tuple[str, Mapping[str, str]]]) -> GateResult:
    """`found`: (where, annotations or labels) pairs: the manifest's, its configuration's."""
    assert gate.key is not None
    seen: list[str] = []
    for where, values in found:
        if gate.key in values:
            actual = values[gate.key]
            if gate.value is None or actual == gate.value:
                return passed(gate, f"{gate.key}={actual[:100]} on the {where}")
            seen.append(f"{gate.key}={actual[:100]} on the {where}")
    wanted = gate.key if gate.value is None else f"{gate.key}={gate.value}"
    if seen:
        return failed(gate, f"wants {wanted}; found {', '.join(seen)}")
    return failed(gate, f"wants {wanted}; neither the manifest nor its configuration has it")


# -- the record


def statement(
    *,
    destination: DestinationReference,
    source: SourceReference,
    digest: str,
    media_type: str,
    results: Sequence[GateResult],
    requester: Mapping[str, Any],
    at: datetime,
    linked: Sequence[str],
) -> dict[str, Any]:
    """The in-toto Statement v1 of one promotion."""
    algorithm, _, encoded = digest.partition(":")
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": destination.repository, "digest": {algorithm: encoded}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "source": {
                "repository": source.repository,
                "reference": source.tag or source.digest,
            },
            "destination": {"repository": destination.repository, "tag": destination.tag},
            "digest": digest,
            "mediaType": media_type,
            "gates": [result.as_dict() for result in results],
            "promotedBy": dict(requester),
            "promotedAt": at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "linked": list(linked),
        },
    }


def canonical_json(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what the signature covers."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def envelope(payload: bytes, key_id: str, signature_b64: str) -> dict[str, Any]:
    return {
        "payloadType": IN_TOTO_PAYLOAD_TYPE,
        "payload": base64.b64encode(payload).decode(),
        "signatures": [{"keyid": key_id, "sig": signature_b64}],
    }
