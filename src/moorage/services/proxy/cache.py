"""Pulls through a proxy cache: fill the cache from the upstream, keep tags fresh.

- Digest pulls never go upstream once cached. A tag pull after the tag's TTL asks the upstream
  with a HEAD (which Docker Hub does not count as a pull) whether the cached manifest is still
  current; if the upstream is down, slow or rate-limited, the cached manifest is served
  (stale-if-error), logged and counted.
- A blob is fetched once (single flight) and streamed to the client while it is stored; the copy
  is committed only when its digest verifies. A HEAD of an uncached blob is a HEAD upstream.
- A cached image whose last blob arrives is announced (`image:cached`), so scan on push scans
  it; `fill_image` fetches what a requested scan needs.
- Fetching new content is a separate decision from pulling (`upstream-fetch`), made at the edge
  and handed in as `may_fetch`; cached content needs only `pull`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, TypeVar

from moorage.domain import mediatypes as mt
from moorage.domain.digest import Digest
from moorage.domain.errors import ErrorCode, RegistryError
from moorage.domain.events import (
    SYSTEM,
    AccessEvent,
    Actor,
    EventKind,
    RegistryEvent,
)
from moorage.domain.manifest import parse_manifest
from moorage.domain.names import Reference, project_of
from moorage.domain.proxy import (
    platform_admitted,
    upstream_repository,
)
from moorage.hashing import new_resumable
from moorage.metadata.store import MetadataStore
from moorage.services.events import EventBus
from moorage.services.proxy.config import ProxyConfig, ProxyService
from moorage.services.proxy.flight import FileLocks, SingleFlight
from moorage.services.proxy.upstream import (
    UpstreamBlob,
    UpstreamClients,
    UpstreamError,
    upstream_failure,
)
from moorage.services.threads import Threads
from moorage.storage.base import StorageDriver

log = logging.getLogger("moorage.proxy")
T = TypeVar("T")

# An index of indexes is followed this deep, no further.
_MAX_INDEX_DEPTH: Final = 2
_LOCK_POLL_SECONDS: Final = 0.05
_IMAGE_TYPES: Final = frozenset({mt.OCI_MANIFEST, mt.DOCKER_MANIFEST})


@dataclass
class ProxyStats:
    """Counters of the proxy's work in this worker (logged; exported with metrics later)."""

    counts: Counter[str] = field(default_factory=Counter)

    def count(self, what: str) -> None:
        self.counts[what] += 1


# Whether the caller may bring new content in. Called with True when the pull fails without
# it (the HTTP side may then ask an anonymous client to sign in), False when a cached copy
# will be served anyway.
MayFetch = Callable[[bool], Awaitable[bool]]


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


