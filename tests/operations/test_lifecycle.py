"""The process model: forked workers, graceful stop, sessions across restarts, expiry purge."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator

import httpx
import psutil
import pytest

from tests.support.auth import RegistryAuth
from tests.support.images import (
    BackgroundRequest,
    Blob,
    HeldBody,
    bearer,
    fetch_blob,
    file_size,
    finish_upload,
    patch_chunk,
    push_blob,
    push_token,
    registry_token,
    sha256_digest,
    start_upload,
    stored_size,
    upload_id,
)
from tests.support.processes import kill_group
from tests.support.server import RegistryProcess
from tests.support.wait import wait_until

WORKERS = pytest.mark.parametrize("workers", [1, 2], ids=["1-worker", "2-workers"])


def ping_token(server: RegistryProcess) -> str:
    """A token without repository scopes: enough for the version check `GET /v2/`."""
    return registry_token(server.url)


def ping(server: RegistryProcess, token: str) -> int:
    return httpx.get(f"{server.url}/v2/", headers=bearer(token), timeout=10).status_code


def worker_pids(server: RegistryProcess) -> set[int]:
    assert server.process is not None
    return {child.pid for child in psutil.Process(server.process.pid).children()}


@contextlib.contextmanager
def open_keepalive_connections(server: RegistryProcess, count: int) -> Iterator[set[int]]:
    """`count` connections that each completed a request and stay open; their local ports."""
    request = (
        f"GET /v2/ HTTP/1.1\r\nHost: registry\r\nAuthorization: Bearer {ping_token(server)}\r\n\r\n"
    )
    with contextlib.ExitStack() as stack:
        ports = set()
        for _ in range(count):
            connection = stack.enter_context(socket.create_connection(("127.0.0.1", server.port)))
            connection.settimeout(30)
            connection.sendall(request.encode())
            reply = connection.recv(65536)
            assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
            ports.add(connection.getsockname()[1])
        yield ports


def served_client_ports(pid: int, server_port: int) -> set[int]:
    return {
        connection.raddr.port
        for connection in psutil.Process(pid).net_connections(kind="tcp")
        if connection.status == psutil.CONN_ESTABLISHED
        and connection.laddr.port == server_port
        and connection.raddr
    }


def test_two_workers_share_the_port(start_registry: Callable[..., RegistryProcess]) -> None:
    server = start_registry(workers=2)
    workers = worker_pids(server)
    assert len(workers) == 2

    # The kernel spreads connections over both workers' sockets; 32 connections all landing
    # on one of two sockets would be a one in two billion chance.
    with open_keepalive_connections(server, 32) as client_ports:
        served = {pid: served_client_ports(pid, server.port) for pid in workers}
    assert set().union(*served.values()) == client_ports
    assert all(served.values()), f"a worker served nothing: {served}"


def test_a_killed_worker_is_replaced(start_registry: Callable[..., RegistryProcess]) -> None:
    server = start_registry(workers=2)
    victim, survivor = sorted(worker_pids(server))
    os.kill(victim, signal.SIGKILL)

    wait_until(lambda: len(worker_pids(server) - {victim}) == 2, message="a replacement worker")
    assert survivor in worker_pids(server)
    # Whichever socket a new connection lands on, a live worker answers it.
    token = ping_token(server)
    for _ in range(20):
        assert ping(server, token) == 200


def has_exited(process: psutil.Process) -> bool:
    # An orphan is reaped by whatever adopted it; until then it lingers as a zombie.
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_workers_stop_when_the_supervisor_is_killed(
    start_registry: Callable[..., RegistryProcess],
) -> None:
    server = start_registry(workers=2)
    assert server.process is not None
    workers = [psutil.Process(pid) for pid in worker_pids(server)]
    try:
        server.process.kill()  # only the supervisor: it gets no chance to stop its workers
        server.process.wait(10)
        server.process = None
        wait_until(lambda: all(map(has_exited, workers)), message="the orphaned workers to exit")
        assert connection_refused(server)
    finally:
        for worker in workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                worker.kill()

    server.start()  # the same port and data directory are free to use again
    assert ping(server, ping_token(server)) == 200


def connection_refused(server: RegistryProcess) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


def wait_for_exit(server: RegistryProcess, timeout: float = 30) -> int:
    assert server.process is not None
    code = server.process.wait(timeout)
    kill_group(server.process)  # nothing of its process group may outlive it
    server.process = None
    return code


@WORKERS
def test_sigterm_lets_a_streaming_patch_finish(
    start_registry: Callable[..., RegistryProcess], workers: int
) -> None:
    server = start_registry(workers=workers)
    repository = "life/graceful"
    data = os.urandom(2 * 1024 * 1024 + 99)
    with httpx.Client(base_url=server.url, timeout=60, auth=RegistryAuth()) as client:
        location = start_upload(client, repository)
    body = HeldBody(data, hold_at=1024 * 1024)
    request = BackgroundRequest(
        server.url,
        "PATCH",
        location,
        content=iter(body),
        headers={
            **bearer(push_token(server.url, repository)),
            "Content-Type": "application/octet-stream",
            "Content-Length": str(len(data)),
            "Content-Range": f"0-{len(data) - 1}",
        },
    )
    stored = server.data_dir / "storage" / "uploads" / upload_id(location)
    wait_until(lambda: file_size(stored) == body.hold_at, message="the first half to reach storage")

    assert server.process is not None
    server.process.send_signal(signal.SIGTERM)
    wait_until(
        lambda: connection_refused(server), message="the server to stop accepting connections"
    )
    assert request.response is None  # still streaming while new connections are refused
    body.release.set()
    request.join()

    assert request.error is None, repr(request.error)
    assert request.response is not None
    assert request.response.status_code == 202, request.response.text
    assert stored_size(request.response.headers["Range"]) == len(data)
    assert wait_for_exit(server) == 0
    assert connection_refused(server)

    server.start()
    with httpx.Client(base_url=server.url, timeout=60, auth=RegistryAuth()) as client:
        finish_upload(client, location, sha256_digest(data))
        assert fetch_blob(client, repository, sha256_digest(data)) == data


def test_sigterm_lets_a_download_finish(start_registry: Callable[..., RegistryProcess]) -> None:
    server = start_registry(workers=2)
    blob = Blob("application/octet-stream", os.urandom(48 * 1024 * 1024))
    with httpx.Client(base_url=server.url, timeout=60, auth=RegistryAuth()) as client:
        push_blob(client, "life/download", blob)
        with client.stream("GET", f"/v2/life/download/blobs/{blob.digest}") as response:
            pieces = response.iter_bytes(64 * 1024)
            received = bytearray(next(pieces))
            assert server.process is not None
            server.process.send_signal(signal.SIGTERM)
            wait_until(lambda: connection_refused(server), message="the server to stop accepting")
            for piece in pieces:
                received += piece
    assert bytes(received) == blob.data
    assert wait_for_exit(server) == 0


def test_upload_session_survives_restart(start_registry: Callable[..., RegistryProcess]) -> None:
    server = start_registry()
    repository = "life/resume"
    data = os.urandom(900_000)
    with httpx.Client(base_url=server.url, timeout=60, auth=RegistryAuth()) as client:
        location = start_upload(client, repository)
        location = patch_chunk(client, location, data[:300_000], 0).headers["Location"]
    assert server.stop() == 0

    server.start()
    with httpx.Client(base_url=server.url, timeout=60, auth=RegistryAuth()) as client:
        status = client.get(location)
        assert status.status_code == 204
        assert stored_size(status.headers["Range"]) == 300_000
        assert status.headers["Docker-Upload-UUID"] == upload_id(location)
        location = patch_chunk(client, location, data[300_000:600_000], 300_000).headers["Location"]
        finish_upload(client, location, sha256_digest(data), data[600_000:], 600_000)
        assert fetch_blob(client, repository, sha256_digest(data)) == data


def test_expired_sessions_and_orphaned_files_are_purged(
    start_registry: Callable[..., RegistryProcess],
) -> None:
    server = start_registry(
        env={"MOORAGE_UPLOAD_EXPIRY_SECONDS": "1", "MOORAGE_UPLOAD_PURGE_INTERVAL_SECONDS": "1"}
    )
    repository = "life/expiry"
    uploads = server.data_dir / "storage" / "uploads"
    # A file no session owns, as a crash between creating it and recording the session leaves.
    orphan = uploads / "orphan-from-a-crash"
    orphan.write_bytes(b"leftover")
    an_hour_ago = time.time() - 3600
    os.utime(orphan, (an_hour_ago, an_hour_ago))
    with httpx.Client(base_url=server.url, timeout=60, auth=RegistryAuth()) as client:
        location = start_upload(client, repository)
        patch_chunk(client, location, b"x" * 1000, 0)
        session_file = uploads / upload_id(location)
        assert session_file.exists()

        wait_until(
            lambda: not session_file.exists(), message="the expired session's file to be purged"
        )
        wait_until(lambda: not orphan.exists(), message="the orphaned upload file to be purged")
        response = client.get(location)
        assert response.status_code == 404
        assert response.json()["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN"
        assert client.patch(location, content=b"more").status_code == 404

        # The registry keeps working for new sessions.
        fresh = start_upload(client, repository)
        finish_upload(client, fresh, sha256_digest(b"fresh"), b"fresh", 0)
