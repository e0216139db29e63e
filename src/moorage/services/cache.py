"""Per-process caches.

`DigestCache` holds immutable, digest-keyed content: entries can never become stale, so every
worker process keeps its own copy without coordination. `TtlCache` holds facts that may be a
little old (access facts, project existence, immutable tag rules): each worker forgets them
after a few seconds, and at once after a change it made itself. Every `TtlCache` has a name;
with a coordination that broadcasts (Redis), clearing a cache also tells every other process
and node to clear theirs (`invalidated` is the receiving end), and the expiry stays the bound
when a message is lost.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

from moorage.coordination.base import ALL_CACHES

T = TypeVar("T")

# Every live TtlCache of this process by name, and where a change is announced (None: nowhere;
# one machine relies on the expiry).
_named: dict[str, weakref.WeakSet[TtlCache]] = {}
_named_lock = threading.Lock()
_announce: Callable[[str], None] | None = None


def announce_invalidations(announce: Callable[[str], None] | None) -> None:
    """Where `TtlCache.clear` tells the other processes (thread-safe, non-blocking)."""
    global _announce
    _announce = announce


def invalidated(name: str) -> None:
    """Another process changed what the caches called `name` hold (`*`: anything)."""
    with _named_lock:
        if name == ALL_CACHES:
            caches = [cache for group in _named.values() for cache in group]
        else:
            caches = list(_named.get(name, ()))
    for cache in caches:
        cache.forget()


def clear_all_caches() -> None:
    """After a change that many caches may hold facts of (a project deleted, with its
    configuration): forget everything here, and tell the other processes and nodes."""
    invalidated(ALL_CACHES)
    announce = _announce
    if announce is not None:
        announce(ALL_CACHES)


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
    def __init__(self, seconds: float, *, name: str) -> None:
        self._seconds = seconds
        self._values: dict[Any, tuple[float, Any]] = {}
        self._lock = threading.Lock()
        self.name = name
        self._generation = 0  # moves on every forget: a load that raced one is not kept
        with _named_lock:
            _named.setdefault(name, weakref.WeakSet()).add(self)

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
        generation = self._generation
        value = load()
        with self._lock:
            if generation != self._generation:
                return value
            if len(self._values) > 10_000:
                self._values.clear()
            self._values[key] = (now + self._seconds, value)
        return value

    def clear(self) -> None:
        """After a change: forget here, and tell the other processes and nodes."""
        self.forget()
        announce = _announce
        if announce is not None:
            announce(self.name)

    def forget(self) -> None:
        with self._lock:
            self._generation += 1
            self._values.clear()
