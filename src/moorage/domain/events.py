"""Domain events: every state change (and every pull) is described by one of these.

They are published through `moorage.services.events.EventBus`, the one place that audit,
scan-on-push, webhooks and replication subscribe to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum


class EventKind(StrEnum):
    BLOB_PUSHED = "blob:pushed"
    BLOB_MOUNTED = "blob:mounted"
    BLOB_DELETED = "blob:deleted"
    MANIFEST_PUSHED = "manifest:pushed"
    MANIFEST_PULLED = "manifest:pulled"
    MANIFEST_CACHED = "manifest:cached"  # a proxy-cache project stored it from its upstream
    BLOB_CACHED = "blob:cached"
    # A cached image manifest of a proxy-cache project now has every blob it references.
    IMAGE_CACHED = "image:cached"
    TAG_REVALIDATED = "tag:revalidated"  # the upstream confirmed a cached tag (not audited)
    MANIFEST_DELETED = "manifest:deleted"
    TAG_DELETED = "tag:deleted"
    # A repository and everything in it (its bytes are freed by garbage collection).
    REPOSITORY_DELETED = "repository:deleted"
    UPLOAD_CANCELLED = "upload:cancelled"
    SCAN_COMPLETED = "scan:completed"  # a report reached Success or Error
    # A project's usage crossed the warning threshold of a quota (once until it falls back).
    QUOTA_WARNING = "quota:warning"
    # A push was first refused because it would exceed a quota (once until usage falls back).
    QUOTA_EXCEEDED = "quota:exceeded"


@dataclass(frozen=True, slots=True)
class Actor:
    """Who caused an event, as the access layer identified them."""

    name: str = "anonymous"
    kind: str = "anonymous"  # anonymous | user | robot | system
    client_ip: str | None = None
    certificate: str | None = None  # subject of a verified client certificate
    id: int | None = None  # the account's id (a re-created account with the same name differs)

    @property
    def identity(self) -> str:
        """Who, precisely enough to own something (an upload session)."""
        return f"{self.kind}:{self.id}:{self.name}"


SYSTEM = Actor(name="moorage", kind="system")


@dataclass(frozen=True, slots=True)
class RegistryEvent:
    kind: EventKind
    repository: str
    digest: str | None = None
    tag: str | None = None
    media_type: str | None = None
    size: int | None = None
    actor: Actor = field(default_factory=Actor)
    at: datetime = field(default_factory=lambda: datetime.now(UTC))
    # Facts of the kinds that need more than the fields above (quota: limit, usage, percent).
    details: dict[str, object] | None = None


@dataclass(frozen=True, slots=True)
class AccessEvent:
    """A sign-in or a change to accounts, projects, roles, robots, tokens or settings.

    `details` holds only the fields the audit schema allows for `action`; secrets never
    enter an event in the first place.
    """

    action: str  # e.g. "login", "user:create", "robot:rotate"
    actor: Actor
    result: str = "success"  # success | failure | denied
    project: str | None = None
    resource: str | None = None
    details: dict[str, object] | None = None
    at: datetime = field(default_factory=lambda: datetime.now(UTC))


def policy_denied(
    actor: Actor,
    project: str | None,
    resource: str | None,
    *,
    point: str,
    policy: str | None,
    reason: str,
) -> AccessEvent:
    """The audit event of a request a policy refused at a decision point."""
    details: dict[str, object] = {"point": point, "policy": policy, "reason": reason}
    return AccessEvent("policy:denied", actor, "denied", project, resource, details)


DomainEvent = RegistryEvent | AccessEvent
