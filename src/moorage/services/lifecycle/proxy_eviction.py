"""The size cap of proxy-cache projects: least recently pulled artifacts go first.

A proxy-cache project over its limits is never refused (a pull must keep working); instead its
cached artifacts are removed from their repositories, least recently pulled first (an artifact
never pulled counts from when it was cached), until it fits again. Only metadata changes: the
manifest leaves its repository, and so do its blobs unless another manifest there still needs
them; the bytes are freed by the next garbage collection, and a later pull fetches the
artifact from the upstream again. An index's children go after it (the store refuses to
remove a child while its index is there).
"""

from __future__ import annotations

import contextlib
import logging

from moorage.coordination.base import Coordination
from moorage.domain.quotas import QuotaLimits, over_cap
from moorage.metadata.lifecycle.quota_store import QuotaStore
from moorage.metadata.registry.registry_records import StillReferencedError
from moorage.metadata.registry.store import MetadataStore
from moorage.services.threads import Threads

log = logging.getLogger("moorage.quotas")

_BATCH = 100  # candidates read at a time


class ProxyEviction:
    def __init__(
        self,
        metadata: MetadataStore,
        store: QuotaStore,
        threads: Threads,
        coordination: Coordination | None = None,
    ) -> None:
        self._metadata = metadata
        self._store = store
        self._threads = threads
        self._coordination = coordination

    async def evict(self, project: str, limits: QuotaLimits) -> tuple[int, int]:
        """Trim `project` under `limits`: (artifacts removed, bytes no longer counted).

        One evictor per project in the whole deployment: two workers that both saw the
        project over its cap would otherwise each remove an artifact, one too many.
        """
        if self._coordination is None:
            return await self._threads.run(self.evict_now, project, limits)
        held = await self._coordination.lock(f"quota-evict:{project}")
        try:
            return await self._threads.run(self.evict_now, project, limits)
        finally:
            held.release()

    def evict_now(self, project: str, limits: QuotaLimits) -> tuple[int, int]:
        """`evict` on the calling thread."""
        removed = freed = 0
        skipped: set[tuple[str, str]] = set()
        while over_cap(limits, self._store.record(project).usage):
            candidates = [
                artifact
                for artifact in self._store.least_recently_pulled(project, _BATCH + len(skipped))
                if artifact not in skipped
            ]
            if not candidates:
                break
            for repository, digest in candidates:
                if not over_cap(limits, self._store.record(project).usage):
                    break
                released = self._remove(project, repository, digest)
                if released is not None:
                    removed += 1
                    freed += released
                else:
                    skipped.add((repository, digest))
            else:
                if all(artifact in skipped for artifact in candidates):
                    break
        if removed:
            log.info(
                "proxy-cache project %s over its cap: evicted %d artifacts (%d bytes)",
                project,
                removed,
                freed,
            )
        return removed, freed

    def _remove(self, project: str, repository: str, digest: str) -> int | None:
        """Remove one artifact; the bytes the project no longer holds, None if it stays."""
        try:
            if self._metadata.delete_manifest(repository, digest) is None:
                return None
        except StillReferencedError:
            return None  # a child of an index still cached: it goes after the index
        released = 0
        for blob in self._store.blobs_of(digest):
            # Kept while another cached manifest of the repository needs it.
            with contextlib.suppress(StillReferencedError):
                if self._metadata.unlink_blob(repository, blob) and not self._store.holds(
                    project, blob
                ):
                    released += self._metadata.blob_size(blob) or 0
        return released
