"""Per-process caches.

`DigestCache` holds immutable, digest-keyed content: entries can never become stale, so every
worker process keeps its own copy without coordination. `TtlCache` holds facts that may be a
little old (access facts, project existence, immutable tag rules): each worker forgets them
after a few seconds, and at once after a change it made itself.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class DigestCache:
    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._bytes = 0
        self._entries: OrderedDict[str, bytes] = OrderedDict()

    def get(self, digest: str) -> bytes | None:
        value = self._entries.get(digest)
        if value is not None:
            self._entries.move_to_end(digest)
        return value

    def put(self, digest: str, value: bytes) -> None:
        if len(value) > self._max_bytes // 4 or digest in self._entries:
            return
        self._entries[digest] = value
        self._bytes += len(value)
        while self._bytes > self._max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= len(evicted)


class TtlCache:
    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._values: dict[Any, tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def peek(self, key: Any) -> tuple[bool, Any]:
        """(True, value) when a fresh value is cached; never loads (safe on the event loop)."""
        hit = self._values.get(key)
        if hit is not None and hit[0] > time.monotonic():
            return True, hit[1]
        return False, None

    def get_or_load(self, key: Any, load: Callable[[], T]) -> T:
        now = time.monotonic()
        hit = self._values.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]  # type: ignore[no-any-return]
        value = load()
        with self._lock:
            if len(self._values) > 10_000:
                self._values.clear()
            self._values[key] = (now + self._seconds, value)
        return value

    def clear(self) -> None:
        with self._lock:
            self._values.clear()
