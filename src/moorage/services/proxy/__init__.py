"""Proxy-cache projects: a project with an upstream configuration serves what the upstream has.

A pull of a manifest or blob the project does not hold yet is fetched from the upstream, stored
(verified against its digest) and from then on served locally.

- `upstream`: what the cache needs of an upstream registry (`UpstreamClient`) and its errors;
- `config`: the configuration of each proxy-cache project, its sealed secrets and its audit;
- `flight`: single flight within a worker and across workers;
- `cache`: the pull side, filling the cache and keeping tags fresh.
"""

from moorage.services.proxy.cache import LiveBlob, MayFetch, ProxyCache, ProxyStats
from moorage.services.proxy.config import (
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
from moorage.services.proxy.flight import FileLocks, SingleFlight
from moorage.services.proxy.upstream import (
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
    "FileLocks",
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
