"""Garbage collection runs for the server: started from the API or on a schedule, worked on a
thread of their own, stopped and resumed on request; one at a time across the deployment."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from moorage.config import Settings
from moorage.coordination.base import Coordination
from moorage.domain.events import SYSTEM, Actor, DomainEvent
from moorage.domain.replication import parse_cron
from moorage.metadata.lifecycle.gc_runs_store import (
    FAILED,
    INTERRUPTED,
    STOPPED,
    GcRun,
    GcRunsStore,
    RunBusyError,
)
from moorage.metadata.lifecycle.gc_store import GcStore
from moorage.metadata.registry.store import MetadataStore
from moorage.metadata.staging.promotion_store import PromotionStore
from moorage.services.events import EventBus
from moorage.services.lifecycle.gc import GarbageCollector, GcOptions
from moorage.services.threads import Threads
from moorage.storage.base import StorageDriver

log = logging.getLogger("moorage.gc")

RESUMABLE = frozenset({STOPPED, INTERRUPTED, FAILED})
_NICENESS: Final = 10


class NotResumableError(Exception):
    pass


def lower_priority() -> None:
    """Make the calling thread nice (Linux schedules threads one by one); best effort."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), _NICENESS)


def _niced(work: Callable[..., GcRun], *arguments: Any) -> GcRun:
    lower_priority()
    return work(*arguments)


class GcRunner:
    def __init__(
        self,
        collector: GarbageCollector,
        runs: GcRunsStore,
        defaults: GcOptions,
        threads: Threads,
        events: EventBus,
    ) -> None:
        self._events = events
        self._collector = collector
        self._runs = runs
        self.defaults = defaults
        self._threads = threads
        self._working: set[asyncio.Future[GcRun]] = set()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gc")

    async def start(
        self,
        actor: Actor,
        trigger: str,
        *,
        dry_run: bool = False,
        delete_untagged: bool = False,
        grace_seconds: int | None = None,
        resume: str | None = None,
    ) -> GcRun:
        """Start a run now and return its record; RunBusyError when one is running and
        NotResumableError when `resume` names a run that cannot be resumed."""
        options = replace(self.defaults, dry_run=dry_run, delete_untagged=delete_untagged)
        if grace_seconds is not None:
            options = replace(options, grace=timedelta(seconds=grace_seconds))
        previous: GcRun | None = None
        if resume is not None:
            previous = await self._threads.run(self._runs.run, resume)
            if previous is None or previous.status not in RESUMABLE:
                raise NotResumableError(f"run {resume} cannot be resumed")
            options = replace(
                options,
                dry_run=previous.dry_run,
                delete_untagged=previous.delete_untagged,
                grace=timedelta(seconds=previous.grace_seconds),
            )
        record = await self._threads.run(self._collector.start, options, actor, trigger, previous)
        loop = asyncio.get_running_loop()

        def publish(event: DomainEvent) -> None:
            loop.call_soon_threadsafe(self._events.publish, event)

        # Its own thread, at a lower priority: a run takes minutes, and the requests this
        # process serves meanwhile come first (for the CPU, and so for the interpreter lock).
        task = asyncio.ensure_future(
            loop.run_in_executor(
                self._thread, _niced, self._collector.run, record, options, actor, publish
            )
        )
        self._working.add(task)
        task.add_done_callback(self._working.discard)
        return record

    async def stop(self, run_id: str) -> GcRun | None:
        return await self._threads.run(self._runs.request_stop, run_id)

    async def run(self, run_id: str) -> GcRun | None:
        return await self._threads.run(self._runs.run, run_id)

    async def runs(self, limit: int, before: datetime | None = None) -> list[GcRun]:
        return await self._threads.run(self._runs.runs, limit, before)

    async def scheduled(self, cron: str, coordination: Coordination) -> None:
        """Start a run at every time `cron` names (UTC), on one node of the deployment."""
        schedule = parse_cron(cron)
        while True:
            now = datetime.now(UTC)
            due = schedule.next_after(now)
            await asyncio.sleep(max(0.0, (due - now).total_seconds()))
            try:
                if await coordination.run_once("gc-schedule", 50.0):
                    await self.start(SYSTEM, "schedule")
            except RunBusyError as busy:
                log.info("scheduled garbage collection skipped: %s", busy)
            except Exception:
                log.exception("scheduled garbage collection failed to start")

    async def close(self) -> None:
        """At shutdown: ask the runs of this process to stop after their batch, and wait."""
        running = await self._threads.run(self._runs.is_running)
        if running is not None and running.node == self._collector.node and self._working:
            await self._threads.run(self._runs.request_stop, running.id)
        if self._working:
            await asyncio.wait(set(self._working), timeout=30)
        self._thread.shutdown(wait=False)


def gc_options_from(settings: Settings) -> GcOptions:
    return GcOptions(
        delete_untagged=settings.gc_delete_untagged,
        grace=timedelta(seconds=settings.gc_grace_seconds),
        batch_size=settings.gc_batch_size,
        delete_workers=settings.gc_delete_workers,
        upload_expiry=timedelta(seconds=settings.upload_expiry_seconds),
    )


def build_collector(
    store: GcStore,
    runs: GcRunsStore,
    storage: StorageDriver,
    metadata: MetadataStore,
    promotions: PromotionStore,
) -> GarbageCollector:
    """The collector on the registry's database and storage (server and command line)."""

    def delete_manifest(repository: str, digest: str) -> bool:
        return metadata.delete_manifest(repository, digest) is not None

    return GarbageCollector(
        store,
        runs,
        storage,
        dangling_records=promotions.dangling_records,
        delete_manifest=delete_manifest,
    )