class ProxyCache:
    def __init__(
        self,
        proxies: ProxyService,
        clients: UpstreamClients,
        storage: StorageDriver,
        metadata: MetadataStore,
        threads: Threads,
        events: EventBus,
        locks: FileLocks,
        *,
        max_manifest_bytes: int,
        max_blob_bytes: int,
    ) -> None:
        self._proxies = proxies
        self._clients = clients
        self._storage = storage
        self._metadata = metadata
        self._threads = threads
        self._events = events
        self._locks = locks
        self._flights = SingleFlight()
        self._max_manifest_bytes = max_manifest_bytes
        self._max_blob_bytes = max_blob_bytes
        self.stats = ProxyStats()

    async def config_for(self, project: str) -> ProxyConfig | None:
        hit, config = self._proxies.cached_config_of(project)
        if hit:
            return config
        return await self._threads.run(self._proxies.config_of, project)

    async def check(self, config: ProxyConfig) -> None:
        """Reach the upstream and sign in (UpstreamError when that fails)."""
        await self._clients.client(config.endpoint).check()

    def _upstream_name(self, config: ProxyConfig, repository: str) -> str:
        name = upstream_repository(config.endpoint.project, repository, config.endpoint.flavor)
        if name is None:
            raise RegistryError(
                ErrorCode.NAME_UNKNOWN,
                f"{repository} is the proxy-cache project itself; pull"
                f" {config.endpoint.project}/<upstream repository>",
            )
        return name

    # -- manifests

    async def ensure_manifest(
        self,
        config: ProxyConfig,
        repository: str,
        reference: Reference,
        actor: Actor,
        may_fetch: MayFetch,
    ) -> None:
        """Make sure the manifest `reference` names is stored and, for a tag, fresh enough."""
        upstream = self._upstream_name(config, repository)
        if reference.digest is not None:
            digest = str(reference.digest)
            if await self._threads.run(self._metadata.resolve_digest, repository, digest):
                return  # a digest never changes: no upstream traffic once cached
            await self._fetch_once(
                f"manifest:{repository}@{digest}",
                lambda: self._resolve_digest_local(repository, digest),
                lambda: self._require_fetch(may_fetch, repository, digest, actor),
                lambda: self._fetch_manifest(config, repository, upstream, digest, None, actor),
            )
            return
        tag = reference.tag
        assert tag is not None
        record = await self._threads.run(self._metadata.resolve_tag, repository, tag)
        if record is None:
            await self._fetch_once(
                f"manifest:{repository}:{tag}",
                lambda: self._tag_present(repository, tag),
                lambda: self._require_fetch(may_fetch, repository, tag, actor),
                lambda: self._fetch_manifest(config, repository, upstream, tag, tag, actor),
            )
            return
        checked = await self._threads.run(self._metadata.tag_checked_at, repository, tag)
        now = datetime.now(UTC)
        if checked is not None and now - checked < config.tag_ttl:
            self.stats.count("tag-fresh")
            return
        # One check per stale tag at a time in this worker; the others serve what the check
        # leaves in the cache.
        key = f"check:{repository}:{tag}"
        waiting = self._flights.join(key)
        if waiting is not None:
            await asyncio.shield(waiting)
            return
        try:
            await self._revalidate(
                config, repository, upstream, tag, record.digest, actor, may_fetch
            )
        finally:
            self._flights.finish(key)

    async def _revalidate(
        self,
        config: ProxyConfig,
        repository: str,
        upstream: str,
        tag: str,
        cached_digest: str,
        actor: Actor,
        may_fetch: MayFetch,
    ) -> None:
        client = self._clients.client(config.endpoint)
        try:
            head = await client.head_manifest(upstream, tag)
        except UpstreamError as error:
            self._serve_stale(repository, tag, error)
            return
        self.stats.count("tag-revalidated")
        if head.digest == cached_digest:
            await self._threads.run(
                self._metadata.mark_tag_checked, repository, tag, datetime.now(UTC)
            )
            self._events.publish(
                RegistryEvent(
                    EventKind.TAG_REVALIDATED, repository, cached_digest, tag, actor=actor
                )
            )
            return
        if not await may_fetch(False):
            log.info(
                "tag %s:%s changed upstream; the caller may not fetch it, serving the cached copy",
                repository,
                tag,
            )
            return
        try:
            await self._fetch_once(
                f"manifest:{repository}:{tag}",
                lambda: self._tag_is(repository, tag, head.digest),
                _permitted,
                lambda: self._fetch_manifest(config, repository, upstream, tag, tag, actor),
            )
        except RegistryError as error:
            # The upstream changed the tag but the new manifest could not be fetched.
            self._serve_stale(repository, tag, UpstreamError("fetch-failed", error.message))

    def _serve_stale(self, repository: str, tag: str, error: UpstreamError) -> None:
        self.stats.count(f"stale-served:{error.kind}")
        log.warning(
            "upstream check of %s:%s failed (%s: %s); serving the cached manifest"
            " (stale-if-error, %d so far in this worker)",
            repository,
            tag,
            error.kind,
            error,
            sum(v for k, v in self.stats.counts.items() if k.startswith("stale-served:")),
        )

    async def _resolve_digest_local(self, repository: str, digest: str) -> bool:
        found = await self._threads.run(self._metadata.resolve_digest, repository, digest)
        return found is not None

    async def _tag_present(self, repository: str, tag: str) -> bool:
        found = await self._threads.run(self._metadata.resolve_tag, repository, tag)
        return found is not None

    async def _tag_is(self, repository: str, tag: str, digest: str | None) -> bool:
        found = await self._threads.run(self._metadata.resolve_tag, repository, tag)
        return found is not None and found.digest == digest

    async def _require_fetch(
        self, may_fetch: MayFetch, repository: str, what: str, actor: Actor
    ) -> None:
        if await may_fetch(True):
            return
        self.stats.count("fetch-refused")
        message = (
            f"{repository} {what} is not cached, and bringing new content in from the upstream"
            " needs the upstream-fetch permission"
        )
        self._events.publish(
            AccessEvent(
                "access:denied",
                actor,
                "denied",
                project_of(repository),
                f"{repository}:{what}"[:500],
                {"action": "upstream-fetch", "reason": message},
            )
        )
        raise RegistryError(ErrorCode.DENIED, message)

    async def _fetch_once(
        self,
        key: str,
        present: Callable[[], Awaitable[bool]],
        permit: Callable[[], Awaitable[None]],
        fetch: Callable[[], Awaitable[None]],
    ) -> None:
        """Run `fetch` unless another request of any worker is fetching (or has fetched) the
        same object: then wait for it and re-check. Only a request that would fetch itself
        needs the permission (`permit` raises without it): waiting for another's fetch serves
        what is cached."""
        for _ in range(3):
            waiting = self._flights.join(key)
            if waiting is not None:
                await asyncio.shield(waiting)
                if await present():
                    return
                continue
            try:
                fd = await self._cross_process_lock(key)
                try:
                    if await present():
                        return
                    await permit()
                    await fetch()
                    return
                finally:
                    FileLocks.release(fd)
            finally:
                self._flights.finish(key)
        await permit()
        await fetch()

    async def _cross_process_lock(self, key: str) -> int:
        while True:
            fd = await self._threads.run(self._locks.try_acquire, key)
            if fd is not None:
                return fd
            await asyncio.sleep(_LOCK_POLL_SECONDS)

    async def _fetch_manifest(
        self,
        config: ProxyConfig,
        repository: str,
        upstream: str,
        reference: str,
        tag: str | None,
        actor: Actor,
        depth: int = 0,
    ) -> None:
        client = self._clients.client(config.endpoint)
        fetched = await self._upstream(
            client.get_manifest(upstream, reference, self._max_manifest_bytes),
            f"manifest {reference} of {upstream}",
            ErrorCode.MANIFEST_UNKNOWN,
        )
        self.stats.count("manifest-fetched")
        wanted = Digest.parse(reference) if tag is None else None
        digest = Digest.of(fetched.body, wanted.algorithm if wanted else "sha256")
        announced = fetched.digest
        if (wanted is not None and digest != wanted) or (
            announced is not None
            and announced.startswith(f"{digest.algorithm}:")
            and announced != str(digest)
        ):
            raise RegistryError(
                ErrorCode.DIGEST_INVALID,
                f"the upstream's manifest {reference} of {upstream} does not match its digest;"
                " nothing was stored",
                status=502,
            )
        manifest = parse_manifest(fetched.body, fetched.media_type, digest)
        if manifest.is_index and depth < _MAX_INDEX_DEPTH:
            for child in manifest.children:
                if not platform_admitted(config.platforms, child.platform):
                    continue
                child_digest = str(child.digest)
                if await self._resolve_digest_local(repository, child_digest):
                    continue
                await self._fetch_manifest(
                    config, repository, upstream, child_digest, None, actor, depth + 1
                )
        await self._threads.run(
            lambda: self._metadata.put_manifest(
                repository, manifest, fetched.body, tag, cached_at=datetime.now(UTC)
            )
        )
        self._events.publish(
            RegistryEvent(
                EventKind.MANIFEST_CACHED,
                repository,
                str(digest),
                tag,
                manifest.media_type,
                manifest.size,
                actor,
            )
        )
        if not manifest.is_index and not await self._threads.run(
            self._metadata.blobs_missing_from, repository, str(digest)
        ):
            # Its blobs were all cached already (layers shared with another image).
            self._events.publish(
                RegistryEvent(
                    EventKind.IMAGE_CACHED,
                    repository,
                    str(digest),
                    media_type=manifest.media_type,
                    actor=actor,
                )
            )

    async def _upstream(self, call: Awaitable[T], what: str, missing: ErrorCode) -> T:
        """Await an upstream call; its failure becomes a clear registry error."""
        try:
            return await call
        except UpstreamError as error:
            raise upstream_failure(error, what, missing) from None

    # -- blobs

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
        upstream = self._upstream_name(config, repository)
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
            fd: int | None = None
            try:
                fd = await self._cross_process_lock(key)
                if await self._present_blob(repository, text):
                    FileLocks.release(fd)
                    self._flights.finish(key)
                    return None
                await self._require_fetch(may_fetch, repository, text, actor)
                live = await self._start_blob(config, repository, upstream, digest, actor, fd, key)
            except BaseException:
                if fd is not None:
                    FileLocks.release(fd)
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
        upstream = self._upstream_name(config, repository)
        # Asking the upstream reveals what it holds: the same permission as fetching.
        await self._require_fetch(may_fetch, repository, text, actor)
        client = self._clients.client(config.endpoint)
        head = await self._upstream(
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
        await self._threads.run(self._metadata.link_blob, repository, digest, size)
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
        fd: int,
        key: str,
    ) -> LiveBlob:
        client = self._clients.client(config.endpoint)
        source = await self._upstream(
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
                FileLocks.release(fd)
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
                await self._threads.run(writer.commit, digest)
                committed = True
            finally:
                writer.close()
            await self._threads.run(self._metadata.link_blob, repository, str(digest), size)
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


async def _permitted() -> None:
    """The permission was already checked."""
