"""The signed promotion record: an in-toto statement in a DSSE envelope, signed with the
registry's key, attached to the promoted manifest as a referrer (by the system actor).

Only the record's blobs are stored ahead; its manifest is committed in the promotion's own
transaction (`PromotionStore.commit`), so a promotion that fails or crashes before it commits
leaves no referrer behind, at most content-addressed blobs nothing points at."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Final

from moorage.domain import mediatypes as mt
from moorage.domain.digest import Digest
from moorage.domain.events import SYSTEM
from moorage.domain.manifest import parse_manifest
from moorage.domain.promotion import (
    ANNOTATION_PROMOTION,
    DSSE_ENVELOPE_TYPE,
    IN_TOTO_PAYLOAD_TYPE,
    SourceReference,
    canonical_json,
    envelope,
    pae,
)
from moorage.metadata.registry.registry_records import ManifestRecord
from moorage.metadata.registry.store import MetadataStore
from moorage.metadata.staging.promotion_store import RecordManifest
from moorage.services.access.tokens import TokenService
from moorage.services.registry.uploads import UploadService
from moorage.services.threads import Threads

_EMPTY_CONFIG: Final = b"{}"
_TITLE: Final = "org.opencontainers.image.title"
_CREATED: Final = "org.opencontainers.image.created"


class RecordWriter:
    def __init__(
        self,
        *,
        uploads: UploadService,
        metadata: MetadataStore,
        tokens: TokenService,
        threads: Threads,
    ) -> None:
        self._uploads = uploads
        self._metadata = metadata
        self._tokens = tokens
        self._threads = threads

    def sign(self, payload: bytes) -> bytes:
        """The DSSE envelope of `payload` (blocking: signs with the registry's key)."""
        kid, signature = self._tokens.sign_bytes(pae(IN_TOTO_PAYLOAD_TYPE, payload))
        return canonical_json(envelope(payload, kid, signature))

    async def _store_blob(self, repository: str, data: bytes) -> Digest:
        digest = Digest.of(data)
        size = await self._threads.run(
            self._metadata.blob_size_in_repository, repository, str(digest)
        )
        if size is None:
            await self._uploads.monolithic(repository, digest, len(data), _once(data), SYSTEM)
        return digest

    async def prepare(
        self,
        repository: str,
        top: ManifestRecord,
        signed: bytes,
        source: SourceReference,
        at: datetime,
    ) -> RecordManifest:
        """Store the record's blobs in `repository` and build its referrer manifest of `top`."""
        config = await self._store_blob(repository, _EMPTY_CONFIG)
        layer = await self._store_blob(repository, signed)
        manifest = {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "artifactType": DSSE_ENVELOPE_TYPE,
            "config": {
                "mediaType": mt.OCI_EMPTY,
                "digest": str(config),
                "size": len(_EMPTY_CONFIG),
                "data": base64.b64encode(_EMPTY_CONFIG).decode(),
            },
            "layers": [
                {
                    "mediaType": DSSE_ENVELOPE_TYPE,
                    "digest": str(layer),
                    "size": len(signed),
                    "annotations": {_TITLE: "promotion.dsse.json"},
                }
            ],
            "subject": {"mediaType": top.media_type, "digest": top.digest, "size": top.size},
            "annotations": {
                _CREATED: at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                ANNOTATION_PROMOTION: str(source),
            },
        }
        body = json.dumps(manifest, indent=2).encode()
        return RecordManifest(parse_manifest(body, mt.OCI_MANIFEST, Digest.of(body)), body)


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data
