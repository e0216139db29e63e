"""Tag and repository listings of the metadata store, on SQLite and on PostgreSQL.

Pages are keyset pages in byte order (the order Distribution answers in, and the one a `last`
cursor needs to be total): every boundary of `n` and `last` is walked on names that differ only
by case, `_`, `-`, `.` and digits. The plan tests run EXPLAIN on the very statements a listing
sends and assert that an index serves the order and the range: no full scan, no sort, so a page
costs the same at a million tags as at ten.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, select, text

from moorage.metadata.database import make_engine, migrate, sqlite_url, write_transaction
from moorage.metadata.registry.models import utcnow
from moorage.metadata.registry.registry_records import (
    manifests_table,
    repositories_table,
    repository_manifests_table,
    tags_table,
)
from moorage.metadata.registry.store import MetadataStore
from tests.support.services import PostgresServer

# Byte order: digits < uppercase < "_" < lowercase; "-" < "." < digits; "v1.10" < "v1.9".
TRICKY_TAGS = [
    "latest",
    "LATEST",
    "Latest",
    "a",
    "A",
    "a-b",
    "a.b",
    "a_b",
    "a0",
    "aB",
    "ab",
    "Ab",
    "_",
    "_a",
    "0",
    "9",
    "09",
    "v1.9",
    "v1.10",
    "v1-9",
    "v1_9",
    "Z",
    "z",
    "x" * 128,
]
# Cursors that are no tag: between, before and after every tag above.
ABSENT_CURSORS = ["a-", "a/", "Zz", "aa", "v1", "v1.", "0-", "-", ".", "~", "A0", "_0", "zz"]
_DIGEST = "sha256:" + "0" * 64
_counter = itertools.count()


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


def _engine(backend: str, directory: Path, request: pytest.FixtureRequest) -> Engine:
    if backend == "sqlite":
        url = sqlite_url(directory / "moorage.db")
    else:
        server: PostgresServer = request.getfixturevalue("postgres")
        url = server.create_database(f"listing{next(_counter)}")
    engine = make_engine(url, pool_size=2)
    migrate(engine)
    return engine


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    engine = _engine(request.param, tmp_path, request)
    try:
        yield engine
    finally:
        engine.dispose()


def seed(engine: Engine, tags_by_repository: dict[str, list[str]]) -> None:
    """The rows a push and its tag PUTs write, inserted in bulk."""
    now = utcnow()
    with write_transaction(engine) as connection:
        connection.execute(
            manifests_table.insert(),
            [{"digest": _DIGEST, "media_type": "m", "size": 1, "body": b"{}", "created_at": now}],
        )
        connection.execute(
            repositories_table.insert(),
            [{"name": name, "created_at": now} for name in tags_by_repository],
        )
        ids = {
            name: repository_id
            for name, repository_id in connection.execute(
                select(repositories_table.c.name, repositories_table.c.id)
            )
        }
        connection.execute(
            repository_manifests_table.insert(),
            [
                {"repository_id": ids[name], "digest": _DIGEST, "created_at": now}
                for name in tags_by_repository
            ],
        )
        rows = [
            {"repository_id": ids[name], "name": tag, "manifest_digest": _DIGEST, "updated_at": now}
            for name, tags in tags_by_repository.items()
            for tag in tags
        ]
        for start in range(0, len(rows), 10_000):
            connection.execute(tags_table.insert(), rows[start : start + 10_000])


# -- pages


def test_tags_are_in_byte_order(engine: Engine) -> None:
    seed(engine, {"r/one": TRICKY_TAGS})
    store = MetadataStore(engine)
    assert store.list_tags("r/one", None, 1000) == sorted(TRICKY_TAGS)
    assert sorted(TRICKY_TAGS)[:5] == ["0", "09", "9", "A", "Ab"]


@pytest.mark.parametrize("n", [1, 2, 3, 7, len(TRICKY_TAGS) - 1, len(TRICKY_TAGS)])
def test_walking_pages_by_last_yields_every_tag_once(engine: Engine, n: int) -> None:
    seed(engine, {"r/one": TRICKY_TAGS})
    store = MetadataStore(engine)
    collected: list[str] = []
    last: str | None = None
    while True:
        page = store.list_tags("r/one", last, n)
        assert page is not None
        assert len(page) <= n
        if not page:
            break
        collected.extend(page)
        last = page[-1]
    assert collected == sorted(TRICKY_TAGS)


def test_last_is_exclusive_whether_or_not_it_is_a_tag(engine: Engine) -> None:
    seed(engine, {"r/one": TRICKY_TAGS})
    store = MetadataStore(engine)
    ordered = sorted(TRICKY_TAGS)
    for cursor in [*TRICKY_TAGS, *ABSENT_CURSORS]:
        expected = [tag for tag in ordered if tag > cursor]
        assert store.list_tags("r/one", cursor, 1000) == expected, cursor
        assert store.list_tags("r/one", cursor, 1) == expected[:1], cursor
    assert store.list_tags("r/one", ordered[-1], 10) == []


def test_a_page_holds_only_its_repositorys_tags(engine: Engine) -> None:
    # Repository ids are neighbours in the index: a page must not run into the next one's.
    seed(engine, {"r/a": ["x", "y"], "r/b": ["a", "b", "z"], "r/c": ["0"], "r/empty": []})
    store = MetadataStore(engine)
    assert store.list_tags("r/a", None, 10) == ["x", "y"]
    assert store.list_tags("r/a", "y", 10) == []
    assert store.list_tags("r/b", None, 10) == ["a", "b", "z"]
    assert store.list_tags("r/b", "b", 10) == ["z"]
    assert store.list_tags("r/empty", None, 10) == []
    assert store.list_tags("r/missing", None, 10) is None
    assert store.list_tags("r/missing", "a", 10) is None


def test_zero_limit_is_an_empty_page(engine: Engine) -> None:
    seed(engine, {"r/one": ["a"]})
    assert MetadataStore(engine).list_tags("r/one", None, 0) == []


def test_repositories_page_in_byte_order(engine: Engine) -> None:
    names = ["p/a", "p/a/b", "p/a-b", "p/a.b", "p/a_b", "p/a0", "p0/a", "p-1/a", "p_1/a", "q"]
    seed(engine, {name: [] for name in names})
    store = MetadataStore(engine)
    ordered = sorted(names)
    assert store.list_repositories(None, 100) == ordered
    for n in (1, 3, len(names)):
        collected: list[str] = []
        last: str | None = None
        while page := store.list_repositories(last, n):
            assert len(page) <= n
            collected.extend(page)
            last = page[-1]
        assert collected == ordered
    for cursor in [*names, "p/", "p/a/", "p/b", "a", "z"]:
        assert store.list_repositories(cursor, 100) == [x for x in ordered if x > cursor]


# -- plans

_BIG = 50_000


def statements_of(engine: Engine, call: Any) -> list[tuple[str, Any]]:
    """The statements (with their parameters) that `call` sends to the database."""
    sent: list[tuple[str, Any]] = []

    def remember(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            sent.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", remember)
    try:
        call()
    finally:
        event.remove(engine, "before_cursor_execute", remember)
    assert sent
    return sent


def plan_of(engine: Engine, statement: str, parameters: Any) -> str:
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            rows = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
            return "\n".join(str(row[-1]) for row in rows)
        rows = connection.exec_driver_sql(f"EXPLAIN {statement}", parameters)
        return "\n".join(str(row[0]) for row in rows)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def big(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Engine, MetadataStore]]:
    """One repository with many tags among many small ones, with fresh planner statistics."""
    engine = _engine(request.param, tmp_path_factory.mktemp("big"), request)
    repositories = {f"small/r{k:05d}": ["latest", "v1"] for k in range(2_000)}
    repositories["big/r"] = [f"t{k:06d}" for k in range(_BIG)]
    seed(engine, repositories)
    with engine.connect() as connection:
        connection.execute(text("ANALYZE"))
        connection.commit()
    try:
        yield engine, MetadataStore(engine)
    finally:
        engine.dispose()


def assert_index_serves(engine: Engine, plan: str, table: str) -> None:
    if engine.dialect.name == "sqlite":
        # SEARCH = an index range; SCAN <table> would read the whole table, and a temp b-tree
        # would sort what the index should have delivered in order.
        assert f"SEARCH {table} USING" in plan, plan
        assert "INDEX" in plan.upper(), plan
        assert f"SCAN {table}" not in plan, plan
        assert "TEMP B-TREE" not in plan, plan
    else:
        assert f"on {table}" in plan, plan
        assert "Index" in plan, plan
        assert "Seq Scan" not in plan, plan
        assert "Sort" not in plan, plan
        assert "Limit" in plan, plan


@pytest.mark.parametrize("last", [None, "t025000", "t0250001", "t049999"])
def test_a_tag_page_is_an_index_range(big: tuple[Engine, MetadataStore], last: str | None) -> None:
    engine, store = big
    sent = statements_of(engine, lambda: store.list_tags("big/r", last, 101))
    page = [s for s in sent if "tags" in s[0]]
    assert len(page) == 1, sent
    assert_index_serves(engine, plan_of(engine, *page[0]), "tags")
    for statement, parameters in sent:
        plan = plan_of(engine, statement, parameters)
        assert "SCAN repositories" not in plan, plan
        assert "Seq Scan on repositories" not in plan, plan


@pytest.mark.parametrize("last", [None, "small/r01000", "small/r0", "zzz"])
def test_a_repository_page_is_an_index_range(
    big: tuple[Engine, MetadataStore], last: str | None
) -> None:
    engine, store = big
    sent = statements_of(engine, lambda: store.list_repositories(last, 101))
    assert len(sent) == 1, sent
    plan = plan_of(engine, *sent[0])
    if engine.dialect.name == "sqlite" and last is None:
        # Without a lower bound SQLite walks the index from its start: still in index order
        # and stopped by the LIMIT, never the table and never a sort.
        assert "SCAN repositories USING COVERING INDEX" in plan, plan
        assert "TEMP B-TREE" not in plan, plan
    else:
        assert_index_serves(engine, plan, "repositories")


def test_a_deep_page_reads_only_its_rows(big: tuple[Engine, MetadataStore]) -> None:
    """The page after the 49,000th tag is the same 100 tags as a slice of the whole list."""
    _, store = big
    everything = store.list_tags("big/r", None, _BIG)
    assert everything is not None
    assert len(everything) == _BIG
    assert store.list_tags("big/r", everything[48_999], 100) == everything[49_000:49_100]
