"""Project quotas: limits, usage, and the decisions made on them (pure).

A project's storage is the sum of the sizes of the distinct blobs linked into any of its
repositories (a blob shared by several repositories of the project counts once); its artifact
count is the number of manifests in its repositories (one per repository and digest). A limit
of None means "no limit". A project's own limit overrides the system default; an override of 0
means "unlimited" for this project whatever the default says.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from moorage.domain.errors import ErrorCode, RegistryError
from moorage.domain.events import AccessEvent, Actor, policy_denied

QUOTA_POLICY: Final = "quota"


class QuotaKind(StrEnum):
    STORAGE = "storage"
    ARTIFACTS = "artifacts"


class QuotaState(StrEnum):
    """What has been announced for a project: the warning and the refusal fire once each,
    and re-arm when usage falls back under the warning threshold."""

    OK = "ok"
    WARNED = "warned"
    EXCEEDED = "exceeded"


@dataclass(frozen=True, slots=True)
class QuotaLimits:
    """Limits in force (None: unlimited)."""

    bytes: int | None = None
    artifacts: int | None = None

    @property
    def any(self) -> bool:
        return self.bytes is not None or self.artifacts is not None


UNLIMITED: Final = QuotaLimits()


def from_setting(value: int | None) -> int | None:
    """A configured limit: 0 or unset means unlimited."""
    return value if value else None


@dataclass(frozen=True, slots=True)
class QuotaOverride:
    """A project's own limits: None inherits the system default, 0 is unlimited."""

    bytes: int | None = None
    artifacts: int | None = None

    def applied_to(self, defaults: QuotaLimits) -> QuotaLimits:
        return QuotaLimits(
            defaults.bytes if self.bytes is None else from_setting(self.bytes),
            defaults.artifacts if self.artifacts is None else from_setting(self.artifacts),
        )


@dataclass(frozen=True, slots=True)
class QuotaUsage:
    bytes: int = 0
    artifacts: int = 0


def human_bytes(size: int) -> str:
    """1.2 MiB, 10 MiB, 512 B: what a person reads in a refusal."""
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
    value = float(size)
    for unit in units:
        if abs(value) < 1024 or unit == units[-1]:
            if unit == "B":
                return f"{int(value)} B"
            text = f"{value:.1f}".removesuffix(".0")
            return f"{text} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


class QuotaExceededError(RegistryError):
    """A push that would take a project over one of its quotas (403 DENIED)."""

    def __init__(self, project: str, kind: QuotaKind, limit: int, used: int, adding: int) -> None:
        self.project = project
        self.kind = kind
        self.limit = limit
        self.used = used
        self.adding = adding
        if kind is QuotaKind.STORAGE:
            message = (
                f"project {project}: storage quota {human_bytes(limit)}, used"
                f" {human_bytes(used)}, this blob {human_bytes(adding)}"
            )
        else:
            message = (
                f"project {project}: artifact quota {limit}, used {used}, this push adds {adding}"
            )
        super().__init__(
            ErrorCode.DENIED,
            message,
            detail={
                "project": project,
                "quota": str(kind),
                "limit": limit,
                "used": used,
                "adding": adding,
            },
        )

    def denied_event(self, actor: Actor, repository: str, point: str) -> AccessEvent:
        """The audit entry of this refusal (`policy:denied`, policy `quota`)."""
        return policy_denied(
            actor, self.project, repository, point=point, policy=QUOTA_POLICY, reason=self.message
        )


def excess(
    project: str, limits: QuotaLimits, usage: QuotaUsage, *, add_bytes: int, add_artifacts: int
) -> QuotaExceededError | None:
    """The refusal of adding this much to `usage`, or None when it fits.

    Adding nothing never fails, so a push that only re-links what the project holds already
    goes through even over quota (usage can exceed a limit lowered after the fact).
    """
    if add_bytes > 0 and limits.bytes is not None and usage.bytes + add_bytes > limits.bytes:
        return QuotaExceededError(project, QuotaKind.STORAGE, limits.bytes, usage.bytes, add_bytes)
    if (
        add_artifacts > 0
        and limits.artifacts is not None
        and usage.artifacts + add_artifacts > limits.artifacts
    ):
        return QuotaExceededError(
            project, QuotaKind.ARTIFACTS, limits.artifacts, usage.artifacts, add_artifacts
        )
    return None


def highest_percent(limits: QuotaLimits, usage: QuotaUsage) -> float:
    """How full the fuller of the two quotas is, in percent (0 when unlimited)."""
    percents = [0.0]
    if limits.bytes:
        percents.append(100.0 * usage.bytes / limits.bytes)
    if limits.artifacts:
        percents.append(100.0 * usage.artifacts / limits.artifacts)
    return max(percents)


def over_cap(limits: QuotaLimits, usage: QuotaUsage) -> bool:
    """A proxy-cache project holds more than its cap (what eviction brings back under)."""
    return (limits.bytes is not None and usage.bytes > limits.bytes) or (
        limits.artifacts is not None and usage.artifacts > limits.artifacts
    )
