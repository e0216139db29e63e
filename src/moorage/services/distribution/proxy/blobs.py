"""The blob half of a proxy cache: blobs pulled through from the upstream.

- A blob is fetched once (single flight within and across workers) and streamed to the client
  while it is stored (`LiveBlob`); the copy is committed only when its digest verifies. The
  HTTP side cuts a requested range out of the passing chunks. A HEAD of an uncached blob is a
  HEAD upstream: nothing is downloaded or stored.
- A blob another repository of the same proxy project holds is linked without upstream traffic.
- A cached image whose last blob arrives is announced (`image:cached`), so scan on push scans
  it; `fill_image` fetches what a requested scan needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Final

from moorage.coordination.base import HeldLock
from moorage.domain import mediatypes as mt
from moorage.domain.digest import Digest
from moorage.domain.errors import ErrorCode, RegistryError
from moorage.domain.events import SYSTEM, Actor, EventKind, RegistryEvent
from moorage.domain.manifest import parse_manifest
from moorage.domain.names import project_of
from moorage.hashing import new_resumable
from moorage.metadata.registry.registry_records import BlobBeingCollectedError
from moorage.services.distribution.proxy.config import ProxyConfig
from moorage.services.distribution.proxy.fetching import FetchContext, MayFetch
from moorage.services.distribution.proxy.upstream import (
    UpstreamBlob,
    UpstreamError,
    upstream_failure,
)
from moorage.services.registry.blob_claims import claim_blob, link_blob
from moorage.storage.base import StorageDriver

log = logging.getLogger("moorage.proxy")

_IMAGE_TYPES: Final = frozenset({mt.OCI_MANIFEST, mt.DOCKER_MANIFEST})


class LiveBlob:
    """A blob being fetched from the upstream: its chunks go to the client as they arrive and
    to storage; the copy is committed only when the whole blob matches its digest."""

    def __init__(
        self,
        size: int,
        chunks: AsyncGenerator[bytes, None],
        source: UpstreamBlob,
        finish: Callable[[], None],
    ) -> None:
        self.size = size
        self._chunks = chunks
        self._source = source
        self._finish = finish

    def chunks(self) -> AsyncIterator[bytes]:
        return self._chunks

    async def aclose(self) -> None:
        """Stop (when not finished): the partial copy is discarded, the fetch ends."""
        try:
            await self._chunks.aclose()
            await self._source.close()
        finally:
            self._finish()


class BlobCache:
    """Blob pulls of proxy-cache projects and filling images before scans (used through
    `ProxyCache`)."""

    def __init__(
        self, context: FetchContext, storage: StorageDriver, *, max_blob_bytes: int
    ) -> None:
        self._context = context
        self._storage = storage
        self._metadata = context.metadata
        self._threads = context.threads
        self._events = context.events
        self._flights = context.flights
        self._max_blob_bytes = max_blob_bytes
        self.stats = context.stats

    async def ensure_blob(
        self,
        config: ProxyConfig,
        repository: str,
        digest: Digest,
        actor: Actor,
        may_fetch: MayFetch,
        *,
        stream: bool,
    ) -> LiveBlob | None:
        """None when the blob is (now) stored and linked to `repository`; else, with `stream`,
        a LiveBlob this request must send to its client (it leads the upstream fetch)."""
        text = str(digest)
        if await self._present_blob(repository, text):
            return None
        upstream = self._context.upstream_name(config, repository)
        # Keyed by repository: a blob stored for another repository is never handed out here
        # on its digest alone (that would let a digest stand in for pull on that repository).
        key = f"blob:{repository}@{text}"
        for _ in range(3):
            waiting = self._flights.join(key)
            if waiting is not None:
                await asyncio.shield(waiting)
                if await self._present_blob(repository, text):
                    return None
                continue
            held: HeldLock | None = None
            try:
                held = await self._context.cross_process_lock(key)
                if await self._present_blob(repository, text):
                    held.release()
                    self._flights.finish(key)
                    return None
                await self._context.require_fetch(may_fetch, repository, text, actor)
                live = await self._start_blob(
                    config, repository, upstream, digest, actor, held, key
                )
            except BaseException:
                if held is not None:
                    held.release()
                self._flights.finish(key)
                raise
            if stream:
                return live
            await _drain(live)
            return None
        raise RegistryError(
            ErrorCode.BLOB_UNKNOWN, f"blob {digest} could not be fetched from the upstream"
        )

    async def head_blob(
        self,
        config: ProxyConfig,
        repository: str,
        digest: Digest,
        actor: Actor,
        may_fetch: MayFetch,
    ) -> int | None:
        """None when the blob is stored and linked to `repository`; else its size as the
        upstream's HEAD states it. Nothing is downloaded or stored: a HEAD only asks."""
        text = str(digest)
        if await self._present_blob(repository, text):
            return None
        upstream = self._context.upstream_name(config, repository)
        # Asking the upstream reveals what it holds: the same permission as fetching.
        await self._context.require_fetch(may_fetch, repository, text, actor)
        client = self._context.clients.client(config.endpoint)
        head = await self._context.upstream(
            client.head_blob(upstream, text), f"blob {digest} of {upstream}", ErrorCode.BLOB_UNKNOWN
        )
        self.stats.count("blob-head")
        if head.digest is not None and head.digest != text:
            raise RegistryError(
                ErrorCode.DIGEST_INVALID,
                f"the upstream answered for blob {digest} with the digest {head.digest[:100]}",
                status=502,
            )
        if head.size is None or head.size > self._max_blob_bytes:
            raise RegistryError(
                ErrorCode.SIZE_INVALID,
                f"the upstream's blob {digest} has no length or exceeds {self._max_blob_bytes}"
                " bytes",
                status=502,
            )
        return head.size

    async def _present_blob(self, repository: str, digest: str) -> bool:
        """Whether the blob is linked to `repository`, or can be without upstream traffic:
        another repository of the same proxy project holds it (so it came from the same
        upstream) and a manifest cached in this repository references it."""
        size = await self._threads.run(self._metadata.blob_size_in_repository, repository, digest)
        if size is not None:
            return True
        size = await self._threads.run(
            self._metadata.cached_blob_size, repository, digest, project_of(repository)
        )
        if size is None:
            return False
        try:
            await self._threads.run(self._metadata.link_blob, repository, digest, size)
        except BlobBeingCollectedError:
            return False  # fetched from the upstream instead, once the deletion is over
        self.stats.count("blob-linked")
        await self._images_completed(repository, digest, None)
        return True

    async def _images_completed(self, repository: str, blob: str, actor: Actor | None) -> None:
        """Announce the cached images this blob completed (scan on push scans them)."""
        completed = await self._threads.run(self._metadata.manifests_completed_by, repository, blob)
        for digest, media_type in completed:
            if media_type in _IMAGE_TYPES:
                self._events.publish(
                    RegistryEvent(
                        EventKind.IMAGE_CACHED,
                        repository,
                        digest,
                        media_type=media_type,
                        actor=actor or SYSTEM,
                    )
                )

    async def fill_image(
        self,
        config: ProxyConfig,
        repository: str,
        digest: str,
        actor: Actor,
        may_fetch: MayFetch,
    ) -> int:
        """Fetch every blob a cached manifest (and the cached children of an index) references
        that is not cached yet, through the same single flight as pulls; how many there were."""
        fetched = 0
        pending, seen = [digest], set[str]()
        while pending:
            current = pending.pop()
            if current in seen:
                continue
            seen.add(current)
            record = await self._threads.run(self._metadata.resolve_digest, repository, current)
            body = await self._threads.run(self._metadata.manifest_body, current)
            if record is None or body is None:
                continue
            parsed = parse_manifest(body, record.media_type, Digest.parse(current))
            pending.extend(str(child.digest) for child in parsed.children)
            missing = await self._threads.run(
                self._metadata.blobs_missing_from, repository, current
            )
            for blob in missing:
                await self.ensure_blob(
                    config, repository, Digest.parse(blob), actor, may_fetch, stream=False
                )
                fetched += 1
        return fetched

    async def _start_blob(
        self,
        config: ProxyConfig,
        repository: str,
        upstream: str,
        digest: Digest,
        actor: Actor,
        held: HeldLock,
        key: str,
    ) -> LiveBlob:
        client = self._context.clients.client(config.endpoint)
        source = await self._context.upstream(
            client.open_blob(upstream, str(digest)),
            f"blob {digest} of {upstream}",
            ErrorCode.BLOB_UNKNOWN,
        )
        if source.size is None or source.size > self._max_blob_bytes:
            await source.close()
            raise RegistryError(
                ErrorCode.SIZE_INVALID,
                f"the upstream's blob {digest} has no length or exceeds {self._max_blob_bytes}"
                " bytes",
                status=502,
            )
        self.stats.count("blob-fetched")
        size = source.size
        finished = False

        def finish() -> None:
            nonlocal finished
            if not finished:
                finished = True
                held.release()
                self._flights.finish(key)

        return LiveBlob(
            size, self._copy(source, repository, digest, size, actor, finish), source, finish
        )

    async def _copy(
        self,
        source: UpstreamBlob,
        repository: str,
        digest: Digest,
        size: int,
        actor: Actor,
        finish: Callable[[], None],
    ) -> AsyncGenerator[bytes, None]:
        upload_id = f"proxy-{secrets.token_hex(16)}"
        committed = False
        try:
            await self._threads.run(self._storage.create_upload, upload_id)
            writer = await self._threads.run(self._storage.open_upload, upload_id)
            try:
                hasher = new_resumable(digest.algorithm)
                # The last chunk is held back until the blob is verified, committed and
                # linked: a client that received every byte can pull it from the cache at once,
                # and a client of a blob that does not match never gets a complete body.
                held = b""
                try:
                    async for chunk in source.chunks():
                        if writer.size + len(chunk) > size:
                            raise RegistryError(
                                ErrorCode.SIZE_INVALID,
                                f"the upstream sent more than the {size} bytes of blob {digest}",
                                status=502,
                            )
                        writer.write(chunk)
                        hasher.update(chunk)
                        if held:
                            yield held
                        held = chunk
                except UpstreamError as error:
                    raise upstream_failure(
                        error, f"blob {digest}", ErrorCode.BLOB_UNKNOWN
                    ) from None
                actual = Digest(digest.algorithm, hasher.hexdigest())
                if writer.size != size or actual != digest:
                    self.stats.count("digest-mismatch")
                    log.error(
                        "upstream blob %s of %s arrived as %s (%d of %d bytes); discarded",
                        digest,
                        repository,
                        actual,
                        writer.size,
                        size,
                    )
                    raise RegistryError(
                        ErrorCode.DIGEST_INVALID,
                        f"the upstream's blob does not match {digest}; nothing was stored",
                        status=502,
                    )
                await claim_blob(self._metadata, self._threads, str(digest), size)
                await self._threads.run(writer.commit, digest)
                committed = True
            finally:
                writer.close()
            await link_blob(self._metadata, self._threads, repository, str(digest), size)
            self._events.publish(
                RegistryEvent(
                    EventKind.BLOB_CACHED, repository, str(digest), size=size, actor=actor
                )
            )
            await self._images_completed(repository, str(digest), actor)
            if held:
                yield held
        finally:
            await source.close()
            if not committed:
                with contextlib.suppress(OSError):
                    await self._threads.run(self._storage.delete_upload, upload_id)
            finish()


async def _drain(live: LiveBlob) -> None:
    try:
        async for _ in live.chunks():
            pass
    finally:
        await live.aclose()
