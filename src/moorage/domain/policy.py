"""Policies are checks attached to named decision points.

A check looks at a `PolicyContext` and returns `Allow` or `Deny(reason)`; it never raises and
never talks HTTP. Services call `PolicySet.evaluate` at each decision point and turn a denial
into the protocol's DENIED error. Later capabilities (vulnerability gates, trust policies,
immutable tags, quotas, promotion-only projects) register checks here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum

from moorage.domain.events import Actor


class DecisionPoint(StrEnum):
    PUSH_BLOB = "push:blob"
    PUSH_MANIFEST = "push:manifest"
    PULL_MANIFEST = "pull:manifest"
    DELETE_MANIFEST = "delete:manifest"
    DELETE_TAG = "delete:tag"
    DELETE_BLOB = "delete:blob"
    PROMOTE = "promote"


@dataclass(frozen=True, slots=True)
class PolicyContext:
    point: DecisionPoint
    repository: str
    actor: Actor
    digest: str | None = None
    tag: str | None = None
    media_type: str | None = None


@dataclass(frozen=True, slots=True)
class Allow:
    def __bool__(self) -> bool:
        return True


@dataclass(frozen=True, slots=True)
class Deny:
    reason: str

    def __bool__(self) -> bool:
        return False


Decision = Allow | Deny
Check = Callable[[PolicyContext], Awaitable[Decision]]


@dataclass
class PolicySet:
    checks: dict[DecisionPoint, list[Check]] = field(default_factory=dict)

    def register(self, point: DecisionPoint, check: Check) -> None:
        self.checks.setdefault(point, []).append(check)

    async def evaluate(self, context: PolicyContext) -> list[Deny]:
        """Run every check for the point; return all denials (empty means allowed)."""
        denials: list[Deny] = []
        for check in self.checks.get(context.point, ()):
            decision = await check(context)
            if isinstance(decision, Deny):
                denials.append(decision)
        return denials
