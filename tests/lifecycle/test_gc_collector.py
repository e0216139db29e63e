"""The collector in-process, on each metadata backend with a real filesystem driver: stopping
and resuming a run, finishing what a dead run left, and the events a run publishes."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from moorage.domain.digest import Digest
from moorage.domain.events import SYSTEM, AccessEvent, DomainEvent
from moorage.metadata.database import make_engine
from moorage.metadata.lifecycle.gc_runs_store import GcRunsStore
from moorage.metadata.lifecycle.gc_store import GcStore
from moorage.metadata.registry.store import MetadataStore
from moorage.metadata.staging.promotion_store import PromotionStore
from moorage.services.lifecycle.gc import GarbageCollector, GcOptions
from moorage.services.lifecycle.gc_runner import build_collector
from moorage.storage.filesystem import FilesystemStorage

HOUR = timedelta(hours=1)


@pytest.fixture
def engine(metadata_url: str) -> Iterator[Engine]:
    engine = make_engine(metadata_url, pool_size=4)
    yield engine
    engine.dispose()


@pytest.fixture
def storage(tmp_path: Path) -> FilesystemStorage:
    return FilesystemStorage(tmp_path / "storage")


def _collector(engine: Engine, storage: FilesystemStorage) -> tuple[GarbageCollector, GcRunsStore]:
    metadata = MetadataStore(engine)
    runs = GcRunsStore(engine, timedelta(seconds=60))
    promotions = PromotionStore(engine, metadata)
    return build_collector(GcStore(engine), runs, storage, metadata, promotions), runs


def _stored_garbage(engine: Engine, storage: FilesystemStorage, count: int) -> list[str]:
    """`count` blobs in storage with rows nobody references, untouched for two hours."""
    metadata = MetadataStore(engine)
    digests = []
    for number in range(count):
        data = f"garbage {number}".encode()
        digest = Digest("sha256", hashlib.sha256(data).hexdigest())
        assert metadata.claim_blob(str(digest), len(data))
        upload = f"u{number}"
        storage.create_upload(upload)
        writer = storage.open_upload(upload)
        writer.write(data)
        writer.commit(digest)
        writer.close()
        digests.append(str(digest))
    with engine.begin() as connection:
        connection.execute(
            text("UPDATE blobs SET touched_at = :old"), {"old": datetime.now(UTC) - 2 * HOUR}
        )
    return digests


def _stored(storage: FilesystemStorage) -> set[str]:
    return {str(digest) for digest in storage.list_blobs()}


def test_a_stopped_run_resumes_where_it_was_and_its_counts_carry_over(
    engine: Engine, storage: FilesystemStorage
) -> None:
    garbage = _stored_garbage(engine, storage, 200)
    collector, runs = _collector(engine, storage)
    options = GcOptions(batch_size=10)
    events: list[DomainEvent] = []
    stopped_after: list[str] = []

    def stop_in_the_blobs(run: object, phase: str, counts: dict[str, int]) -> None:
        if phase == "blobs" and counts.get("blobs", 0) >= 10 and not stopped_after:
            stopped_after.append(phase)
            runs.request_stop(first.id)

    first = collector.start(options, SYSTEM, "cli")
    ended = collector.run(first, options, SYSTEM, events.append, stop_in_the_blobs)

    assert ended.status == "stopped"
    assert ended.phase == "blobs"
    # The stop is seen at the run's next look, a page of blob rows (8 batches of 10) later.
    assert 10 <= ended.counts["blobs"] < 200
    assert len(_stored(storage)) == 200 - ended.counts["blobs"]

    resumed = collector.start(options, SYSTEM, "cli", resume=ended)
    assert resumed.resumed_from == first.id
    finished = collector.run(resumed, options, SYSTEM, events.append)
    assert finished.status == "finished"
    assert finished.counts["blobs"] == 200
    assert not (_stored(storage) & set(garbage))
    audited = [event for event in events if isinstance(event, AccessEvent)]
    assert [event.details["status"] for event in audited if event.details] == [
        "stopped",
        "finished",
    ]


def test_blobs_a_dead_run_marked_are_deleted_by_the_next(
    engine: Engine, storage: FilesystemStorage
) -> None:
    garbage = _stored_garbage(engine, storage, 5)
    GcStore(engine).mark_deleting("gc-dead-run", garbage, datetime.now(UTC) - HOUR)
    # A push of one of them waits: its row is 'deleting'.
    assert MetadataStore(engine).claim_blob(garbage[0], 9) is False
    collector, _ = _collector(engine, storage)
    options = GcOptions()
    run = collector.start(options, SYSTEM, "api")
    finished = collector.run(run, options, SYSTEM, lambda _event: None)
    assert finished.counts["leftover_blobs"] == 5
    assert _stored(storage) == set()
    assert MetadataStore(engine).claim_blob(garbage[0], 9) is True


def test_a_dry_run_changes_nothing(engine: Engine, storage: FilesystemStorage) -> None:
    garbage = _stored_garbage(engine, storage, 7)
    collector, _ = _collector(engine, storage)
    options = GcOptions(dry_run=True)
    run = collector.start(options, SYSTEM, "api")
    finished = collector.run(run, options, SYSTEM, lambda _event: None)
    assert finished.counts["blobs"] == 7
    assert finished.counts["bytes"] == sum(len(f"garbage {n}") for n in range(7))
    assert _stored(storage) == set(garbage)
    assert all(MetadataStore(engine).blob_state(digest) == "live" for digest in garbage)
