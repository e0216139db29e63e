"""Policies are checks attached to named decision points.

A check looks at a `PolicyContext` and returns `Allow` or `Deny(reason)`; it never raises and
never talks HTTP. Services call `PolicySet.evaluate` at each decision point and turn a denial
into the protocol's DENIED error (and an audit entry). Later capabilities (vulnerability
gates, trust policies, quotas, promotion-only projects) register checks here; immutable tags
(`moorage.services.registry.immutability`) do.

A check that needs the repository's current state (what a tag points at now, which tags point
at a manifest) asks `context.state`, which reads it on first use. The service re-checks every
fact a check read inside the transaction that makes the change, and evaluates the checks again if
it changed meanwhile, so a decision can never rest on a state that no longer holds.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from moorage.domain.events import Actor


class DecisionPoint(StrEnum):
    PUSH_BLOB = "push:blob"
    PUSH_MANIFEST = "push:manifest"
    PULL_MANIFEST = "pull:manifest"
    DELETE_MANIFEST = "delete:manifest"
    DELETE_TAG = "delete:tag"
    DELETE_BLOB = "delete:blob"
    PROMOTE = "promote"


class RepositoryState(Protocol):
    """The repository as it is now, read on demand (each fact at most once per evaluation)."""

    async def tag_digest(self) -> str | None:
        """The digest the context's tag points at now; None for a tag that does not exist."""
        ...

    async def manifest_tags(self) -> tuple[str, ...]:
        """The tags of the repository that point at the context's digest now."""
        ...


@dataclass(frozen=True, slots=True)
class PolicyContext:
    point: DecisionPoint
    repository: str
    actor: Actor
    digest: str | None = None
    tag: str | None = None
    media_type: str | None = None
    # Set by the registry at push:manifest and delete:manifest; None elsewhere.
    state: RepositoryState | None = None


@dataclass(frozen=True, slots=True)
class Allow:
    def __bool__(self) -> bool:
        return True


@dataclass(frozen=True, slots=True)
class Deny:
    reason: str  # shown to the client: say what was refused, by which rule, and what to do
    policy: str | None = None  # which capability refused (for the audit log)

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
