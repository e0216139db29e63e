"""Project quotas: usage, limits, announcements and the proxy-cache size cap.

The refusal itself happens in the metadata store, inside the transaction that links (see
`moorage.metadata.lifecycle.quota_store`); this service is what surrounds it:

- `usage`, `set_limits`, `clear_limits`, `recount`: the API and the `moorage quota` commands.
- `on_event` (an EventBus subscriber): after a change to a project's content it reviews the
  project on the thread pool (coalesced: one review at a time per project). Crossing the
  warning threshold announces `quota:warning` once; the first refusal announces
  `quota:exceeded` once; both re-arm when usage falls back under the threshold. The state
  lives in the database, so several workers and nodes announce each crossing once.
- A proxy-cache project over its limits is not refused but trimmed: its least recently pulled
  cached manifests are removed from their repositories until it fits (`ProxyEviction`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from moorage.domain.events import (
    SYSTEM,
    AccessEvent,
    Actor,
    DomainEvent,
    EventKind,
    RegistryEvent,
)
from moorage.domain.names import project_of
from moorage.domain.quotas import (
    QUOTA_POLICY,
    QuotaKind,
    QuotaLimits,
    QuotaOverride,
    QuotaState,
    QuotaUsage,
    highest_percent,
    over_cap,
)
from moorage.metadata.lifecycle.quota_store import CounterDrift, QuotaStore
from moorage.services.events import EventBus
from moorage.services.threads import Threads

log = logging.getLogger("moorage.quotas")

# How long a project found without limits is not reviewed again (a limit set through another
# process is noticed within this long; the refusal itself never waits for it).
_UNLIMITED_SECONDS = 2.0

# Changes after which a project's usage may have crossed a threshold (either way).
_CONTENT_CHANGES = frozenset(
    {
        EventKind.BLOB_PUSHED,
        EventKind.BLOB_MOUNTED,
        EventKind.BLOB_CACHED,
        EventKind.BLOB_DELETED,
        EventKind.MANIFEST_PUSHED,
        EventKind.MANIFEST_CACHED,
        EventKind.MANIFEST_DELETED,
    }
)


@dataclass(frozen=True, slots=True)
class QuotaView:
    project: str
    limits: QuotaLimits  # in force: the project's own, else the system default
    override: QuotaOverride  # the project's own (None: inherits)
    usage: QuotaUsage
    percent: float
    state: QuotaState
    warning_percent: int
    updated_by: str | None
    updated_at: datetime | None


# Trims a proxy-cache project back under its limits; returns (manifests removed, bytes freed).
Evict = Callable[[str, QuotaLimits], Awaitable[tuple[int, int]]]
IsProxy = Callable[[str], Awaitable[bool]]


class QuotaService:
    def __init__(
        self,
        store: QuotaStore,
        threads: Threads,
        events: EventBus,
        *,
        defaults: QuotaLimits,
        warning_percent: int,
        is_proxy: IsProxy | None = None,
        evict: Evict | None = None,
    ) -> None:
        self._store = store
        self._threads = threads
        self._events = events
        self.defaults = defaults
        self.warning_percent = warning_percent
        self._is_proxy = is_proxy
        self._evict = evict
        self._reviewing: dict[str, bool] = {}  # project -> another review was asked meanwhile
        # Projects found without limits (and nothing announced): not reviewed again for a
        # while, so that pushes into unlimited projects cost no extra reads.
        self._unlimited_until: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # -- reading and setting

    def _view(self, project: str) -> QuotaView:
        record = self._store.record(project)
        limits = record.override.applied_to(self.defaults)
        return QuotaView(
            project,
            limits,
            record.override,
            record.usage,
            highest_percent(limits, record.usage),
            record.state,
            self.warning_percent,
            record.updated_by,
            record.updated_at,
        )

    async def usage(self, project: str) -> QuotaView:
        return await self._threads.run(self._view, project)

    async def set_limits(self, actor: Actor, project: str, override: QuotaOverride) -> QuotaView:
        await self._threads.run(self._store.set_override, project, override, actor.name)
        self._unlimited_until.pop(project, None)
        details: dict[str, object] = {"bytes": override.bytes, "artifacts": override.artifacts}
        self._events.publish(
            AccessEvent("quota:set", actor, "success", project, f"project:{project}", details)
        )
        self.review_soon(project)
        return await self.usage(project)

    async def clear_limits(self, actor: Actor, project: str) -> QuotaView:
        self._unlimited_until.pop(project, None)
        if await self._threads.run(self._store.clear_override, project):
            self._events.publish(
                AccessEvent("quota:clear", actor, "success", project, f"project:{project}")
            )
        self.review_soon(project)
        return await self.usage(project)

    async def recount(self, actor: Actor) -> list[CounterDrift]:
        """Rebuild every project's counters from the links; the projects that were off."""
        drift = await self._threads.run(self._store.recount)
        self._events.publish(
            AccessEvent(
                "quota:recount", actor, "success", None, "quotas", {"corrected": len(drift)}
            )
        )
        for corrected in drift:
            log.warning(
                "quota counters of project %s were %s, recounted %s",
                corrected.project,
                corrected.counted,
                corrected.actual,
            )
            self.review_soon(corrected.project)
        return drift

    # -- announcements

    def on_event(self, event: DomainEvent) -> None:
        """EventBus subscriber: review the project after a change to its content, and
        announce a first refusal."""
        if isinstance(event, RegistryEvent):
            if event.kind in _CONTENT_CHANGES:
                self.review_soon(project_of(event.repository), event.repository)
            return
        details = event.details or {}
        if (
            event.action == "policy:denied"
            and details.get("policy") == QUOTA_POLICY
            and event.project is not None
            and event.resource is not None
        ):
            self._spawn(self._announce_refusal(event.project, event.resource, event.actor))

    def review_soon(self, project: str, repository: str | None = None) -> None:
        if self._unlimited_until.get(project, 0.0) > time.monotonic():
            return
        if project in self._reviewing:
            self._reviewing[project] = True  # the running review goes round once more
            return
        self._reviewing[project] = False
        if not self._spawn(self._review_loop(project, repository or project)):
            self._reviewing.pop(project, None)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> bool:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # published off the event loop: the next change reviews
            work.close()
            return False
        task = loop.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _review_loop(self, project: str, repository: str) -> None:
        try:
            while True:
                try:
                    await self.review(project, repository)
                except Exception:
                    log.exception("quota review of project %s failed", project)
                if not self._reviewing.get(project):
                    return
                self._reviewing[project] = False
        finally:
            self._reviewing.pop(project, None)

    async def review(self, project: str, repository: str | None = None) -> None:
        """Trim a proxy-cache project over its cap; announce a crossed warning threshold;
        re-arm the announcements once usage is back under it."""
        view = await self.usage(project)
        if not view.limits.any:
            if view.state is QuotaState.OK:
                if len(self._unlimited_until) > 10_000:
                    self._unlimited_until.clear()
                self._unlimited_until[project] = time.monotonic() + _UNLIMITED_SECONDS
            else:
                await self._threads.run(
                    self._store.move_state,
                    project,
                    (QuotaState.WARNED, QuotaState.EXCEEDED),
                    QuotaState.OK,
                )
            return
        if (
            self._evict is not None
            and over_cap(view.limits, view.usage)
            and await self._proxy(project)
        ):
            removed, freed = await self._evict(project, view.limits)
            if removed:
                self._events.publish(
                    AccessEvent(
                        "quota:evict",
                        SYSTEM,
                        "success",
                        project,
                        f"project:{project}",
                        {"manifests": removed, "freed": freed},
                    )
                )
            view = await self.usage(project)
        if view.percent >= self.warning_percent:
            moved = await self._threads.run(
                self._store.move_state, project, (QuotaState.OK,), QuotaState.WARNED
            )
            if moved:
                self._publish(EventKind.QUOTA_WARNING, view, repository or project, SYSTEM)
        elif view.state is not QuotaState.OK:
            await self._threads.run(
                self._store.move_state,
                project,
                (QuotaState.WARNED, QuotaState.EXCEEDED),
                QuotaState.OK,
            )

    async def _announce_refusal(self, project: str, repository: str, actor: Actor) -> None:
        try:
            moved = await self._threads.run(
                self._store.move_state,
                project,
                (QuotaState.OK, QuotaState.WARNED),
                QuotaState.EXCEEDED,
            )
            if moved:
                view = await self.usage(project)
                self._publish(EventKind.QUOTA_EXCEEDED, view, repository, actor)
        except Exception:
            log.exception("announcing the quota refusal of project %s failed", project)

    async def _proxy(self, project: str) -> bool:
        return self._is_proxy is not None and await self._is_proxy(project)

    def _publish(self, kind: EventKind, view: QuotaView, repository: str, actor: Actor) -> None:
        storage = _percent(view.usage.bytes, view.limits.bytes)
        artifacts = _percent(view.usage.artifacts, view.limits.artifacts)
        quota, limit, used = (
            (QuotaKind.STORAGE, view.limits.bytes, view.usage.bytes)
            if storage >= artifacts
            else (QuotaKind.ARTIFACTS, view.limits.artifacts, view.usage.artifacts)
        )
        details: dict[str, object] = {
            "quota": str(quota),
            "limit": limit,
            "used": used,
            "percent": round(view.percent, 1),
        }
        self._events.publish(
            RegistryEvent(kind, repository.split("@", 1)[0], actor=actor, details=details)
        )

    async def drain(self) -> None:
        """Wait for the reviews under way (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


def _percent(used: int, limit: int | None) -> float:
    return 100.0 * used / limit if limit else -1.0
