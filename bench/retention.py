"""Retention evaluation at scale: one repository of N tagged artifacts (plus a signature for
every tenth), a policy of three rules.

    python bench/retention.py [--artifacts 100000] [--rounds 3] [--database sqlite|postgresql]

Measured, median of `--rounds`:
- evaluate: `domain.retention.evaluate` alone (pure: ranking, closure, deletion order);
- read: `RetentionStore.artifacts` + `PullStore.last_pulled` (what a run reads per repository),
  on a database seeded with bulk inserts (the rows a push writes).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import insert

from moorage.domain.retention import Artifact, evaluate, make_rule
from moorage.metadata.database import make_engine, migrate, sqlite_url
from moorage.metadata.lifecycle.pull_store import PullStore, PullSummary
from moorage.metadata.lifecycle.retention_store import RetentionStore
from moorage.metadata.registry.models import Manifest, Repository, RepositoryManifest, Tag

NOW = datetime(2026, 6, 1, tzinfo=UTC)
RULES = (
    make_rule("latestPushed", 10, tags=["v*"]),
    make_rule("pulledWithinDays", 30),
    make_rule("pushedWithinDays", 7, tags=[], untagged=True),
)


def _digest(i: int, kind: int = 0) -> str:
    return f"sha256:{kind:02x}{i:062x}"


def artifacts(count: int) -> list[Artifact]:
    found = []
    for i in range(count):
        found.append(
            Artifact(
                _digest(i),
                NOW - timedelta(minutes=i),
                tags=(f"v{i}",) if i % 2 else (f"build-{i}",),
                pulled_at=NOW - timedelta(days=i % 90) if i % 3 == 0 else None,
            )
        )
        if i % 10 == 0:
            found.append(Artifact(_digest(i, 1), NOW - timedelta(minutes=i), subject=_digest(i)))
    return found


def seed(url: str, count: int) -> None:
    engine = make_engine(url, pool_size=1)
    migrate(engine)
    with engine.begin() as connection:
        connection.execute(insert(Repository.__table__), [{"name": "team/app", "created_at": NOW}])
        rows = [
            {
                "digest": _digest(i),
                "media_type": "application/vnd.oci.image.manifest.v1+json",
                "size": 2,
                "body": b"{}",
                "subject_digest": None,
                "created_at": NOW,
            }
            for i in range(count)
        ]
        for start in range(0, count, 5000):
            connection.execute(insert(Manifest.__table__), rows[start : start + 5000])
            connection.execute(
                insert(RepositoryManifest.__table__),
                [
                    {"repository_id": 1, "digest": r["digest"], "created_at": NOW}
                    for r in rows[start : start + 5000]
                ],
            )
            connection.execute(
                insert(Tag.__table__),
                [
                    {
                        "repository_id": 1,
                        "name": f"v{i}",
                        "manifest_digest": _digest(i),
                        "updated_at": NOW - timedelta(minutes=i),
                    }
                    for i in range(start, min(start + 5000, count))
                ],
            )
    PullStore(engine).record(
        {("team/app", _digest(i)): PullSummary(NOW, 1) for i in range(0, count, 3)}
    )
    engine.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifacts", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    given = artifacts(args.artifacts)
    times = []
    for _ in range(args.rounds):
        started = time.perf_counter()
        plan = evaluate(RULES, "team/app", given, now=NOW)
        times.append(time.perf_counter() - started)
    removed = len(plan.removals)
    print(
        f"evaluate {len(given)} artifacts ({args.artifacts} tags): median"
        f" {statistics.median(times):.3f} s, {removed} removed"
    )
    with tempfile.TemporaryDirectory() as directory:
        url = sqlite_url(Path(directory) / "bench.db")
        seed(url, args.artifacts)
        engine = make_engine(url, pool_size=1)
        store, pulls = RetentionStore(engine), PullStore(engine)
        reads = []
        for _ in range(args.rounds):
            started = time.perf_counter()
            stored = store.artifacts("team/app")
            pulls.last_pulled("team/app", [a.digest for a in stored])
            reads.append(time.perf_counter() - started)
        print(f"read {len(stored)} artifacts (SQLite): median {statistics.median(reads):.3f} s")
        engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
