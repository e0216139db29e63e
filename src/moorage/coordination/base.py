"""What the services ask of the deployment's coordination (no I/O here)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Protocol

# Called with a cache's name when another process or node changed what it caches; ALL_CACHES
# when changes may have been missed.
Invalidated = Callable[[str], None]
ALL_CACHES: Final = "*"


class HeldLock(Protocol):
    def release(self) -> None:
        """Give the lock up (idempotent; never blocks: remote work runs in the background)."""


class Coordination(Protocol):
    async def start(self, on_invalidated: Invalidated) -> None:
        """Begin receiving invalidations (called once, on the event loop)."""

    async def close(self) -> None: ...

    async def lock(self, key: str) -> HeldLock:
        """Wait until this caller holds `key` in the whole deployment. A holder that dies
        loses it (process exit, or the lease running out)."""

    async def run_once(self, job: str, seconds: float) -> bool:
        """True for one caller in the deployment per `seconds` window: that caller runs the
        periodic `job` now, the others skip this turn."""

    def invalidate(self, name: str) -> None:
        """Tell every other process that the cache `name` is stale (thread-safe, never
        blocks; best effort: the caches' own expiry remains the bound)."""

    async def ping(self, within: float) -> bool:
        """Readiness: whether the shared coordination answers within `within` seconds."""
