"""Single flight: concurrent pulls of one uncached object cause one upstream fetch.

Within a worker the others wait for the first (a shared future); across workers and nodes a
lock per object from the deployment's `Coordination` orders them (a file lock on one machine,
a leased Redis lock across nodes), and whoever gets it after the first finds the object stored.
"""

from __future__ import annotations

import asyncio


class SingleFlight:
    """One leader per key inside this process; the others wait for it to finish."""

    def __init__(self) -> None:
        self._running: dict[str, asyncio.Future[None]] = {}

    def join(self, key: str) -> asyncio.Future[None] | None:
        """The running flight's future to wait on, or None: the caller now leads `key` and
        must call `finish(key)`."""
        running = self._running.get(key)
        if running is not None:
            return running
        self._running[key] = asyncio.get_running_loop().create_future()
        return None

    def finish(self, key: str) -> None:
        running = self._running.pop(key, None)
        if running is not None and not running.done():
            running.set_result(None)
