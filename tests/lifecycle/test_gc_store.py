"""The race garbage collection designs away, at the store, on SQLite and on PostgreSQL: a
collection's mark and a new reference to the same blob never both succeed."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, text

from moorage.domain.digest import Digest
from moorage.domain.manifest import parse_manifest
from moorage.metadata.database import make_engine
from moorage.metadata.lifecycle.gc_runs_store import (
    GcRunsStore,
    NewRun,
    RunBusyError,
    RunLostError,
)
from moorage.metadata.lifecycle.gc_store import GcStore
from moorage.metadata.registry.registry_records import (
    BlobBeingCollectedError,
    MissingReferencesError,
)
from moorage.metadata.registry.store import MetadataStore
from tests.support.oci import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, digest_of, encode

HOUR = timedelta(hours=1)


@pytest.fixture
def engine(metadata_url: str) -> Iterator[Engine]:
    engine = make_engine(metadata_url, pool_size=4)
    yield engine
    engine.dispose()


def _age(engine: Engine, digest: str) -> None:
    """Make a blob look untouched for two hours (what the grace period measures)."""
    with engine.begin() as connection:
        connection.execute(
            text("UPDATE blobs SET touched_at = :old, created_at = :old WHERE digest = :digest"),
            {"old": datetime.now(UTC) - 2 * HOUR, "digest": digest},
        )
        connection.execute(
            text("UPDATE repository_blobs SET created_at = :old WHERE digest = :digest"),
            {"old": datetime.now(UTC) - 2 * HOUR, "digest": digest},
        )


def _unlinked_old_blob(engine: Engine, store: MetadataStore, name: str) -> str:
    digest = digest_of(name.encode())
    assert store.claim_blob(digest, len(name))
    _age(engine, digest)
    return digest


def test_a_blob_being_deleted_cannot_be_claimed_linked_mounted_or_referenced(
    engine: Engine,
) -> None:
    store, gc = MetadataStore(engine), GcStore(engine)
    store.link_blob("p/source", digest_of(b"mountable"), 9)
    digest = _unlinked_old_blob(engine, store, "doomed")
    cutoff = datetime.now(UTC) - HOUR
    assert [blob.digest for blob in gc.mark_deleting("run-1", [digest], cutoff)] == [digest]

    assert store.claim_blob(digest, 6) is False
    with pytest.raises(BlobBeingCollectedError):
        store.link_blob("p/app", digest, 6)
    # A mount of a blob whose only link is gone finds nothing to mount.
    assert store.mount_blob("p/app", "p/other", digest) is None

    assert gc.drop_deleted([digest]) == 1
    assert store.claim_blob(digest, 6) is True  # stored anew by the next push
    store.link_blob("p/app", digest, 6)
    assert store.blob_size_in_repository("p/app", digest) == 6


def test_a_blob_touched_after_the_cutoff_is_not_marked(engine: Engine) -> None:
    store, gc = MetadataStore(engine), GcStore(engine)
    digest = _unlinked_old_blob(engine, store, "reclaimed")
    cutoff = datetime.now(UTC) - HOUR
    garbage, _ = gc.garbage_blobs("", 10, cutoff)
    assert digest in [blob.digest for blob in garbage]
    assert store.claim_blob(digest, 9)  # a push claims it between the scan and the mark
    assert gc.mark_deleting("run-1", [digest], cutoff) == []
    assert store.blob_state(digest) == "live"


def test_a_manifest_commit_refuses_a_blob_being_deleted(engine: Engine) -> None:
    store, gc = MetadataStore(engine), GcStore(engine)
    config, layer = b'{"architecture":"amd64","os":"linux"}', b"layer bytes"
    for blob in (config, layer):
        store.link_blob("p/app", digest_of(blob), len(blob))
    layer_digest = digest_of(layer)
    # The layer's link survives, but a collection marked the blob itself (its grace period
    # ran out while the push was slow): the manifest may not reference it.
    with engine.begin() as connection:
        connection.execute(
            text("UPDATE blobs SET state = 'deleting' WHERE digest = :digest"),
            {"digest": layer_digest},
        )
    body = encode(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": digest_of(config), "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER, "digest": layer_digest, "size": len(layer)}],
        }
    )
    with pytest.raises(MissingReferencesError) as refused:
        store.put_manifest(
            "p/app", parse_manifest(body, OCI_MANIFEST, Digest.parse(digest_of(body))), body, "v1"
        )
    assert refused.value.blobs == [layer_digest]
    assert store.resolve_tag("p/app", "v1") is None
    assert gc.mark_deleting("run-1", [layer_digest], datetime.now(UTC)) == []


@pytest.mark.parametrize("first", ["mark", "link"])
def test_a_mark_and_a_link_racing_for_one_blob_never_both_succeed(
    engine: Engine, first: str
) -> None:
    """Thirty rounds of a collection's mark against a push's link of the same blob, released
    together: in each round exactly one wins, and the loser changes nothing."""
    store, gc = MetadataStore(engine), GcStore(engine)
    outcomes: list[tuple[bool, bool]] = []
    for round_number in range(30):
        digest = _unlinked_old_blob(engine, store, f"contested-{first}-{round_number}")
        repository = f"p/r{round_number}"
        marked, linked = _race(store, gc, digest, repository, first)
        outcomes.append((marked, linked))
        assert marked != linked, (round_number, marked, linked)
        assert store.blob_state(digest) == ("deleting" if marked else "live")
        in_repository = store.blob_size_in_repository(repository, digest)
        assert (in_repository is not None) == linked
    assert all(mark != link for mark, link in outcomes)


def _race(
    store: MetadataStore, gc: GcStore, digest: str, repository: str, first: str
) -> tuple[bool, bool]:
    """A mark and a link of `digest`, released together; (marked, linked)."""
    cutoff = datetime.now(UTC) - HOUR
    start = threading.Barrier(2)
    results: dict[str, bool] = {}

    def mark() -> None:
        start.wait()
        results["marked"] = bool(gc.mark_deleting("run-1", [digest], cutoff))

    def link() -> None:
        start.wait()
        try:
            store.link_blob(repository, digest, 10)
            results["linked"] = True
        except BlobBeingCollectedError:
            results["linked"] = False

    order = (mark, link) if first == "mark" else (link, mark)
    threads = [threading.Thread(target=fn) for fn in order]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results["marked"], results["linked"]


def test_untagged_manifests_pushed_again_are_not_removed(engine: Engine) -> None:
    store, gc = MetadataStore(engine), GcStore(engine)
    config = b'{"architecture":"arm64","os":"linux"}'
    store.link_blob("p/app", digest_of(config), len(config))
    body = encode(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": digest_of(config), "size": len(config)},
            "layers": [],
        }
    )
    manifest = parse_manifest(body, OCI_MANIFEST, Digest.parse(digest_of(body)))
    store.put_manifest("p/app", manifest, body, None)
    with engine.begin() as connection:
        connection.execute(
            text("UPDATE repository_manifests SET touched_at = :old"),
            {"old": datetime.now(UTC) - 2 * HOUR},
        )
    repository_id = gc.repositories_after("", 10)[0][0]
    cutoff = datetime.now(UTC) - HOUR
    candidates = gc.untagged_manifests(repository_id, cutoff, 10, only_sboms=False)
    assert candidates == [str(manifest.digest)]
    store.put_manifest("p/app", manifest, body, None)  # pushed again, by digest
    assert gc.remove_untagged(repository_id, "p/app", candidates, cutoff, only_sboms=False) == []
    assert store.resolve_digest("p/app", str(manifest.digest)) is not None


# -- runs: one at a time, a dead one taken over, a taken-over one deletes nothing more


def _new_run(run_id: str) -> NewRun:
    return NewRun(
        id=run_id,
        dry_run=False,
        delete_untagged=False,
        grace_seconds=3600,
        trigger="api",
        requested_by="admin",
        node="node-a",
    )


def test_one_run_at_a_time_and_a_dead_one_is_taken_over(engine: Engine) -> None:
    runs = GcRunsStore(engine, timedelta(seconds=60))
    first = runs.start(_new_run("gc-1"))
    with pytest.raises(RunBusyError):
        runs.start(_new_run("gc-2"))
    assert runs.alive() == [first.id]

    # Its node stops beating: after the lease another run starts and the first is interrupted.
    with engine.begin() as connection:
        connection.execute(
            text("UPDATE gc_runs SET heartbeat_at = :old WHERE id = 'gc-1'"),
            {"old": datetime.now(UTC) - timedelta(minutes=5)},
        )
    second = runs.start(_new_run("gc-2"))
    assert second.status == "running"
    interrupted = runs.run("gc-1")
    assert interrupted is not None
    assert interrupted.status == "interrupted"
    with pytest.raises(RunLostError):
        runs.progress("gc-1", "blobs", None, {})
    assert runs.progress("gc-2", "blobs", "sha256:00", {"blobs": 1}) is False


def test_blobs_a_live_run_marked_are_left_to_it_and_a_dead_runs_to_the_next(
    engine: Engine,
) -> None:
    store, gc = MetadataStore(engine), GcStore(engine)
    digest = _unlinked_old_blob(engine, store, "half-deleted")
    gc.mark_deleting("gc-dead", [digest], datetime.now(UTC) - HOUR)
    assert gc.blobs_in_deletion(["gc-dead"], 10) == []
    assert [blob.digest for blob in gc.blobs_in_deletion([], 10)] == [digest]


def test_stop_requests_reach_the_run(engine: Engine) -> None:
    runs = GcRunsStore(engine, timedelta(seconds=60))
    runs.start(_new_run("gc-stop"))
    stopped = runs.request_stop("gc-stop")
    assert stopped is not None
    assert stopped.stop_requested
    assert runs.progress("gc-stop", "links", "p/app", {}) is True
    runs.finish("gc-stop", "stopped", {"links": 3})
    finished = runs.run("gc-stop")
    assert finished is not None
    assert (finished.status, finished.counts) == ("stopped", {"links": 3})
    assert json.dumps(finished.counts)
