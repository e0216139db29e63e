"""Process model: migrate once, then serve from one process or from N forked workers.

With N workers the supervisor binds N listening sockets to the same port with SO_REUSEPORT
before forking, so the kernel spreads connections evenly and port 0 resolves once. SIGTERM stops
accepting, lets in-flight requests finish (up to the shutdown timeout) and exits 0; upload
sessions live in storage and the database, so they survive for resumption.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import ssl
import sys
import time

from aiohttp import web
from aiohttp.typedefs import Handler

from moorage.config import Settings
from moorage.http.app import build_app
from moorage.metadata.database import make_engine, migrate
from moorage.metadata.iam_store import IamStore
from moorage.services.audit import AuditLog
from moorage.services.events import EventBus
from moorage.services.identity import IdentityPolicy, IdentityService
from moorage.services.tokens import ensure_signing_key

log = logging.getLogger("moorage.server")

_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def prepare_data(settings: Settings) -> None:
    """Migrate the schema, create the first signing key and the `admin` account (once)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.resolved_database_url, pool_size=1)
    try:
        migrate(engine)
        store = IamStore(engine)
        ensure_signing_key(store)
        events = EventBus()
        events.subscribe(AuditLog(store, immediate=True))
        identity = IdentityService(
            store, events, IdentityPolicy(min_password_length=settings.min_password_length)
        )
        generated = identity.bootstrap_admin(settings.initial_admin_password())
        if generated is not None:
            log.warning(
                "created the admin account with a generated password, shown only this once: %s"
                " -- change it, or set MOORAGE_ADMIN_PASSWORD before the first start",
                generated,
            )
    finally:
        engine.dispose()


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """HTTPS (TLS 1.2 or newer), and client certificate checking when configured."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    if settings.tls_client_ca is not None:
        context.load_verify_locations(cafile=str(settings.tls_client_ca))
        context.verify_mode = {
            "none": ssl.CERT_NONE,
            "optional": ssl.CERT_OPTIONAL,
            "required": ssl.CERT_REQUIRED,
        }[settings.tls_client_auth]
    return context


def bind_sockets(settings: Settings, count: int) -> list[socket.socket]:
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sockets: list[socket.socket] = []
    port = settings.port
    for _ in range(count):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((settings.host, port))
        port = sock.getsockname()[1]
        sock.listen(1024)
        sock.setblocking(False)
        sockets.append(sock)
    return sockets


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
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=logging.getLogger("moorage.access") if settings.access_log else None,
        shutdown_timeout=settings.shutdown_timeout_seconds,
    )
    await runner.setup()
    site = web.SockSite(runner, sock, ssl_context=tls_context(settings))
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in _STOP_SIGNALS:
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
    asyncio.run(_serve(settings, sock, index, supervisor))


def serve(settings: Settings) -> int:
    prepare_data(settings)
    sockets = bind_sockets(settings, settings.workers)
    host, port = sockets[0].getsockname()[:2]
    log.info(
        "moorage listening on %s:%d with %d worker(s), data in %s",
        host,
        port,
        settings.workers,
        settings.data_dir,
    )
    if settings.workers == 1:
        run_worker(settings, sockets[0], 0)
        return 0
    return _supervise(settings, sockets)


def _supervise(settings: Settings, sockets: list[socket.socket]) -> int:
    watched = _STOP_SIGNALS | {signal.SIGCHLD}
    signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    children: dict[int, int] = {}  # pid -> worker index
    supervisor = os.getpid()

    def spawn(index: int) -> None:
        pid = os.fork()
        if pid == 0:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, watched)
            for other, sock in enumerate(sockets):
                if other != index:
                    sock.close()
            code = 0
            try:
                run_worker(settings, sockets[index], index, supervisor)
            except BaseException:
                log.exception("worker %d crashed", index)
                code = 1
            finally:
                logging.shutdown()
                os._exit(code)
        children[pid] = index

    for index in range(len(sockets)):
        spawn(index)

    stopping = False
    while children:
        info = signal.sigwaitinfo(watched)
        if info.si_signo in _STOP_SIGNALS and not stopping:
            stopping = True
            for pid in children:
                _kill(pid, signal.SIGTERM)
            # Our copies kept the listening sockets open (to respawn workers on them): close
            # them, or the kernel keeps queueing connections nobody will ever accept.
            for sock in sockets:
                sock.close()
            continue
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            index = children.pop(pid, -1)
            if index >= 0 and not stopping:
                log.error("worker %d exited (status %d); restarting it", index, status)
                time.sleep(0.5)
                spawn(index)
    return 0


def _kill(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s",
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
