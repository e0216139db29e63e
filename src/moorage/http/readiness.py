"""Readiness: may a load balancer send this node traffic? Liveness (`/healthz`) only says the
process answers; readiness asks every shared part a request needs, each under a short timeout,
and names the part that failed. Error text is never echoed: a driver's message can carry a
URL with a password or a bucket's credentials."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from moorage.domain.digest import Digest
from moorage.storage.base import StorageDriver

log = logging.getLogger("moorage.http.readiness")

CHECK_TIMEOUT_SECONDS = 2.0

# A blob nobody stores (sha256 of "moorage readiness sentinel"): asking for its size is a stat
# on a filesystem and a HEAD on object storage, the cheapest round trip through the driver.
SENTINEL = Digest("sha256", "8b9a83f89b28b079c7f591e8d71215311e7874cea31e7c74092abbc2963f1316")

Check = Callable[[], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class Readiness:
    checks: dict[str, Check] = field(default_factory=dict)
    timeout: float = CHECK_TIMEOUT_SECONDS

    async def report(self) -> tuple[bool, dict[str, str]]:
        names = list(self.checks)
        outcomes = await asyncio.gather(*(self._run(name) for name in names))
        results = dict(zip(names, outcomes, strict=True))
        return all(outcome == "ok" for outcome in outcomes), results

    async def _run(self, name: str) -> str:
        try:
            answered = await asyncio.wait_for(self.checks[name](), self.timeout)
        except TimeoutError:
            return "timeout"
        except Exception as error:
            log.warning("readiness: %s failed: %s", name, type(error).__name__)
            return f"failed: {type(error).__name__}"
        # A check that reports instead of raising (Redis's ping) says False for "no answer".
        return "failed" if answered is False else "ok"


class _ThreadProbe:
    """Runs a blocking check in a daemon thread of its own, one at a time.

    Not the request pool nor the loop's default executor (which serves blob files): a hung part
    must not starve the requests. A probe that timed out leaves its thread waiting on the part;
    later probes wait on that same call (and time out) instead of starting more threads, and a
    daemon thread never holds up the process's exit."""

    def __init__(self, name: str, function: Callable[[], object]) -> None:
        self._name = name
        self._function = function
        self._running: asyncio.Future[object] | None = None

    async def __call__(self) -> object:
        if self._running is None or self._running.done():
            loop = asyncio.get_running_loop()
            future: asyncio.Future[object] = loop.create_future()
            # Nobody may be waiting any more when a late failure arrives: no "never retrieved".
            future.add_done_callback(lambda done: done.cancelled() or done.exception())
            threading.Thread(
                target=self._run, args=(loop, future), name=f"readiness-{self._name}", daemon=True
            ).start()
            self._running = future
        return await asyncio.shield(self._running)

    def _run(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[object]) -> None:
        try:
            result, error = self._function(), None
        except Exception as failure:
            result, error = None, failure
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(_settle, future, result, error)


def _settle(future: asyncio.Future[object], result: object, error: Exception | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _probe_storage(storage: StorageDriver) -> None:
    storage.blob_size(SENTINEL)
    # On S3 a HEAD answers 404 for a missing bucket as for a missing object: the first page of
    # the upload sessions' listing (few keys: sessions in progress) fails without the bucket.
    next(iter(storage.list_uploads()), None)


def readiness_checks(
    ping_database: Callable[[], object],
    storage: StorageDriver,
    redis_ping: Check | None = None,
) -> Readiness:
    """The database (one query), the storage (the sentinel's size) and, when configured, Redis."""
    checks: dict[str, Check] = {
        "database": _ThreadProbe("database", ping_database),
        "storage": _ThreadProbe("storage", lambda: _probe_storage(storage)),
    }
    if redis_ping is not None:
        checks["redis"] = redis_ping
    return Readiness(checks)


READINESS = web.AppKey("readiness", Readiness)


async def ready(request: web.Request) -> web.Response:
    ready_now, checks = await request.app[READINESS].report()
    return web.json_response(
        {"status": "ready" if ready_now else "unavailable", "checks": checks},
        status=200 if ready_now else 503,
        headers={"Cache-Control": "no-store"},
    )


async def live(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})
