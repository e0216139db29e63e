"""Last-pull tracking: batched upserts that keep the latest time whoever flushes last, on
SQLite and PostgreSQL, and a tracker that writes once per interval, not once per pull."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from moorage.domain.events import Actor, EventKind, RegistryEvent
from moorage.metadata.database import make_engine
from moorage.metadata.lifecycle.pull_store import PullStore, PullSummary
from moorage.services.lifecycle.pull_tracking import PullTracker
from moorage.services.threads import Threads
from tests.support.backends import query_database

A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def store(metadata_url: str) -> Iterator[PullStore]:
    engine = make_engine(metadata_url, pool_size=2)
    for name in ("team/app", "team/other"):
        query_database(
            metadata_url, "INSERT INTO repositories (name, created_at) VALUES (?, ?)", name, T0
        )
    yield PullStore(engine)
    engine.dispose()


def test_upsert_keeps_the_latest_time_and_adds_counts(store: PullStore) -> None:
    later, earlier = T0 + timedelta(minutes=5), T0
    assert store.record({("team/app", A): PullSummary(later, 3)}) == 1
    # Another process flushes an older batch afterwards: the time stays the later one.
    assert (
        store.record(
            {("team/app", A): PullSummary(earlier, 2), ("team/app", B): PullSummary(earlier, 1)}
        )
        == 2
    )
    assert store.last_pulled("team/app", [A, B]) == {A: later, B: earlier}
    assert store.pull_counts("team/app") == {A: 5, B: 1}
    store.record({("team/app", A): PullSummary(later + timedelta(seconds=1), 1)})
    assert store.last_pulled("team/app", [A]) == {A: later + timedelta(seconds=1)}


def test_pulls_are_per_repository(store: PullStore) -> None:
    store.record({("team/app", A): PullSummary(T0, 1)})
    assert store.last_pulled("team/other", [A]) == {}
    assert store.last_pulled("team/app", [A, B]) == {A: T0}


def test_pulls_of_missing_repositories_are_dropped(store: PullStore) -> None:
    written = store.record(
        {("team/gone", A): PullSummary(T0, 1), ("team/app", A): PullSummary(T0, 1)}
    )
    assert written == 1
    assert store.last_pulled("team/gone", [A]) == {}


def test_many_digests_are_read_and_written_in_chunks(store: PullStore) -> None:
    digests = [f"sha256:{index:064x}" for index in range(1200)]
    batch = {
        ("team/app", d): PullSummary(T0 + timedelta(seconds=i), 1) for i, d in enumerate(digests)
    }
    assert store.record(batch) == 1200
    found = store.last_pulled("team/app", digests)
    assert len(found) == 1200
    assert found[digests[-1]] == T0 + timedelta(seconds=1199)


def _pulled(repository: str, digest: str, at: datetime) -> RegistryEvent:
    return RegistryEvent(EventKind.MANIFEST_PULLED, repository, digest, "1.0", actor=Actor(), at=at)


class CountingStore(PullStore):
    def __init__(self, inner: PullStore) -> None:
        self.inner = inner
        self.batches: list[int] = []

    def record(self, pulls):  # type: ignore[no-untyped-def]
        self.batches.append(len(pulls))
        return self.inner.record(pulls)

    def last_pulled(self, repository, digests):  # type: ignore[no-untyped-def]
        return self.inner.last_pulled(repository, digests)


def test_tracker_coalesces_pulls_into_one_write(store: PullStore) -> None:
    counting = CountingStore(store)
    threads = Threads(2)

    async def scenario() -> None:
        tracker = PullTracker(counting, threads, flush_seconds=3600)
        for second in range(100):
            tracker.on_event(_pulled("team/app", A, T0 + timedelta(seconds=second)))
        tracker.on_event(_pulled("team/app", B, T0))
        # Not every event is a pull.
        tracker.on_event(
            RegistryEvent(EventKind.MANIFEST_PUSHED, "team/app", B, at=T0 + timedelta(days=1))
        )
        task = asyncio.create_task(tracker.run())
        await asyncio.sleep(0)
        task.cancel()  # shutdown flushes what is buffered
        await asyncio.gather(task, return_exceptions=True)

    try:
        asyncio.run(scenario())
    finally:
        threads.shutdown()
    assert counting.batches == [2]
    assert store.last_pulled("team/app", [A, B]) == {A: T0 + timedelta(seconds=99), B: T0}
    assert store.pull_counts("team/app") == {A: 100, B: 1}


def test_tracker_flushes_on_its_interval(store: PullStore) -> None:
    threads = Threads(2)

    async def scenario() -> None:
        tracker = PullTracker(store, threads, flush_seconds=0.05)
        task = asyncio.create_task(tracker.run())
        tracker.on_event(_pulled("team/app", A, T0))
        for _ in range(400):
            if store.last_pulled("team/app", [A]):
                break
            await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    try:
        asyncio.run(scenario())
    finally:
        threads.shutdown()
    assert store.last_pulled("team/app", [A]) == {A: T0}
