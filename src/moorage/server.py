"""Process model: migrate once, then serve from one process or from N forked workers.

With N workers the supervisor binds N listening sockets to the same port with SO_REUSEPORT
before forking, so the kernel spreads connections evenly and port 0 resolves once. SIGTERM stops
accepting, lets in-flight requests finish (up to the shutdown timeout) and exits 0; upload
sessions live in storage and the database, so they survive for resumption.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import ssl
import time
from collections.abc import Callable

from moorage.config import Settings
from moorage.logs import LogFormat, configure

log = logging.getLogger("moorage.server")

STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def prepare_data(settings: Settings) -> None:
    """Migrate the schema, create the first signing key and the `admin` account (once)."""
    from moorage.bootstrap import prepare_data as prepare

    prepare(settings)


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


def serve(settings: Settings) -> int:
    if settings.workers == 1:
        prepare_data(settings)
    else:
        # The supervisor never imports the application: preparing the data directory in a
        # short-lived child keeps it small for as long as it runs.
        _in_child(prepare_data, settings)
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
        from moorage.worker import run_worker

        run_worker(settings, sockets[0], 0)
        return 0
    return _supervise(settings, sockets)


def _in_child(work: Callable[[Settings], None], settings: Settings) -> None:
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            work(settings)
        except BaseException:
            log.exception("preparing %s failed", settings.data_dir)
            code = 1
        finally:
            logging.shutdown()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"could not prepare the data directory {settings.data_dir}")


def _supervise(settings: Settings, sockets: list[socket.socket]) -> int:
    watched = STOP_SIGNALS | {signal.SIGCHLD}
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
                from moorage.worker import run_worker

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
        if info.si_signo in STOP_SIGNALS and not stopping:
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


def configure_logging(level: str, log_format: LogFormat = "text") -> None:
    # One formatter for every logger, so no input can forge a record (see moorage.logs).
    configure(level, log_format)
