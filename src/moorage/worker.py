"""One worker process: the application on a listening socket, stopped gracefully.

Imported only by the process that serves, so the supervisor stays small.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import os
import socket

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.typedefs import Handler

from moorage.config import Settings
from moorage.http.app import build_app
from moorage.http.protocol_errors import JsonErrorAppRunner
from moorage.logs import quote_field
from moorage.server import STOP_SIGNALS, tls_context

log = logging.getLogger("moorage.server")

_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


def bound_large_allocations() -> None:
    """Return large freed buffers (argon2's 19 MiB, big request bodies) to the system.

    glibc raises its mmap threshold after such a buffer is freed, and from then on keeps
    buffers of that size in per-thread arenas, so every pool thread that once verified a
    password would hold one. A fixed threshold keeps them mmapped and returned on free.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(name).mallopt(_M_MMAP_THRESHOLD, 1 << 20)


class AccessLogger(AbstractAccessLogger):
    """`<client> "<request line>" <status> <bytes> <seconds> "<Referer>" "<User-Agent>"`.

    The request target is logged as received (still percent-encoded, as a web server's access
    log has it) and quoted fields escape `"` and `\\`, so no value can end its field early; the
    log formatter escapes control characters. The same values go to `extra=` for JSON logs.
    """

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        version = request.version
        referer = request.headers.get("Referer", "-")
        user_agent = request.headers.get("User-Agent", "-")
        self.logger.info(
            '%s "%s %s HTTP/%d.%d" %d %d %.6f "%s" "%s"',
            request.remote or "-",
            request.method,
            quote_field(request.raw_path),
            version.major,
            version.minor,
            response.status,
            response.body_length,
            time,
            quote_field(referer),
            quote_field(user_agent),
            extra={
                "client": request.remote,
                "method": request.method,
                "target": request.raw_path,
                "status": response.status,
                "bytes": response.body_length,
                "seconds": round(time, 6),
                "referer": referer,
                "user_agent": user_agent,
            },
        )


class _InFlight:
    """Counts requests inside their handler, so a stop can wait for them to finish reading.

    aiohttp's own graceful shutdown marks every connection closing first, and from then on it
    drops incoming bytes: a request still receiving its body (a streaming PATCH) would starve
    until the shutdown timeout and then be cut off. Waiting here, before aiohttp's shutdown
    starts, lets such requests complete.
    """

    def __init__(self) -> None:
        self._count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self._count += 1
        self._idle.clear()
        try:
            return await handler(request)
        finally:
            self._count -= 1
            if not self._count:
                self._idle.set()

    async def idle(self) -> None:
        await self._idle.wait()


async def _stop_when_orphaned(supervisor: int, stop: asyncio.Event) -> None:
    # A supervisor killed with SIGKILL cannot forward SIGTERM; without this its workers would
    # keep serving unsupervised, next to whatever is started in its place.
    while os.getppid() == supervisor:  # noqa: ASYNC110 - a parent's death sets no event
        await asyncio.sleep(1)
    log.warning("supervisor %d is gone", supervisor)
    stop.set()


async def _serve(
    settings: Settings, sock: socket.socket, index: int, supervisor: int | None
) -> None:
    app = build_app(settings, run_jobs=index == 0)
    in_flight = _InFlight()
    app.middlewares.insert(0, in_flight.middleware)
    runner = JsonErrorAppRunner(
        app,
        handle_signals=False,
        access_log=logging.getLogger("moorage.access") if settings.access_log else None,
        access_log_class=AccessLogger,
        shutdown_timeout=settings.shutdown_timeout_seconds,
    )
    await runner.setup()
    site = web.SockSite(runner, sock, ssl_context=tls_context(settings))
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    watchdog = None
    if supervisor is not None:
        watchdog = asyncio.create_task(_stop_when_orphaned(supervisor, stop))
    await stop.wait()
    if watchdog is not None:
        watchdog.cancel()
    log.info("worker %d stopping: finishing in-flight requests", index)
    await site.stop()  # new connections are refused from here on
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(settings.shutdown_timeout_seconds):
            await in_flight.idle()
    await runner.cleanup()


def run_worker(
    settings: Settings, sock: socket.socket, index: int, supervisor: int | None = None
) -> None:
    bound_large_allocations()
    asyncio.run(_serve(settings, sock, index, supervisor))
