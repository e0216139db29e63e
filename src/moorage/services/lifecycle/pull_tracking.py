"""Last-pull tracking without a database write per pull.

The tracker subscribes to `manifest:pulled` events (every pull path publishes one: local,
proxy cache, virtual members) and only updates an in-memory map; every `flush_seconds` (and
at shutdown) the map is swapped out and written in one batched upsert. Each worker and node
flushes its own buffer; the store keeps the latest time, so nothing needs coordinating. A
crash loses at most one interval of pull times of that process, which retention tolerates
(pull times are a hint of use, not an audit record).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from datetime import datetime

from moorage.domain.events import DomainEvent, EventKind, RegistryEvent
from moorage.metadata.lifecycle.pull_store import PullStore, PullSummary
from moorage.services.threads import Threads

log = logging.getLogger("moorage.lifecycle.pulls")

# A burst of pulls of distinct artifacts between two flushes flushes early at this size, so
# the buffer's memory stays bounded.
MAX_BUFFERED = 10_000


class PullTracker:
    def __init__(self, store: PullStore, threads: Threads, flush_seconds: float) -> None:
        self._store = store
        self._threads = threads
        self._flush_seconds = flush_seconds
        self._lock = threading.Lock()
        self._buffer: dict[tuple[str, str], PullSummary] = {}
        self._full = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def on_event(self, event: DomainEvent) -> None:
        if not isinstance(event, RegistryEvent) or event.kind != EventKind.MANIFEST_PULLED:
            return
        if event.digest is None:
            return
        self.note(event.repository, event.digest, event.at)

    def note(self, repository: str, digest: str, at: datetime) -> None:
        key = (repository, digest)
        with self._lock:
            seen = self._buffer.get(key)
            if seen is None:
                self._buffer[key] = PullSummary(at, 1)
            else:
                self._buffer[key] = PullSummary(max(seen.last_pulled_at, at), seen.count + 1)
            full = len(self._buffer) >= MAX_BUFFERED
        if full and self._loop is not None:
            # Events may be published from a worker thread: wake the loop safely.
            self._loop.call_soon_threadsafe(self._full.set)

    def _take(self) -> dict[tuple[str, str], PullSummary]:
        with self._lock:
            taken, self._buffer = self._buffer, {}
        return taken

    async def flush(self) -> int:
        """Write what has been buffered; returns the number of artifacts written."""
        batch = self._take()
        if not batch:
            return 0
        try:
            return await self._threads.run(self._store.record, batch)
        except Exception:
            # Put the batch back (merged with newer pulls) for the next interval.
            with self._lock:
                for key, summary in batch.items():
                    newer = self._buffer.get(key)
                    if newer is not None:
                        summary = PullSummary(
                            max(summary.last_pulled_at, newer.last_pulled_at),
                            summary.count + newer.count,
                        )
                    self._buffer[key] = summary
            raise

    async def run(self) -> None:
        """Flush every interval (or when the buffer fills) until cancelled; then flush once
        more, so a clean shutdown loses nothing."""
        self._loop = asyncio.get_running_loop()
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self._flush_seconds)
                self._full.clear()
                try:
                    await self.flush()
                except Exception:
                    log.exception("recording pull times failed; retrying at the next interval")
        finally:
            try:
                await asyncio.shield(self.flush())
            except Exception:
                log.exception("recording pull times at shutdown failed")
