"""Stored manifests classified by content (`moorage.domain.content`), cached by digest.

The pull checks ask `runnable(digest)`: an image is, an artifact is not, and an index is when
any manifest it reaches through its children (at any depth) is. What cannot be read (a child
not stored yet, a walk past its bounds) counts as runnable, so it is judged rather than waved
through. Manifests are content-addressed, so a cached answer never goes stale.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Final

from moorage.domain.content import Classified, ManifestKind, classify_body
from moorage.metadata.registry.store import MetadataStore

MAX_INDEX_DEPTH: Final = 8
MAX_WALKED: Final = 1000
_CACHED: Final = 8192


class _Lru:
    def __init__(self, capacity: int) -> None:
        self._values: OrderedDict[str, object] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def get(self, key: str) -> object | None:
        with self._lock:
            value = self._values.get(key)
            if value is not None:
                self._values.move_to_end(key)
            return value

    def put(self, key: str, value: object) -> None:
        with self._lock:
            self._values[key] = value
            while len(self._values) > self._capacity:
                self._values.popitem(last=False)


class ManifestKinds:
    def __init__(self, metadata: MetadataStore) -> None:
        self._metadata = metadata
        self._kinds = _Lru(_CACHED)
        self._runnable = _Lru(_CACHED)

    def classify(self, digest: str, media_type: str | None = None) -> Classified | None:
        """The manifest's kind (None: not stored). Blocking."""
        cached = self._kinds.get(digest)
        if isinstance(cached, Classified):
            return cached
        body = self._metadata.manifest_body(digest)
        if body is None:
            return None
        found = classify_body(body, media_type)
        self._kinds.put(digest, found)
        return found

    def runnable(self, digest: str, media_type: str | None = None) -> bool:
        """Whether the manifest is an image or reaches one through index children. Blocking."""
        cached = self._runnable.get(digest)
        if isinstance(cached, bool):
            return cached
        seen: set[str] = set()
        answer = self._reaches_image(digest, media_type, 0, seen)
        self._runnable.put(digest, answer)
        return answer

    def _reaches_image(
        self, digest: str, media_type: str | None, depth: int, seen: set[str]
    ) -> bool:
        if digest in seen:
            return False
        seen.add(digest)
        if depth > MAX_INDEX_DEPTH or len(seen) > MAX_WALKED:
            return True
        found = self.classify(digest, media_type)
        if found is None:
            return True
        if found.kind is not ManifestKind.INDEX:
            return found.kind is ManifestKind.IMAGE
        return any(self._reaches_image(child, None, depth + 1, seen) for child in found.children)
