"""The shared vulnerability database's pointer, lock and generations on SQLite and PostgreSQL
(real servers), and two nodes' `VulnerabilityDatabase`s over one database and one storage."""

from __future__ import annotations

import itertools
import shutil
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine

from moorage.domain.digest import Digest
from moorage.metadata.database import make_engine, migrate, sqlite_url
from moorage.metadata.lifecycle.gc_store import GcStore
from moorage.metadata.supply_chain.vulndb_store import LockLostError, StoredGeneration, VulndbStore
from moorage.services.supply_chain.vulndb_sharing import SharedGenerationStore
from moorage.storage.filesystem import FilesystemStorage
from moorage.vulnerability.database import (
    DatabaseBusyError,
    NoPreviousGenerationError,
    VulnerabilityDatabase,
    VulnerabilityDatabaseError,
)
from tests.support.osv import osv_record, write_osv_zip
from tests.support.services import PostgresServer

_DATABASES = itertools.count()


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(
    request: pytest.FixtureRequest, tmp_path: Path, postgres: PostgresServer
) -> Iterator[Engine]:
    if request.param == "sqlite":
        url = sqlite_url(tmp_path / "moorage.db")
    else:
        url = postgres.create_database(f"vulndb_{next(_DATABASES)}")
    created = make_engine(url)
    # From the revision before the shared database, as an upgraded install would.
    migrate(created, "0016")
    migrate(created)
    try:
        yield created
    finally:
        created.dispose()


def generation(name: str) -> StoredGeneration:
    return StoredGeneration(name, "sha256:" + name.encode().hex().ljust(64, "0")[:64], 1, "{}")


def test_the_lock_has_one_holder_and_only_the_holder_moves_the_pointer(engine: Engine) -> None:
    store = VulndbStore(engine)
    assert store.pointer().current is None
    assert store.claim_lock("node-a", 60)
    assert not store.claim_lock("node-b", 60)
    assert store.renew_lock("node-a", 60)
    assert not store.renew_lock("node-b", 60)
    with pytest.raises(LockLostError):
        store.move("node-b", "g1", ["g1"], [generation("g1")])
    before = store.version()
    assert store.move("node-a", "g1", ["g1"], [generation("g1")]) == []
    assert store.version() == before + 1
    dropped = store.move("node-a", "g2", ["g2"], [generation("g2")])
    assert [item.id for item in dropped] == ["g1"]
    assert store.generation("g1") is None
    assert store.pointer().history == ("g2",)
    store.release_lock("node-b")  # not the holder: changes nothing
    assert not store.claim_lock("node-b", 60)
    store.release_lock("node-a")
    assert store.claim_lock("node-b", 60)


def test_an_expired_lease_is_taken_over_and_fences_its_old_holder(engine: Engine) -> None:
    store = VulndbStore(engine)
    assert store.claim_lock("crashed-node", -1)  # a lease that has run out already
    assert store.claim_lock("node-b", 60)
    with pytest.raises(LockLostError):
        store.move("crashed-node", "g1", ["g1"], [generation("g1")])
    assert not store.renew_lock("crashed-node", 60)
    assert store.pointer().current is None


def test_concurrent_claims_have_one_winner(engine: Engine) -> None:
    store = VulndbStore(engine)
    barrier = threading.Barrier(6)
    won: list[str] = []

    def claim(owner: str) -> None:
        barrier.wait()
        if store.claim_lock(owner, 60):
            won.append(owner)

    threads = [threading.Thread(target=claim, args=(f"node-{n}",)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1


def test_two_nodes_share_imports_and_rollbacks_through_the_database(
    engine: Engine, tmp_path: Path
) -> None:
    storage = FilesystemStorage(tmp_path / "storage")

    def node(name: str) -> VulnerabilityDatabase:
        cache = tmp_path / name
        store = SharedGenerationStore(VulndbStore(engine), storage, cache / "cache")
        return VulnerabilityDatabase(cache, store=store)

    a, b = node("a"), node("b")
    records = [osv_record("TEST-SHARED-1", "PyPI", "requests", fixed="2.31.0")]
    first = a.import_path(write_osv_zip(tmp_path / "first.zip", records)).generation
    current = b.current()
    assert current is not None
    assert current.generation == first
    assert [record.id for record in current.records_for("PyPI", "requests")] == ["TEST-SHARED-1"]

    records.append(osv_record("TEST-SHARED-2", "PyPI", "requests", fixed="2.32.0"))
    second = b.import_path(write_osv_zip(tmp_path / "second.zip", records)).generation
    newer = a.current()
    assert newer is not None
    assert newer.generation == second
    assert a.changed_packages(first, newer) == frozenset({("PyPI", "requests")})

    # Busy across nodes, whoever holds the lock.
    with b.store.locked(0), pytest.raises(DatabaseBusyError):
        a.rollback()
    assert b.rollback().id == first
    back = a.current()
    assert back is not None
    assert back.generation == first
    assert [info.id for info in a.status().history] == [first]
    with pytest.raises(NoPreviousGenerationError):
        a.rollback()


def test_an_import_whose_lease_was_taken_over_changes_nothing_and_leaves_only_garbage(
    engine: Engine, tmp_path: Path
) -> None:
    storage = FilesystemStorage(tmp_path / "storage")
    built = VulnerabilityDatabase(tmp_path / "local")  # a finished generation file to publish
    made = built.import_path(
        write_osv_zip(tmp_path / "one.zip", [osv_record("TEST-LOST", "PyPI", "six", fixed="9")])
    ).generation
    file = tmp_path / "built.sqlite"
    shutil.copyfile(built.store.file(made), file)

    # A lease that has run out at once: another node may take the lock over meanwhile.
    store = SharedGenerationStore(
        VulndbStore(engine), storage, tmp_path / "cache", lease_seconds=-1
    )
    with store.locked(0):
        assert VulndbStore(engine).claim_lock("another-node", 60)
        with pytest.raises(VulnerabilityDatabaseError, match="lock was lost"):
            store.publish(file, made, 4)
    assert VulndbStore(engine).pointer().current is None
    assert VulndbStore(engine).generation(made) is None
    # Its file stays in storage until garbage collection, which finds nothing referencing it.
    stored = [str(digest) for digest in storage.list_blobs()]
    assert len(stored) == 1
    later = datetime.now(UTC) + timedelta(hours=1)
    garbage, _ = GcStore(engine).garbage_blobs("", 10, later)
    assert [blob.digest for blob in garbage] == stored


def test_a_generation_missing_from_storage_means_no_database_on_a_node_without_a_copy(
    engine: Engine, tmp_path: Path
) -> None:
    storage = FilesystemStorage(tmp_path / "storage")

    def node(name: str) -> VulnerabilityDatabase:
        store = SharedGenerationStore(VulndbStore(engine), storage, tmp_path / name / "cache")
        return VulnerabilityDatabase(tmp_path / name, store=store)

    a = node("a")
    records = [osv_record("TEST-MISSING", "PyPI", "six", fixed="9")]
    made = a.import_path(write_osv_zip(tmp_path / "one.zip", records)).generation
    stored = VulndbStore(engine).generation(made)
    assert stored is not None
    storage.delete_blob(Digest.parse(stored.digest))
    assert node("b").current() is None  # fails closed: scans say there is no database
    kept = a.current()  # a node with a verified copy keeps using it
    assert kept is not None
    assert kept.generation == made
