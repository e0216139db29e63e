"""Single flight: concurrent pulls of one uncached object cause one upstream fetch.

Within a worker the others wait for the first (a shared future); across workers a file lock
per object orders them, and whoever gets it after the first finds the object stored.
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
