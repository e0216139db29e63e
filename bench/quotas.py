"""What quotas cost a push, with a project that already holds many blobs.

    python bench/quotas.py [--blobs 100000] [--links 2000] [--backends sqlite,postgresql]

For each backend (SQLite file, PostgreSQL server), a project is seeded with `--blobs` blobs
linked into 10 of its repositories (bulk inserts in one transaction, the counters kept by the
triggers as for any other insert), then `--links` new blobs are linked one transaction each,
as an upload commit does (`MetadataStore.link_blob`), in three set-ups:

- baseline: the quota triggers dropped (what a push cost before quotas);
- counters: triggers in place, no limit (every project pays this);
- quota: triggers and a storage limit (the check, the project lock and the counter read).

Reported: median and p95 latency of one link, and for comparison the two things counters
avoid or make rare: computing the project's usage from the links with one query (what a check
without counters would run on every upload) and a full `recount`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support.services

from sqlalchemy import Engine, insert
from tests.support.services import PostgresServer

from moorage.domain.quotas import QuotaLimits, QuotaOverride
from moorage.metadata.database import make_engine, migrate, sqlite_url, write_transaction
from moorage.metadata.lifecycle import quota_triggers
from moorage.metadata.lifecycle.quota_store import QuotaStore
from moorage.metadata.registry.models import utcnow
from moorage.metadata.registry.registry_records import (
    blobs_table,
    repositories_table,
    repository_blobs_table,
)
from moorage.metadata.registry.store import MetadataStore

_BATCH = 10_000


def digest(n: int) -> str:
    return "sha256:" + f"{n:064x}"


def seed(engine: Engine, project: str, blobs: int) -> float:
    started = time.perf_counter()
    now = utcnow()
    with write_transaction(engine) as connection:
        connection.execute(
            insert(repositories_table),
            [{"name": f"{project}/r{n}", "created_at": now} for n in range(10)],
        )
        ids = [
            row[0]
            for row in connection.execute(
                repositories_table.select()
                .with_only_columns(repositories_table.c.id)
                .where(repositories_table.c.name.like(f"{project}/r%"))
            )
        ]
        for start in range(0, blobs, _BATCH):
            numbers = range(start, min(start + _BATCH, blobs))
            connection.execute(
                insert(blobs_table),
                [{"digest": digest(n), "size": 1000 + n % 7, "created_at": now} for n in numbers],
            )
            connection.execute(
                insert(repository_blobs_table),
                [
                    {"repository_id": ids[n % len(ids)], "digest": digest(n), "created_at": now}
                    for n in numbers
                ],
            )
    return time.perf_counter() - started


def timed(count: int, step: Callable[[int], None]) -> list[float]:
    times = []
    for n in range(count):
        started = time.perf_counter()
        step(n)
        times.append(time.perf_counter() - started)
    return times


def summary(times: list[float]) -> str:
    ordered = sorted(times)
    p95 = ordered[int(len(ordered) * 0.95)]
    return f"median {statistics.median(times) * 1000:.3f} ms, p95 {p95 * 1000:.3f} ms"


def bench(label: str, url: str, blobs: int, links: int) -> None:
    engine = make_engine(url, pool_size=2)
    migrate(engine)
    quotas = QuotaStore(engine)
    print(f"## {label}: {blobs} blobs in one project")
    print(f"seed (bulk insert, triggers on): {seed(engine, 'big', blobs):.1f} s")
    base = 10_000_000

    def link(store: MetadataStore, offset: int) -> Callable[[int], None]:
        return lambda n: store.link_blob(f"big/r{n % 10}", digest(base + offset + n), 1000)

    with write_transaction(engine) as connection:
        quota_triggers.drop(connection)
    baseline = timed(links, link(MetadataStore(engine), 0))
    with write_transaction(engine) as connection:
        quota_triggers.install(connection)
    quotas.recount()  # the baseline's links were not counted
    counters = timed(links, link(MetadataStore(engine), links))
    quotas.set_override("big", QuotaOverride(bytes=10**15), "bench")
    limited = timed(links, link(MetadataStore(engine, quota_defaults=QuotaLimits()), 2 * links))
    print(f"link_blob, baseline (no triggers): {summary(baseline)}")
    print(f"link_blob, counters (no limit):    {summary(counters)}")
    print(f"link_blob, quota checked:          {summary(limited)}")
    query = timed(5, lambda _n: quotas.actual())
    print(
        f"usage of every project by query (what a check without counters costs): {summary(query)}"
    )
    started = time.perf_counter()
    drift = quotas.recount()
    print(f"recount: {time.perf_counter() - started:.2f} s, {len(drift)} corrected")
    assert quotas.drift() == []
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--blobs", type=int, default=100_000)
    parser.add_argument("--links", type=int, default=2000)
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args()
    backends = args.backends.split(",")
    with tempfile.TemporaryDirectory(prefix="moorage-quota-bench-") as directory:
        if "sqlite" in backends:
            bench("SQLite", sqlite_url(Path(directory) / "bench.db"), args.blobs, args.links)
        if "postgresql" in backends:
            postgres = PostgresServer()
            postgres.start()
            try:
                url = postgres.create_database("quota_bench")
                bench("PostgreSQL", url, args.blobs, args.links)
            finally:
                postgres.stop()


if __name__ == "__main__":
    main()
