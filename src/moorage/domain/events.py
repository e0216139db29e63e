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
    MANIFEST_DELETED = "manifest:deleted"
    TAG_DELETED = "tag:deleted"
    UPLOAD_CANCELLED = "upload:cancelled"


@dataclass(frozen=True, slots=True)
class Actor:
    """Who caused an event. Filled by the access layer; anonymous until auth exists."""

    name: str = "anonymous"
    kind: str = "anonymous"
    client_ip: str | None = None


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
