"""The one place domain events go through. Audit, scanning, webhooks and replication subscribe."""

from __future__ import annotations

import logging
from collections.abc import Callable

from moorage.domain.events import AccessEvent, DomainEvent, EventKind

log = logging.getLogger("moorage.events")

Subscriber = Callable[[DomainEvent], None]


class EventBus:
    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    def publish(self, event: DomainEvent) -> None:
        """Deliver to every subscriber; a failing subscriber never fails the request.

        Subscribers must return quickly: slow work (scans, webhooks) is queued by them.
        """
        for subscriber in self._subscribers:
            try:
                subscriber(event)
            except Exception:
                log.exception("event subscriber %r failed", subscriber)


def log_subscriber(event: DomainEvent) -> None:
    """Writes state changes to the log (pulls are too frequent to log at info level)."""
    if isinstance(event, AccessEvent):
        log.info(
            "%s %s actor=%s resource=%s",
            event.action,
            event.result,
            event.actor.name,
            event.resource,
        )
        return
    frequent = event.kind.endswith("pulled") or event.kind == EventKind.TAG_REVALIDATED
    level = logging.DEBUG if frequent else logging.INFO
    log.log(
        level,
        "%s repository=%s digest=%s tag=%s actor=%s",
        event.kind,
        event.repository,
        event.digest,
        event.tag,
        event.actor.name,
    )
