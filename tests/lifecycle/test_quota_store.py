"""Quota counters and the commit-time check in the metadata store, on SQLite and PostgreSQL.

The counters are kept by triggers: after every kind of change (link, re-link, mount, unlink,
manifest put and delete, promotion links, repository delete, raw deletes as garbage collection
makes them) they must equal the usage recomputed from the links. The check refuses exactly the
links that would take a project over a quota, and a blob already held by the project costs
nothing more.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete, text

from moorage.domain.digest import Digest
from moorage.domain.manifest import parse_manifest
from moorage.domain.quotas import (
    UNLIMITED,
    QuotaExceededError,
    QuotaLimits,
    QuotaOverride,
    QuotaUsage,
)
from moorage.metadata.database import make_engine, migrate, sqlite_url, write_transaction
from moorage.metadata.lifecycle.pull_store import PullStore, PullSummary
from moorage.metadata.lifecycle.quota_store import QuotaStore
from moorage.metadata.registry.registry_records import ManifestLinks, repositories_table
from moorage.metadata.registry.store import MetadataStore
from moorage.metadata.transfer import copy_tables
from moorage.services.lifecycle.proxy_eviction import ProxyEviction
from moorage.services.threads import Threads

IMAGE = "application/vnd.oci.image.manifest.v1+json"


def blob(n: int) -> str:
    return "sha256:" + f"{n:064x}"


def manifest_body(config: str, layers: list[str], sizes: dict[str, int]) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": IMAGE,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config,
                "size": sizes[config],
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer,
                    "size": sizes[layer],
                }
                for layer in layers
            ],
        }
    ).encode()


class Fixture:
    def __init__(self, url: str, defaults: QuotaLimits = UNLIMITED) -> None:
        self.engine = make_engine(url, pool_size=4)
        self.store = MetadataStore(self.engine, quota_defaults=defaults)
        self.quotas = QuotaStore(self.engine)
        self.sizes: dict[str, int] = {}

    def push_blob(self, repository: str, n: int, size: int) -> str:
        digest = blob(n)
        self.sizes[digest] = size
        self.store.link_blob(repository, digest, size)
        return digest

    def push_manifest(self, repository: str, config: str, layers: list[str], tag: str) -> str:
        body = manifest_body(config, layers, self.sizes)
        digest = Digest.of(body)
        self.store.put_manifest(repository, parse_manifest(body, IMAGE, digest), body, tag)
        return str(digest)

    def usage(self, project: str) -> QuotaUsage:
        return self.quotas.record(project).usage

    def assert_exact(self) -> None:
        assert self.quotas.drift() == []
        counted = {p: u for p, u in self.quotas.counted().items() if u != QuotaUsage()}
        assert counted == self.quotas.actual()


@pytest.fixture
def db(metadata_url: str) -> Iterator[Fixture]:
    fixture = Fixture(metadata_url)
    yield fixture
    fixture.engine.dispose()


def test_a_blob_shared_by_repositories_of_a_project_counts_once(db: Fixture) -> None:
    shared = db.push_blob("team/a", 1, 1000)
    db.push_blob("team/b", 1, 1000)
    db.push_blob("team/b", 2, 10)
    assert db.store.mount_blob("team/b", "team/c", shared) == 1000
    db.push_blob("other/x", 1, 1000)  # another project counts it for itself
    assert db.usage("team") == QuotaUsage(1010, 0)
    assert db.usage("other") == QuotaUsage(1000, 0)
    db.store.unlink_blob("team/a", shared)
    db.store.unlink_blob("team/b", shared)
    assert db.usage("team") == QuotaUsage(1010, 0)  # team/c still links it
    db.store.unlink_blob("team/c", shared)
    assert db.usage("team") == QuotaUsage(10, 0)
    db.assert_exact()


def test_counters_follow_manifests_promotions_and_deletes(db: Fixture) -> None:
    config = db.push_blob("team/app", 1, 100)
    layer = db.push_blob("team/app", 2, 5000)
    first = db.push_manifest("team/app", config, [layer], "1.0")
    db.push_manifest("team/app", config, [layer], "again")  # same digest: one artifact
    assert db.usage("team") == QuotaUsage(5100, 1)
    db.store.link_manifests(
        ManifestLinks(
            source="team/app",
            target="prod/app",
            manifests=(first,),
            blobs=(config, layer),
            tags=(("1.0", first),),
        )
    )
    assert db.usage("prod") == QuotaUsage(5100, 1)
    db.assert_exact()
    assert db.store.delete_manifest("team/app", first) is not None
    assert db.usage("team") == QuotaUsage(5100, 0)
    db.assert_exact()
    # Deleting a repository (as project or repository deletion does) drops all its links.
    with write_transaction(db.engine) as connection:
        connection.execute(
            delete(repositories_table).where(repositories_table.c.name == "prod/app")
        )
    assert db.usage("prod") == QuotaUsage(0, 0)
    db.assert_exact()


def test_raw_link_deletes_as_garbage_collection_makes_them_keep_counters_exact(
    db: Fixture,
) -> None:
    for n in range(20):
        db.push_blob(f"team/r{n % 3}", n % 7, 100 + n % 7)
    with write_transaction(db.engine) as connection:
        connection.execute(
            text("DELETE FROM repository_blobs WHERE digest IN (:a, :b)"),
            {"a": blob(1), "b": blob(2)},
        )
    db.assert_exact()
    assert db.quotas.recount() == []


def test_recount_repairs_counters_and_reports_the_drift(db: Fixture) -> None:
    db.push_blob("team/app", 1, 100)
    with write_transaction(db.engine) as connection:
        connection.execute(text("UPDATE quota_usage SET bytes = 7 WHERE project = 'team'"))
        connection.execute(text("DELETE FROM quota_project_blobs"))
    drift = db.quotas.recount()
    assert [(d.project, d.counted, d.actual) for d in drift] == [
        ("team", QuotaUsage(7, 0), QuotaUsage(100, 0))
    ]
    db.assert_exact()
    db.push_blob("team/other", 1, 100)  # the rebuilt per-blob rows still count it once
    assert db.usage("team") == QuotaUsage(100, 0)


def test_storage_quota_refuses_the_blob_that_would_exceed_it(metadata_url: str) -> None:
    db = Fixture(metadata_url, QuotaLimits(bytes=1000))
    try:
        db.push_blob("team/a", 1, 600)
        with pytest.raises(QuotaExceededError) as refused:
            db.push_blob("team/a", 2, 500)
        assert (
            refused.value.message
            == "project team: storage quota 1000 B, used 600 B, this blob 500 B"
        )
        assert refused.value.status == 403
        db.push_blob("team/b", 1, 600)  # already held by the project: costs nothing
        assert db.store.mount_blob("team/a", "team/c", blob(1)) == 600
        db.push_blob("team/a", 3, 400)  # exactly to the limit
        with pytest.raises(QuotaExceededError):
            db.push_blob("team/d", 4, 1)
        # A mount into a full project of a blob it does not hold is refused too.
        db.push_blob("other/x", 9, 10)
        with pytest.raises(QuotaExceededError):
            db.store.mount_blob("other/x", "team/a", blob(9))
        assert db.usage("team") == QuotaUsage(1000, 0)
        db.assert_exact()
    finally:
        db.engine.dispose()


def test_project_override_beats_the_default_and_zero_is_unlimited(metadata_url: str) -> None:
    db = Fixture(metadata_url, QuotaLimits(bytes=100))
    try:
        db.quotas.set_override("big", QuotaOverride(bytes=0), "admin")
        db.push_blob("big/a", 1, 10_000)
        db.quotas.set_override("small", QuotaOverride(bytes=5), "admin")
        with pytest.raises(QuotaExceededError):
            db.push_blob("small/a", 2, 6)
        assert db.quotas.clear_override("small")
        db.push_blob("small/a", 2, 6)  # back to the default of 100
        record = db.quotas.record("big")
        assert record.override == QuotaOverride(bytes=0)
        assert record.updated_by == "admin"
    finally:
        db.engine.dispose()


def test_artifact_quota_counts_manifests_and_refuses_promotions(metadata_url: str) -> None:
    db = Fixture(metadata_url, QuotaLimits(artifacts=2))
    try:
        config = db.push_blob("team/app", 1, 10)
        layers = [db.push_blob("team/app", n, 10) for n in (2, 3, 4)]
        first = db.push_manifest("team/app", config, layers[:1], "a")
        db.push_manifest("team/app", config, layers[:2], "b")
        db.push_manifest("team/app", config, layers[:1], "c")  # a re-tag adds nothing
        with pytest.raises(QuotaExceededError) as refused:
            db.push_manifest("team/app", config, layers, "d")
        assert refused.value.message == "project team: artifact quota 2, used 2, this push adds 1"
        db.quotas.set_override("prod", QuotaOverride(artifacts=0, bytes=15), "admin")
        with pytest.raises(QuotaExceededError):  # 20 bytes into a 15-byte project
            db.store.link_manifests(
                ManifestLinks("team/app", "prod/app", (first,), (config, layers[0]), ())
            )
        assert db.usage("prod") == QuotaUsage(0, 0)
        db.assert_exact()
    finally:
        db.engine.dispose()


def test_proxy_cache_projects_are_never_refused(metadata_url: str) -> None:
    db = Fixture(metadata_url, QuotaLimits(bytes=10))
    try:
        with write_transaction(db.engine) as connection:
            connection.execute(
                text(
                    "INSERT INTO projects (id, name, public, created_at)"
                    " VALUES (77, 'hub', false, CURRENT_TIMESTAMP)"
                )
            )
            connection.execute(
                text(
                    "INSERT INTO proxy_upstreams (project_id, url, flavor, credential_kind,"
                    " allow_private_network, tag_ttl_seconds, timeout_seconds, anonymous_fetch,"
                    " updated_at) VALUES (77, 'https://r.example', 'oci', 'none', false, 60, 30,"
                    " false, CURRENT_TIMESTAMP)"
                )
            )
        db.push_blob("hub/library/alpine", 1, 1000)
        assert db.usage("hub") == QuotaUsage(1000, 0)
    finally:
        db.engine.dispose()


def _make_proxy_project(db: Fixture, name: str) -> None:
    with write_transaction(db.engine) as connection:
        connection.execute(
            text(
                "INSERT INTO projects (id, name, public, created_at)"
                " VALUES (77, :name, false, CURRENT_TIMESTAMP)"
            ),
            {"name": name},
        )
        connection.execute(
            text(
                "INSERT INTO proxy_upstreams (project_id, url, flavor, credential_kind,"
                " allow_private_network, tag_ttl_seconds, timeout_seconds, anonymous_fetch,"
                " updated_at) VALUES (77, 'https://r.example', 'oci', 'none', false, 60, 30,"
                " false, CURRENT_TIMESTAMP)"
            )
        )


def test_a_proxy_cache_project_over_its_cap_loses_its_least_recently_pulled_artifacts(
    metadata_url: str,
) -> None:
    db = Fixture(metadata_url)
    try:
        _make_proxy_project(db, "hub")
        db.quotas.set_override("hub", QuotaOverride(bytes=3000), "admin")
        shared = db.push_blob("hub/library/base", 100, 500)  # config shared by every image
        images: dict[str, str] = {}
        for n in range(4):
            repository = f"hub/library/app{n % 2}"
            db.push_blob(repository, 100, 500)
            layer = db.push_blob(repository, n, 1000)
            images[f"{repository}:{n}"] = db.push_manifest(repository, shared, [layer], f"v{n}")
        assert db.usage("hub") == QuotaUsage(4500, 4)  # over the cap of 3000: never refused
        # Pulled: image 2 long ago, 0 and 3 recently; image 1 never (cached first).
        now = datetime.now(UTC)
        PullStore(db.engine).record(
            {
                ("hub/library/app0", images["hub/library/app0:2"]): PullSummary(
                    now - timedelta(days=3), 1
                ),
                ("hub/library/app0", images["hub/library/app0:0"]): PullSummary(now, 5),
                ("hub/library/app1", images["hub/library/app1:3"]): PullSummary(now, 1),
            }
        )
        removed, freed = ProxyEviction(db.store, db.quotas, Threads(1)).evict_now(
            "hub", QuotaLimits(bytes=3000)
        )
        # Image 1 (never pulled, cached first) and image 2 (pulled long ago) go; their
        # layers leave the project, the shared config stays.
        assert (removed, freed) == (2, 2000)
        assert db.store.resolve_tag("hub/library/app1", "v1") is None
        assert db.store.resolve_tag("hub/library/app0", "v2") is None
        assert db.store.resolve_tag("hub/library/app0", "v0") is not None
        assert db.store.resolve_tag("hub/library/app1", "v3") is not None
        assert db.usage("hub") == QuotaUsage(2500, 2)
        db.assert_exact()
        # Under the cap: nothing more goes.
        assert ProxyEviction(db.store, db.quotas, Threads(1)).evict_now(
            "hub", QuotaLimits(bytes=3000)
        ) == (0, 0)
    finally:
        db.engine.dispose()


def test_copying_into_another_database_rebuilds_the_counters(
    metadata_url: str, tmp_path: Path
) -> None:
    source_url = sqlite_url(tmp_path / "source.db")
    source = make_engine(source_url, pool_size=1)
    migrate(source)
    db = Fixture(source_url)
    try:
        config = db.push_blob("team/a", 1, 100)
        layer = db.push_blob("team/a", 2, 200)
        db.push_blob("team/b", 2, 200)
        db.push_manifest("team/a", config, [layer], "1")
        db.push_blob("gone/x", 3, 5)
        db.store.unlink_blob("gone/x", blob(3))  # a project whose counters are zero
        target = make_engine(metadata_url, pool_size=1)
        try:
            copy_tables(source, target)
            copied = QuotaStore(target)
            assert copied.drift() == []
            assert copied.counted()["team"] == QuotaUsage(300, 1)
        finally:
            target.dispose()
    finally:
        db.engine.dispose()
        source.dispose()
