"""The audit log: an entry for each kind of operation, tamper evidence, and no secrets."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from moorage.metadata.access.iam_store import IamStore
from moorage.metadata.database import make_engine, migrate, reset_sequences, sqlite_url
from moorage.metadata.schema import Base
from moorage.services.access.audit import verify_chain
from moorage.services.access.tokens import TokenService
from tests.support.auth import ADMIN_PASSWORD, ADMIN_USER, RegistryAuth
from tests.support.oci import push_image
from tests.support.server import RegistryProcess, database_url_for, session_postgres
from tests.support.wait import wait_until


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    with RegistryProcess(tmp_path_factory.mktemp("audit") / "data").start() as process:
        yield process


def _db(server: RegistryProcess) -> Path:
    return server.data_dir / "moorage.db"


def _url(server: RegistryProcess) -> str:
    """The server's database: its SQLite file, or its PostgreSQL database under
    MOORAGE_TEST_DATABASE=postgresql."""
    return database_url_for(server.data_dir) or sqlite_url(_db(server))


def _entries(server: RegistryProcess) -> list[dict[str, object]]:
    engine = make_engine(_url(server), pool_size=1)
    try:
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT * FROM audit_log ORDER BY id")).mappings()
            return [dict(row) for row in rows]
    finally:
        engine.dispose()


Rows = list[dict[str, object]]


def _wait_for(
    server: RegistryProcess, predicate: Callable[[Rows], bool], timeout: float = 10.0
) -> Rows:
    """The audit rows once `predicate` holds (entries are written in batches); fails if it
    does not hold within `timeout`."""
    rows: Rows = []

    def holds() -> bool:
        rows[:] = _entries(server)
        return predicate(rows)

    wait_until(holds, timeout, lambda: f"audit rows to match; they are {rows}", interval=0.1)
    return rows


def _verify(server: RegistryProcess) -> list[str]:
    engine = make_engine(_url(server), pool_size=1)
    store = IamStore(engine)
    try:
        tokens = TokenService(store, service="moorage", ttl_seconds=300)
        return verify_chain(store, tokens.verify_bytes).problems
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def activity(server: RegistryProcess) -> dict[str, str]:
    """Sign-ins, a push, a pull, a tag delete and a manifest delete."""
    httpx.get(
        f"{server.url}/service/token",
        params={"service": "moorage"},
        auth=(ADMIN_USER, "wrong-password"),
    )
    with httpx.Client(base_url=server.url, auth=RegistryAuth(), timeout=30) as client:
        image = push_image(client, "audited/app", "v1")
        client.get("/v2/audited/app/manifests/v1", headers={"Accept": image.media_type})
        client.put(
            "/v2/audited/app/manifests/extra",
            content=image.body,
            headers={"Content-Type": image.media_type},
        )
        assert client.delete("/v2/audited/app/manifests/extra").status_code == 202
        assert client.delete(f"/v2/audited/app/manifests/{image.digest}").status_code == 202
    return {"digest": image.digest}


def test_each_operation_leaves_an_entry(server: RegistryProcess, activity: dict[str, str]) -> None:
    wanted = {
        "login",
        "project:create",
        "manifest:pushed",
        "manifest:pulled",
        "tag:deleted",
        "manifest:deleted",
    }
    entries = _wait_for(server, lambda rows: wanted <= {row["action"] for row in rows})
    actions = {row["action"] for row in entries}
    assert wanted <= actions
    logins = [row for row in entries if row["action"] == "login"]
    assert {row["result"] for row in logins} >= {"success", "failure"}
    pushed = next(row for row in entries if row["action"] == "manifest:pushed")
    assert pushed["actor"] == ADMIN_USER
    assert pushed["actor_kind"] == "user"
    assert pushed["project"] == "audited"
    assert pushed["client_ip"] == "127.0.0.1"
    assert activity["digest"] in str(pushed["resource"])
    assert json.loads(str(pushed["details"]))["tag"] == "v1"


def test_the_untouched_chain_verifies(server: RegistryProcess, activity: dict[str, str]) -> None:
    _wait_for(server, lambda rows: len(rows) >= 6)
    assert _verify(server) == []


Statement = tuple[str, tuple[object, ...]]


def _tampered_copy(
    server: RegistryProcess, tmp_path: Path, statements: list[Statement]
) -> list[str]:
    """Verify a copy of the database after running `statements` on it (the attacker's edits)."""
    copy = _copy_database(server, tmp_path)
    engine = make_engine(copy, pool_size=1)
    with engine.begin() as connection:
        for sql, parameters in statements:
            named = {f"p{index}": value for index, value in enumerate(parameters)}
            for index in range(len(parameters)):
                sql = sql.replace("?", f":p{index}", 1)
            connection.execute(text(sql), named)
    store = IamStore(engine)
    try:
        return verify_chain(
            store, TokenService(store, service="moorage", ttl_seconds=300).verify_bytes
        ).problems
    finally:
        engine.dispose()


def _copy_database(server: RegistryProcess, tmp_path: Path) -> str:
    """A copy of the server's database, on its backend; its URL."""
    if database_url_for(server.data_dir) is None:
        copy = tmp_path / "copy.db"
        with sqlite3.connect(_db(server)) as source, sqlite3.connect(copy) as target:
            source.backup(target)
        return sqlite_url(copy)
    url = session_postgres().create_database(f"copy_{tmp_path.name}_{os.getpid()}"[:60])
    source, target = make_engine(_url(server), pool_size=1), make_engine(url, pool_size=1)
    try:
        migrate(target)
        with source.connect() as reading, target.begin() as writing:
            for table in Base.metadata.sorted_tables:
                rows = [dict(row) for row in reading.execute(table.select()).mappings()]
                if rows:
                    writing.execute(table.insert(), rows)
            reset_sequences(writing)
    finally:
        source.dispose()
        target.dispose()
    return url


def _middle_id(server: RegistryProcess) -> int:
    ids = [int(str(row["id"])) for row in _entries(server)]
    return ids[len(ids) // 2]


def test_a_modified_entry_is_detected(
    server: RegistryProcess, activity: dict[str, str], tmp_path: Path
) -> None:
    _wait_for(server, lambda rows: len(rows) >= 6)
    target = _middle_id(server)
    problems = _tampered_copy(
        server, tmp_path, [("UPDATE audit_log SET actor = 'someone-else' WHERE id = ?", (target,))]
    )
    assert any(f"entry {target}" in p and "modified" in p for p in problems)


def test_a_deleted_entry_is_detected(
    server: RegistryProcess, activity: dict[str, str], tmp_path: Path
) -> None:
    _wait_for(server, lambda rows: len(rows) >= 6)
    target = _middle_id(server)
    problems = _tampered_copy(server, tmp_path, [("DELETE FROM audit_log WHERE id = ?", (target,))])
    assert any("chain broken" in p for p in problems)


def test_reordered_entries_are_detected(
    server: RegistryProcess, activity: dict[str, str], tmp_path: Path
) -> None:
    _wait_for(server, lambda rows: len(rows) >= 6)
    first, second = _middle_id(server), _middle_id(server) + 1
    swap: list[Statement] = [
        ("UPDATE audit_log SET id = -1 WHERE id = ?", (first,)),
        ("UPDATE audit_log SET id = ? WHERE id = ?", (first, second)),
        ("UPDATE audit_log SET id = ? WHERE id = -1", (second,)),
    ]
    assert any("chain broken" in p for p in _tampered_copy(server, tmp_path, swap))


def test_a_rehashed_forgery_still_breaks_the_chain(
    server: RegistryProcess, activity: dict[str, str], tmp_path: Path
) -> None:
    # Recomputing one entry's own hash after editing it does not help: the next entry's link
    # still names the old hash.
    from moorage.metadata.access.iam_store import AuditRecord, entry_hash

    _wait_for(server, lambda rows: len(rows) >= 6)
    rows = _entries(server)
    row = rows[len(rows) // 2]
    record = AuditRecord(
        int(str(row["id"])),
        _parse(str(row["at"])),
        str(row["actor_kind"]),
        "forger",
        row["client_ip"],
        row["certificate"],
        str(row["action"]),
        row["project"],  # type: ignore[arg-type]
        row["resource"],
        str(row["result"]),  # type: ignore[arg-type]
        json.loads(str(row["details"])) if row["details"] else None,
        str(row["prev_hash"]),
        "",
    )
    forged_hash = entry_hash(record.prev_hash, record)
    problems = _tampered_copy(
        server,
        tmp_path,
        [
            (
                "UPDATE audit_log SET actor = 'forger', hash = ? WHERE id = ?",
                (forged_hash, record.id),
            )
        ],
    )
    assert any("chain broken" in p for p in problems)


def _parse(text: str) -> object:
    from datetime import datetime

    return datetime.fromisoformat(text)


def test_no_secret_in_any_entry_or_log_line(
    server: RegistryProcess, activity: dict[str, str]
) -> None:
    _wait_for(server, lambda rows: len(rows) >= 6)
    with httpx.Client(base_url=server.url, auth=RegistryAuth(), timeout=30) as client:
        client.get("/v2/audited/app/tags/list")
        token = client.auth._tokens  # type: ignore[union-attr]
    secrets = [ADMIN_PASSWORD, "wrong-password", *[t for t in token.values()]]
    audit_text = "\n".join(str(row) for row in _entries(server))
    log_text = server.logs()
    for secret in secrets:
        assert secret not in audit_text
        assert secret not in log_text
