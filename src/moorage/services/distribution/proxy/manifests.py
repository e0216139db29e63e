"""The manifest half of a proxy cache: manifests and tags pulled through from the upstream.

- Digest pulls never go upstream once cached. A tag pull after the tag's TTL asks the upstream
  with a HEAD (which Docker Hub does not count as a pull) whether the cached manifest is still
  current; if the upstream is down, slow or rate-limited, the cached manifest is served
  (stale-if-error), logged and counted.
- A missing manifest is fetched once (single flight within and across workers), checked against
  its digest, stored with the index children the platform filter admits, and announced
  (`manifest:cached`; `image:cached` when its blobs are all cached already).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Final

from moorage.domain.digest import Digest
from moorage.domain.errors import ErrorCode, RegistryError
from moorage.domain.events import Actor, EventKind, RegistryEvent
from moorage.domain.manifest import parse_manifest
from moorage.domain.names import Reference
from moorage.domain.proxy import platform_admitted
from moorage.services.distribution.proxy.config import ProxyConfig
from moorage.services.distribution.proxy.fetching import FetchContext, MayFetch
from moorage.services.distribution.proxy.upstream import UpstreamError

log = logging.getLogger("moorage.proxy")

# An index of indexes is followed this deep, no further.
_MAX_INDEX_DEPTH: Final = 2


class ManifestCache:
    """Manifest and tag pulls of proxy-cache projects (used through `ProxyCache`)."""

    def __init__(self, context: FetchContext, *, max_manifest_bytes: int) -> None:
        self._context = context
        self._metadata = context.metadata
        self._threads = context.threads
        self._events = context.events
        self._flights = context.flights
        self._max_manifest_bytes = max_manifest_bytes
        self.stats = context.stats

    async def ensure_manifest(
        self,
        config: ProxyConfig,
        repository: str,
        reference: Reference,
        actor: Actor,
        may_fetch: MayFetch,
    ) -> None:
        """Make sure the manifest `reference` names is stored and, for a tag, fresh enough."""
        upstream = self._context.upstream_name(config, repository)
        if reference.digest is not None:
            digest = str(reference.digest)
            if await self._threads.run(self._metadata.resolve_digest, repository, digest):
                return  # a digest never changes: no upstream traffic once cached
            await self._fetch_once(
                f"manifest:{repository}@{digest}",
                lambda: self._resolve_digest_local(repository, digest),
                lambda: self._context.require_fetch(may_fetch, repository, digest, actor),
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
                lambda: self._context.require_fetch(may_fetch, repository, tag, actor),
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
        client = self._context.clients.client(config.endpoint)
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
                held = await self._context.cross_process_lock(key)
                try:
                    if await present():
                        return
                    await permit()
                    await fetch()
                    return
                finally:
                    held.release()
            finally:
                self._flights.finish(key)
        await permit()
        await fetch()

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
        client = self._context.clients.client(config.endpoint)
        fetched = await self._context.upstream(
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


async def _permitted() -> None:
    """The permission was already checked."""
