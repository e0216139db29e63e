"""Coordination on one machine: the workers share the data directory.

Locks are `flock`s on a fixed set of files, so a worker that dies (even `kill -9`) lets go at
once. Periodic jobs already run in one worker only, and caches of other workers expire on
their own within 2 s, so neither needs anything here.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import os
from pathlib import Path
from typing import Final

from moorage.coordination.base import Invalidated

_POLL_SECONDS: Final = 0.05


class FileLocks:
    """Cross-process exclusive locks over a fixed set of lock files (workers share the data
    directory). Keys are spread over the files by hash, so the files never grow in number;
    two keys that share a file merely take turns."""

    STRIPES: Final = 4096

    def __init__(self, directory: Path) -> None:
        self._directory = directory

    def _path(self, key: str) -> Path:
        stripe = int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") % self.STRIPES
        return self._directory / f"{stripe:04x}.lock"

    def try_acquire(self, key: str) -> int | None:
        self._directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._path(key), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return None
            raise
        return fd

    @staticmethod
    def release(fd: int) -> None:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


class _FileLock:
    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            FileLocks.release(fd)


class LocalCoordination:
    def __init__(self, lock_directory: Path) -> None:
        self.files = FileLocks(lock_directory)

    async def start(self, on_invalidated: Invalidated) -> None:
        return None

    async def close(self) -> None:
        return None

    async def lock(self, key: str) -> _FileLock:
        while True:
            # On the loop, not in a thread: a cancelled wait must not leave a taken lock
            # behind (a non-blocking flock on a local file costs microseconds).
            fd = self.files.try_acquire(key)
            if fd is not None:
                return _FileLock(fd)
            await asyncio.sleep(_POLL_SECONDS)

    async def run_once(self, job: str, seconds: float) -> bool:
        return True

    def invalidate(self, name: str) -> None:
        return None

    async def ping(self, within: float) -> bool:
        return True
