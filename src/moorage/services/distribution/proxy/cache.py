"""Pulls through a proxy cache: the one object the pull path and the API hold (`ProxyCache`).

It builds the manifest half (`manifests`: tag TTL, HEAD revalidation, stale-if-error) and the
blob half (`blobs`: streamed fetches, HEAD upstream, filling images before scans) on one shared
`FetchContext`, so both use the same single flight, cross-node locks and counters, and hands each
call to its half.

Fetching new content is a separate decision from pulling (`upstream-fetch`), made at the edge
and handed in as `may_fetch`; cached content needs only `pull`.
"""

from __future__ import annotations

from moorage.coordination.base import Coordination
from moorage.domain.digest import Digest
from moorage.domain.events import Actor
from moorage.domain.names import Reference
from moorage.metadata.registry.store import MetadataStore
from moorage.services.distribution.proxy.blobs import BlobCache, LiveBlob
from moorage.services.distribution.proxy.config import ProxyConfig, ProxyService
from moorage.services.distribution.proxy.fetching import FetchContext, MayFetch
from moorage.services.distribution.proxy.manifests import ManifestCache
from moorage.services.distribution.proxy.upstream import UpstreamClients
from moorage.services.events import EventBus
from moorage.services.threads import Threads
from moorage.storage.base import StorageDriver


class ProxyCache:
    def __init__(
        self,
        proxies: ProxyService,
        clients: UpstreamClients,
        storage: StorageDriver,
        metadata: MetadataStore,
        threads: Threads,
        events: EventBus,
        coordination: Coordination,
        *,
        max_manifest_bytes: int,
        max_blob_bytes: int,
    ) -> None:
        self._proxies = proxies
        self._threads = threads
        context = FetchContext(clients, metadata, threads, events, coordination)
        self._context = context
        self._manifests = ManifestCache(context, max_manifest_bytes=max_manifest_bytes)
        self._blobs = BlobCache(context, storage, max_blob_bytes=max_blob_bytes)
        self.stats = context.stats

    async def config_for(self, project: str) -> ProxyConfig | None:
        hit, config = self._proxies.cached_config_of(project)
        if hit:
            return config
        return await self._threads.run(self._proxies.config_of, project)

    async def check(self, config: ProxyConfig) -> None:
        """Reach the upstream and sign in (UpstreamError when that fails)."""
        await self._context.clients.client(config.endpoint).check()

    async def ensure_manifest(
        self,
        config: ProxyConfig,
        repository: str,
        reference: Reference,
        actor: Actor,
        may_fetch: MayFetch,
    ) -> None:
        """Make sure the manifest `reference` names is stored and, for a tag, fresh enough."""
        await self._manifests.ensure_manifest(config, repository, reference, actor, may_fetch)

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
        return await self._blobs.ensure_blob(
            config, repository, digest, actor, may_fetch, stream=stream
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
        return await self._blobs.head_blob(config, repository, digest, actor, may_fetch)

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
        return await self._blobs.fill_image(config, repository, digest, actor, may_fetch)
