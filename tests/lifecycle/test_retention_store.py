"""The retention store on SQLite and PostgreSQL: policies, one running run per project, the
schedule's single claim, decisions, and what a repository holds as retention reads it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from moorage.metadata.database import make_engine
from moorage.metadata.lifecycle.retention_store import (
    SUCCEEDED,
    DecisionRecord,
    ProjectMissingError,
    RetentionStore,
)
from tests.support.backends import query_database

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def d(letter: str) -> str:
    return "sha256:" + letter * 64


@pytest.fixture
def store(metadata_url: str) -> Iterator[RetentionStore]:
    engine = make_engine(metadata_url, pool_size=2)
    for name in ("team", "other", "team_x"):
        query_database(
            metadata_url,
            "INSERT INTO projects (name, public, created_at) VALUES (?, ?, ?)",
            name,
            False,
            T0,
        )
    yield RetentionStore(engine)
    engine.dispose()


def _seed_repository(url: str) -> None:
    """team/app: a (v1, pushed at T0, retagged latest at T0+2h), an index i over c, a
    referrer s of a, and a promoted to prod/app:1."""
    sql = query_database
    sql(url, "INSERT INTO repositories (name, created_at) VALUES (?, ?)", "team/app", T0)
    sql(url, "INSERT INTO repositories (name, created_at) VALUES (?, ?)", "teamx/app", T0)
    (repo_id,) = sql(url, "SELECT id FROM repositories WHERE name = ?", "team/app")[0]
    for letter, subject in (("a", None), ("c", None), ("i", None), ("s", d("a"))):
        sql(
            url,
            "INSERT INTO manifests (digest, media_type, size, body, subject_digest, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            d(letter),
            "application/vnd.oci.image.manifest.v1+json",
            2,
            b"{}",
            subject,
            T0,
        )
        sql(
            url,
            "INSERT INTO repository_manifests (repository_id, digest, created_at) VALUES (?, ?, ?)",
            repo_id,
            d(letter),
            T0 + timedelta(minutes=ord(letter)),
        )
    sql(
        url,
        "INSERT INTO manifest_children (parent_digest, child_digest) VALUES (?, ?)",
        d("i"),
        d("c"),
    )
    for tag, letter, at in (
        ("v1", "a", T0),
        ("latest", "a", T0 + timedelta(hours=2)),
        ("multi", "i", T0),
    ):
        sql(
            url,
            "INSERT INTO tags (repository_id, name, manifest_digest, updated_at)"
            " VALUES (?, ?, ?, ?)",
            repo_id,
            tag,
            d(letter),
            at,
        )
    sql(
        url,
        "INSERT INTO promotions (destination_project, destination_repository, tag, digest,"
        " media_type, source_repository, source_reference, requester, requester_kind, gates,"
        " record_digest, envelope, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        "prod",
        "prod/app",
        "1",
        d("a"),
        "application/vnd.oci.image.manifest.v1+json",
        "team/app",
        "v1",
        "admin",
        "user",
        "[]",
        d("r"),
        b"{}",
        T0,
    )


def test_artifacts_as_retention_sees_them(store: RetentionStore, metadata_url: str) -> None:
    _seed_repository(metadata_url)
    assert store.repositories("team") == ["team/app"]  # not teamx/app
    found = {a.digest: a for a in store.artifacts("team/app")}
    assert set(found) == {d("a"), d("c"), d("i"), d("s")}
    a = found[d("a")]
    assert a.tags == ("latest", "v1")
    assert a.pushed_at == T0 + timedelta(hours=2)  # the newest of its link and its tags
    assert a.promoted_to == "prod/app:1"
    assert found[d("i")].children == (d("c"),)
    assert found[d("s")].subject == d("a")
    assert found[d("c")].pushed_at == T0 + timedelta(minutes=ord("c"))
    assert store.current_tags("team/app", d("a")) == ["latest", "v1"]
    assert store.current_tags("team/app", d("z")) is None
    assert store.artifacts("team/none") == []


def test_policy_crud_and_schedule_claim(store: RetentionStore) -> None:
    assert store.policy("team") is None
    rules = [{"criterion": "always"}]
    first = T0 + timedelta(hours=3)
    record, created = store.put_policy("team", rules, "0 3 * * *", True, first, "alice")
    assert created
    assert record.rules == rules
    assert record.next_run_at == first
    _, created = store.put_policy("team", rules, "0 3 * * *", True, first, "bob")
    assert not created
    assert store.policy("team").updated_by == "bob"  # type: ignore[union-attr]
    assert [p.project for p in store.due(first)] == ["team"]
    assert store.due(first - timedelta(seconds=1)) == []
    # Two processes see the same firing: one moves it forward.
    following = first + timedelta(days=1)
    assert store.advance("team", first, following)
    assert not store.advance("team", first, following)
    assert store.due(first) == []
    with pytest.raises(ProjectMissingError):
        store.put_policy("nope", rules, None, True, None, "alice")
    assert [p.project for p in store.policies()] == ["team"]
    assert store.delete_policy("team")
    assert not store.delete_policy("team")


def test_one_run_per_project_at_a_time(store: RetentionStore) -> None:
    def start(project: str, lease: float = 600) -> object:
        return store.start_run(
            project,
            dry_run=True,
            trigger="manual",
            requested_by="alice",
            rules=[],
            lease_seconds=lease,
        )

    first = start("team")
    assert first is not None
    assert start("team") is None  # busy
    assert start("other") is not None  # another project is independent
    store.finish_run(first.id, SUCCEEDED)  # type: ignore[attr-defined]
    assert start("team", lease=-1) is not None  # finished: a new one may start
    # A run whose lease ran out (a crashed process) no longer blocks.
    assert start("team") is not None


def test_decisions_are_counted_and_paged(store: RetentionStore) -> None:
    run = store.start_run(
        "team", dry_run=False, trigger="manual", requested_by="alice", rules=[], lease_seconds=60
    )
    assert run is not None
    outcomes = ["kept", "removed", "removed", "refused", "skipped", "failed"] * 200
    rows = [
        DecisionRecord(
            0,
            "team/app",
            f"sha256:{i:064x}",
            [f"t{i}"],
            outcome,
            "why",
            1 if outcome == "kept" else None,
        )
        for i, outcome in enumerate(outcomes)
    ]
    store.record_decisions(run.id, rows, 60)
    finished = store.finish_run(run.id, SUCCEEDED)
    assert (finished.artifacts, finished.kept, finished.removed, finished.failed) == (
        1200,
        400,
        400,
        400,
    )
    assert finished.finished_at is not None
    seen: list[str] = []
    after = None
    while True:
        page = store.decisions(run.id, after=after, limit=500)
        seen.extend(x.digest for x in page)
        if len(page) < 500:
            break
        after = page[-1].id
    assert seen == [row.digest for row in rows]
    removed = store.decisions(run.id, after=None, limit=1000, outcome="removed")
    assert len(removed) == 400
    assert removed[0].tags == ["t1"]
    assert [r.id for r in store.runs("team", 10)] == [run.id]
    assert store.runs("team", 10, before=run.id) == []


def test_deleting_a_project_takes_its_policy_and_history(
    store: RetentionStore, metadata_url: str
) -> None:
    store.put_policy("team", [{"criterion": "always"}], None, True, None, "alice")
    run = store.start_run(
        "team", dry_run=True, trigger="manual", requested_by="alice", rules=[], lease_seconds=60
    )
    assert run is not None
    store.record_decisions(
        run.id, [DecisionRecord(0, "team/app", d("a"), [], "kept", "x", None)], 60
    )
    query_database(metadata_url, "DELETE FROM projects WHERE name = ?", "team")
    assert store.policy("team") is None
    assert store.run(run.id) is None
    assert query_database(metadata_url, "SELECT count(*) FROM retention_decisions")[0][0] == 0
