"""Proxy-cache projects: a project with an upstream configuration serves what the upstream has.

A pull of a manifest or blob the project does not hold yet is fetched from the upstream, stored
(verified against its digest) and from then on served locally.

- `upstream`: what the cache needs of an upstream registry (`UpstreamClient`) and its errors;
- `config`: the configuration of each proxy-cache project, its sealed secrets and its audit;
- `flight`: single flight within a worker (and across nodes with `moorage.coordination`);
- `fetching`: what the manifest and blob halves share (`FetchContext`, `MayFetch`, counters);
- `manifests`: manifest and tag pull-through, TTL revalidation, stale-if-error;
- `blobs`: blob pull-through streamed as it is stored, HEAD upstream, filling before scans;
- `cache`: `ProxyCache`, the one object the pull path holds, handing calls to the two halves.
"""

from moorage.services.distribution.proxy.blobs import LiveBlob
from moorage.services.distribution.proxy.cache import ProxyCache
from moorage.services.distribution.proxy.config import (
    CONFIG_CACHE_SECONDS,
    ProxyConfig,
    ProxyInput,
    ProxyPatch,
    ProxyService,
    ProxyView,
    SecretBox,
    patched,
    promotion_only_refusal,
)
from moorage.services.distribution.proxy.fetching import MayFetch, ProxyStats
from moorage.services.distribution.proxy.flight import SingleFlight
from moorage.services.distribution.proxy.upstream import (
    UPSTREAM_ACCEPT,
    UpstreamBlob,
    UpstreamBlobHead,
    UpstreamClient,
    UpstreamClients,
    UpstreamEndpoint,
    UpstreamError,
    UpstreamHead,
    UpstreamManifest,
    upstream_failure,
)

__all__ = [
    "CONFIG_CACHE_SECONDS",
    "UPSTREAM_ACCEPT",
    "LiveBlob",
    "MayFetch",
    "ProxyCache",
    "ProxyConfig",
    "ProxyInput",
    "ProxyPatch",
    "ProxyService",
    "ProxyStats",
    "ProxyView",
    "SecretBox",
    "SingleFlight",
    "UpstreamBlob",
    "UpstreamBlobHead",
    "UpstreamClient",
    "UpstreamClients",
    "UpstreamEndpoint",
    "UpstreamError",
    "UpstreamHead",
    "UpstreamManifest",
    "patched",
    "promotion_only_refusal",
    "upstream_failure",
]
