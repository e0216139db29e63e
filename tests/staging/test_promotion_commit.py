"""A promotion's record exists exactly when the promotion does.

The record referrer is committed in the promotion's own transaction, so a promotion that fails
at commit leaves no referrer; identical promotions racing each other leave one promotion and one
record; and `moorage fsck --repair` removes records of no stored promotion (what an older
ordering could leave after a crash).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from moorage.domain.digest import Digest
from moorage.domain.manifest import parse_manifest
from moorage.metadata.database import make_engine
from moorage.metadata.registry.registry_records import ManifestLinks, MissingReferencesError
from moorage.metadata.registry.store import MetadataStore
from moorage.metadata.staging.promotion_store import NewPromotion, PromotionStore, RecordManifest
from tests.support.api import api_client, create_project
from tests.support.auth import RegistryAuth
from tests.support.images import Blob, push_image, tiny_image
from tests.support.server import RegistryProcess, command_environment
from tests.support.signing import push_referrer

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DSSE = "application/vnd.dsse.envelope.v1+json"
PROMOTION_SOURCE = "dev.moorage.promotion.source"
EMPTY = b"{}"
EMPTY_DIGEST = str(Digest.of(EMPTY))


# -- the store, on a real SQLite database


def manifest_body(layers: list[bytes], subject: str | None = None) -> bytes:
    document: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.empty.v1+json",
            "digest": EMPTY_DIGEST,
            "size": len(EMPTY),
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": str(Digest.of(layer)),
                "size": len(layer),
            }
            for layer in layers
        ],
    }
    if subject is not None:
        document["subject"] = {"mediaType": OCI_MANIFEST, "digest": subject, "size": 1}
        document["artifactType"] = DSSE
    return json.dumps(document).encode()


@pytest.fixture
def stores(metadata_url: str) -> Iterator[tuple[MetadataStore, PromotionStore]]:
    engine = make_engine(metadata_url, pool_size=1)
    metadata = MetadataStore(engine)
    try:
        yield metadata, PromotionStore(engine, metadata)
    finally:
        metadata.close()


def stored(metadata: MetadataStore, repository: str, *blobs: bytes) -> None:
    for blob in (EMPTY, *blobs):
        metadata.link_blob(repository, str(Digest.of(blob)), len(blob))


def put(metadata: MetadataStore, repository: str, body: bytes, tag: str | None) -> str:
    digest = Digest.of(body)
    metadata.put_manifest(repository, parse_manifest(body, OCI_MANIFEST, digest), body, tag)
    return str(digest)


def new_promotion(digest: str, record_digest: str) -> NewPromotion:
    return NewPromotion(
        destination_project="prod",
        destination_repository="prod/app",
        tag="v1",
        digest=digest,
        media_type=OCI_MANIFEST,
        source_repository="dev/app",
        source_reference="v1",
        requester="admin",
        requester_kind="user",
        gates=[],
        record_digest=record_digest,
        envelope=b"{}",
        created_at=datetime(2026, 1, 2, tzinfo=UTC),
    )


def record_for(metadata: MetadataStore, top: str, envelope: bytes) -> RecordManifest:
    stored(metadata, "prod/app", envelope)
    body = manifest_body([envelope], subject=top)
    return RecordManifest(parse_manifest(body, OCI_MANIFEST, Digest.of(body)), body)


def links_for(*manifests: str) -> ManifestLinks:
    return ManifestLinks(
        "dev/app", "prod/app", manifests, (), (("v1", manifests[0]),), frozenset(), "v1"
    )


def test_a_promotion_that_fails_at_commit_leaves_no_record(
    stores: tuple[MetadataStore, PromotionStore],
) -> None:
    metadata, promotions = stores
    stored(metadata, "dev/app", b"layer")
    top = put(metadata, "dev/app", manifest_body([b"layer"]), "v1")
    record = record_for(metadata, top, b"envelope")
    absent = str(Digest.of(b"a manifest the source does not hold"))

    with pytest.raises(MissingReferencesError):
        promotions.commit(
            links_for(top, absent), new_promotion(top, str(record.manifest.digest)), record
        )

    assert metadata.referrers("prod/app", top, None, None, 10) == []
    assert metadata.resolve_digest("prod/app", str(record.manifest.digest)) is None
    assert metadata.resolve_tag("prod/app", "v1") is None
    assert promotions.promotions(None, None, 10) == []
    assert promotions.dangling_records() == []


def test_an_identical_promotion_committed_second_returns_the_first(
    stores: tuple[MetadataStore, PromotionStore],
) -> None:
    metadata, promotions = stores
    stored(metadata, "dev/app", b"layer")
    top = put(metadata, "dev/app", manifest_body([b"layer"]), "v1")
    first_record = record_for(metadata, top, b"first envelope")
    second_record = record_for(metadata, top, b"second envelope")

    first, created = promotions.commit(
        links_for(top), new_promotion(top, str(first_record.manifest.digest)), first_record
    )
    assert created
    second, created_again = promotions.commit(
        links_for(top), new_promotion(top, str(second_record.manifest.digest)), second_record
    )

    assert not created_again
    assert second == first
    assert [p.id for p in promotions.promotions(None, None, 10)] == [first.id]
    (referrer,) = metadata.referrers("prod/app", top, None, None, 10)
    assert referrer.digest == str(first_record.manifest.digest)


def test_a_different_digest_to_the_same_tag_is_a_new_promotion(
    stores: tuple[MetadataStore, PromotionStore],
) -> None:
    metadata, promotions = stores
    stored(metadata, "dev/app", b"one", b"two")
    one = put(metadata, "dev/app", manifest_body([b"one"]), "v1")
    two = put(metadata, "dev/app", manifest_body([b"two"]), None)
    record_one = record_for(metadata, one, b"envelope one")
    record_two = record_for(metadata, two, b"envelope two")
    promotions.commit(
        links_for(one), new_promotion(one, str(record_one.manifest.digest)), record_one
    )
    _, created = promotions.commit(
        links_for(two), new_promotion(two, str(record_two.manifest.digest)), record_two
    )
    assert created
    assert len(promotions.promotions(None, None, 10)) == 2


# -- a real server


@pytest.fixture
def server(start_registry: Callable[..., RegistryProcess]) -> RegistryProcess:
    return start_registry()


def test_identical_promotions_at_the_same_instant_leave_one_record(
    server: RegistryProcess,
) -> None:
    with (
        api_client(server) as admin,
        httpx.Client(base_url=server.url, timeout=60, auth=RegistryAuth()) as v2,
    ):
        dev, prod = create_project(admin, "dev"), create_project(admin, "prod")
        image = tiny_image("promotion-race")
        push_image(v2, f"{dev}/app", image, "v1")
        request = {"source": f"{dev}/app:v1", "destination": f"{prod}/app:v1"}

        def attempt(_: int) -> httpx.Response:
            with api_client(server) as http:
                return http.post("/promotions", json=request)

        with ThreadPoolExecutor(max_workers=8) as pool:
            responses = list(pool.map(attempt, range(8)))

        assert sorted(response.status_code for response in responses).count(201) == 1, [
            (response.status_code, response.text) for response in responses
        ]
        assert {response.status_code for response in responses} <= {200, 201}
        assert len({response.json()["id"] for response in responses}) == 1
        listed = admin.get("/promotions", params={"project": prod})
        assert listed.status_code == 200, listed.text
        assert len(listed.json()) == 1
        referrers = v2.get(f"/v2/{prod}/app/referrers/{image.manifest.digest}")
        assert referrers.status_code == 200, referrers.text
        records = [m for m in referrers.json()["manifests"] if m.get("artifactType") == DSSE]
        assert [record["digest"] for record in records] == [responses[0].json()["recordDigest"]]


def run_fsck(data_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    environment = command_environment(data_dir)
    return subprocess.run(
        [sys.executable, "-m", "moorage", "fsck", "--data-dir", str(data_dir), *extra],
        capture_output=True,
        text=True,
        timeout=120,
        env=environment,
        check=False,
    )


def test_fsck_repair_removes_a_record_of_no_stored_promotion(
    start_registry: Callable[..., RegistryProcess],
) -> None:
    server = start_registry()
    with (
        api_client(server) as admin,
        httpx.Client(base_url=server.url, timeout=60, auth=RegistryAuth()) as v2,
    ):
        dev, prod = create_project(admin, "dev"), create_project(admin, "prod")
        image = tiny_image("fsck-record")
        push_image(v2, f"{dev}/app", image, "v1")
        promoted = admin.post(
            "/promotions", json={"source": f"{dev}/app:v1", "destination": f"{prod}/app:v1"}
        )
        assert promoted.status_code == 201, promoted.text
        kept = promoted.json()["recordDigest"]
        # What a crash between attaching and committing left under the old ordering: a
        # record-shaped referrer that no stored promotion names.
        orphan = push_referrer(
            v2,
            f"{prod}/app",
            image.manifest,
            Blob(DSSE, b'{"payload":"orphan"}'),
            DSSE,
            annotations={PROMOTION_SOURCE: f"{dev}/app:v1"},
        )
    assert server.stop() == 0

    report = run_fsck(server.data_dir)
    assert report.returncode == 1, report.stdout + report.stderr
    assert f"promotion record {prod}/app@{orphan} records no stored promotion" in report.stdout
    assert kept not in report.stdout

    repaired = run_fsck(server.data_dir, "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "1 problem(s) found, 1 repaired" in repaired.stdout
    assert run_fsck(server.data_dir).returncode == 0

    server.start()
    with httpx.Client(base_url=server.url, timeout=60, auth=RegistryAuth()) as v2:
        listed = v2.get(f"/v2/{prod}/app/referrers/{image.manifest.digest}")
        assert listed.status_code == 200, listed.text
        assert [m["digest"] for m in listed.json()["manifests"]] == [kept]
