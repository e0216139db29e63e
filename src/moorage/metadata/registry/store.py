"""The metadata store: every read and write of registry metadata, each in one short transaction.

Methods are synchronous (they run on a worker thread, see `moorage.services.threads`) and
return plain records, never ORM objects, so nothing outside this package sees SQL.

`MetadataStore` is composed of one mixin per responsibility, all on `RegistryStoreBase`
(engine, shared helpers, repositories): blobs (`registry_blobs`), manifests and tags
(`registry_manifests`), proxy-cache bookkeeping (`registry_proxy_cache`), referrers and
consistency checks (`registry_integrity`) and server secrets (`server_secrets`). The records
and errors it returns and raises live in `registry_records`.
"""

from __future__ import annotations

from moorage.metadata.registry.registry_blobs import BlobQueries
from moorage.metadata.registry.registry_integrity import IntegrityQueries
from moorage.metadata.registry.registry_manifests import ManifestQueries
from moorage.metadata.registry.registry_proxy_cache import ProxyCacheQueries
from moorage.metadata.registry.server_secrets import ServerSecrets


class MetadataStore(
    BlobQueries, ManifestQueries, ProxyCacheQueries, IntegrityQueries, ServerSecrets
):
    """Registry metadata: repositories, blobs, manifests, tags, referrers and proxy-cache
    bookkeeping, plus server secrets and consistency checks."""
