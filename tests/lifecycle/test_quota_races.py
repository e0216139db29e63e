"""Quota counters and refusals under concurrent writers, on SQLite and PostgreSQL.

Eight processes (each with its own engine, as separate workers and nodes have) are released
together by a barrier and link, re-link, mount, unlink, commit and delete manifests in the
repositories of one project. Afterwards the counters equal the usage recomputed from the links,
and with a quota the project never holds more than its limit.
"""

from __future__ import annotations

import json
import random

from moorage.domain.digest import Digest
from moorage.domain.manifest import parse_manifest
from moorage.domain.quotas import QuotaExceededError, QuotaLimits
from moorage.metadata.database import make_engine
from moorage.metadata.lifecycle.quota_store import QuotaStore
from moorage.metadata.registry.registry_records import (
    MissingReferencesError,
    StillReferencedError,
)
from moorage.metadata.registry.store import MetadataStore
from tests.access.test_postgres_concurrency import race

IMAGE = "application/vnd.oci.image.manifest.v1+json"
PUSHERS = 8
BLOB = 1000


def _digest(n: int) -> str:
    return "sha256:" + f"{n:064x}"


def _manifest(config: int, layer: int) -> tuple[bytes, Digest]:
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": IMAGE,
            "config": {"mediaType": "application/json", "digest": _digest(config), "size": BLOB},
            "layers": [{"mediaType": "a/b", "digest": _digest(layer), "size": BLOB}],
        }
    ).encode()
    return body, Digest.of(body)


def _churn(number: int, url: str, seed: int) -> int:
    """Random links, mounts, unlinks and manifest commits and deletes in team/r0..r2."""
    engine = make_engine(url, pool_size=2)
    store = MetadataStore(engine)
    chance = random.Random(seed * 100 + number)
    try:
        for _ in range(60):
            repository = f"team/r{chance.randrange(3)}"
            blob = chance.randrange(12)
            step = chance.randrange(5)
            try:
                if step == 0:
                    store.link_blob(repository, _digest(blob), BLOB + blob)
                elif step == 1:
                    store.mount_blob(f"team/r{chance.randrange(3)}", repository, _digest(blob))
                elif step == 2:
                    store.unlink_blob(repository, _digest(blob))
                elif step == 3:
                    body, digest = _manifest(blob, (blob + 1) % 12)
                    store.link_blob(repository, _digest(blob), BLOB + blob)
                    store.link_blob(repository, _digest((blob + 1) % 12), BLOB + (blob + 1) % 12)
                    manifest = parse_manifest(body, IMAGE, digest)
                    store.put_manifest(repository, manifest, body, f"t{blob}")
                else:
                    _body, digest = _manifest(blob, (blob + 1) % 12)
                    store.delete_manifest(repository, str(digest))
            except (StillReferencedError, MissingReferencesError):
                pass  # another process unlinked or still needs it: part of the race
        return 0
    finally:
        engine.dispose()


def test_counters_stay_exact_under_concurrent_churn(metadata_url: str) -> None:
    race(_churn, metadata_url, 1, processes=PUSHERS)
    engine = make_engine(metadata_url, pool_size=1)
    try:
        quotas = QuotaStore(engine)
        assert quotas.drift() == []
        assert quotas.counted()["team"] == quotas.actual()["team"]
    finally:
        engine.dispose()


def _push_until_refused(number: int, url: str, limit: int) -> int:
    engine = make_engine(url, pool_size=2)
    store = MetadataStore(engine, quota_defaults=QuotaLimits(bytes=limit))
    accepted = 0
    try:
        for n in range(8):
            try:
                store.link_blob(f"team/r{number % 3}", _digest(1000 * number + n), BLOB)
                accepted += BLOB
            except QuotaExceededError:
                pass
        return accepted
    finally:
        engine.dispose()


def test_concurrent_pushers_never_take_a_project_over_its_quota(metadata_url: str) -> None:
    limit = 30 * BLOB + BLOB // 2  # room for 30 of the 64 blobs
    accepted = race(_push_until_refused, metadata_url, limit, processes=PUSHERS)
    engine = make_engine(metadata_url, pool_size=1)
    try:
        quotas = QuotaStore(engine)
        assert sum(accepted) == 30 * BLOB
        assert quotas.counted()["team"].bytes == 30 * BLOB
        assert quotas.drift() == []
    finally:
        engine.dispose()
