"""A size-bounded LRU cache for immutable, digest-keyed content.

Only content addressed by its digest is cached, so entries can never become stale and every
worker process can keep its own copy without coordination.
"""

from __future__ import annotations

from collections import OrderedDict


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
