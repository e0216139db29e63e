"""What SQLite's single writer made atomic stays atomic with many writers on many nodes.

Each test races real processes (each with its own engine and connection pool, as separate
nodes have) on one database, released together by a barrier, and runs on both backends: on
SQLite the write lock orders them; on PostgreSQL row locks, SKIP LOCKED and advisory locks do.
"""

from __future__ import annotations

import multiprocessing
import traceback
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

from sqlalchemy import text

from moorage.domain.digest import Digest
from moorage.domain.manifest import parse_manifest
from moorage.metadata.access.audit_store import NewAuditEntry
from moorage.metadata.access.iam_store import IamStore
from moorage.metadata.access.refresh_token_store import RefreshGrant, RefreshTokenStore
from moorage.metadata.database import make_engine, migrate, write_transaction
from moorage.metadata.registry.registry_records import PreconditionFailedError, TagPrecondition
from moorage.metadata.registry.store import MetadataStore
from moorage.metadata.supply_chain.scan_records import ScanRequest
from moorage.metadata.supply_chain.scan_store import ScanStore
from moorage.services.access.audit import verify_chain
from tests.support.backends import fresh_database_url

PROCESSES = 6
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
EMPTY = b"{}"


def _child(
    work: Callable[..., Any], barrier: Barrier, results: Any, number: int, args: tuple[Any, ...]
) -> None:
    try:
        barrier.wait(120)
        results.put((number, "ok", work(number, *args)))
    except BaseException:  # reported to the parent, which fails the test with it
        results.put((number, "error", traceback.format_exc()))


def race(work: Callable[..., Any], *args: Any, processes: int = PROCESSES) -> list[Any]:
    """Run `work(number, *args)` in `processes` forked processes started at the same moment;
    their results in process order (a failure in any fails the test with its traceback)."""
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(processes)
    results = context.Queue()
    children = [
        context.Process(target=_child, args=(work, barrier, results, number, args))
        for number in range(processes)
    ]
    for child in children:
        child.start()
    try:
        collected = sorted(results.get(timeout=300) for _ in children)
    finally:
        for child in children:
            child.join(60)
            if child.is_alive():
                child.kill()
    errors = [detail for _, status, detail in collected if status == "error"]
    assert not errors, "\n".join(errors)
    return [detail for _, _, detail in collected]


# -- the write transaction itself: read-modify-write stays atomic


def _increment(number: int, url: str, times: int) -> int:
    engine = make_engine(url, pool_size=2)
    # Half the writers are default writers, half name a key: a default writer must exclude
    # keyed ones, and writers of one key each other.
    keys = None if number % 2 else ["counter"]
    for _ in range(times):
        with write_transaction(engine, serialise_on=keys) as connection:
            value = connection.execute(text("SELECT n FROM race_counter")).scalar_one()
            connection.execute(text("UPDATE race_counter SET n = :n"), {"n": value + 1})
    engine.dispose()
    return times


def test_read_modify_write_in_write_transactions_loses_no_update(metadata_url: str) -> None:
    engine = make_engine(metadata_url, pool_size=1)
    with write_transaction(engine) as connection:
        connection.execute(text("CREATE TABLE race_counter (n INTEGER NOT NULL)"))
        connection.execute(text("INSERT INTO race_counter (n) VALUES (0)"))

    done = sum(race(_increment, metadata_url, 25))

    with engine.connect() as connection:
        assert connection.execute(text("SELECT n FROM race_counter")).scalar_one() == done
    engine.dispose()


# -- the audit chain: one chain, whoever appends


def _append_audit(number: int, url: str, batches: int) -> int:
    engine = make_engine(url, pool_size=2)
    store = IamStore(engine)
    for batch in range(batches):
        at = datetime.now(UTC)
        store.append_audit(
            [
                NewAuditEntry(
                    at,
                    "user",
                    f"actor{number}",
                    None,
                    None,
                    "test.append",
                    None,
                    f"{batch}.{index}",
                    "success",
                    {"process": number},
                )
                for index in range(2)
            ]
        )
    engine.dispose()
    return batches * 2


def test_concurrent_audit_appends_form_one_unbroken_chain(metadata_url: str) -> None:
    appended = race(_append_audit, metadata_url, 20)

    engine = make_engine(metadata_url, pool_size=1)
    result = verify_chain(IamStore(engine), lambda *_: True)
    engine.dispose()
    assert result.problems == []
    assert result.entries == sum(appended) == PROCESSES * 40


# -- the scan queue: every job claimed exactly once


def _claim_all(number: int, url: str) -> list[str]:
    engine = make_engine(url, pool_size=2)
    queue = ScanStore(engine)
    claimed = []
    while True:
        claim = queue.claim(f"node-{number}", lease_seconds=600, max_attempts=5)
        if claim.job is None:
            break
        claimed.append(claim.job.digest)
    engine.dispose()
    return claimed


def test_concurrent_scan_claims_take_each_job_exactly_once(metadata_url: str) -> None:
    engine = make_engine(metadata_url, pool_size=1)
    digests = [f"sha256:{number:064x}" for number in range(120)]
    queued = ScanStore(engine).request(
        [ScanRequest("team/app", digest, OCI_MANIFEST, "builtin", False) for digest in digests]
    )
    engine.dispose()
    assert queued == len(digests)

    claims = race(_claim_all, metadata_url, processes=8)

    counted = Counter(digest for claimed in claims for digest in claimed)
    assert sorted(counted) == sorted(digests)
    assert set(counted.values()) == {1}


def _request_same(number: int, url: str) -> int:
    engine = make_engine(url, pool_size=2)
    queued = ScanStore(engine).request(
        [
            ScanRequest("team/app", f"sha256:{n:064x}", OCI_MANIFEST, "builtin", False)
            for n in range(30)
        ]
    )
    engine.dispose()
    return queued


def test_concurrent_scan_requests_queue_each_digest_once(metadata_url: str) -> None:
    assert sum(race(_request_same, metadata_url)) == 30


# -- refresh tokens: a token is used once, however many redeem it at once


def _rotate(number: int, url: str, token: str) -> bool:
    engine = make_engine(url, pool_size=2)
    won = RefreshTokenStore(engine).rotate(token, f"successor-{number}")
    engine.dispose()
    return won


def test_concurrent_refresh_token_reuse_lets_exactly_one_win(metadata_url: str) -> None:
    engine = make_engine(metadata_url, pool_size=1)
    store = IamStore(engine)
    user = store.create_user("alice", None, "not-a-hash", False)
    grant = RefreshGrant(
        user.id,
        "family-1",
        None,
        "proof",
        "account-proof",
        None,
        datetime.now(UTC) + timedelta(hours=1),
    )
    store.refresh_tokens.add("first", grant)

    outcomes = race(_rotate, metadata_url, "first")

    assert outcomes.count(True) == 1
    # The reuse revoked the family, the winner's successor included.
    successor = f"successor-{outcomes.index(True)}"
    assert store.refresh_tokens.peek(successor).grant is None
    engine.dispose()


# -- tags: a guarded push moves a tag only from where it was checked


def _body(layer: bytes) -> bytes:
    return (
        b'{"schemaVersion":2,"mediaType":"%s","config":{"mediaType":'
        b'"application/vnd.oci.empty.v1+json","digest":"%s","size":2},"layers":[{"mediaType":'
        b'"application/vnd.oci.image.layer.v1.tar","digest":"%s","size":%d}]}'
        % (
            OCI_MANIFEST.encode(),
            str(Digest.of(EMPTY)).encode(),
            str(Digest.of(layer)).encode(),
            len(layer),
        )
    )


def _push_guarded(number: int, url: str) -> str | None:
    engine = make_engine(url, pool_size=2)
    body = _body(b"layer-%d" % number)
    digest = Digest.of(body)
    try:
        MetadataStore(engine).put_manifest(
            "team/app",
            parse_manifest(body, OCI_MANIFEST, digest),
            body,
            "latest",
            tag_precondition=TagPrecondition(None),
        )
    except PreconditionFailedError:
        return None
    finally:
        engine.dispose()
    return str(digest)


def test_concurrent_guarded_pushes_of_one_tag_let_exactly_one_win(metadata_url: str) -> None:
    engine = make_engine(metadata_url, pool_size=1)
    metadata = MetadataStore(engine)
    for blob in [EMPTY, *(b"layer-%d" % number for number in range(PROCESSES))]:
        metadata.link_blob("team/app", str(Digest.of(blob)), len(blob))

    outcomes = race(_push_guarded, metadata_url)

    winners = [digest for digest in outcomes if digest is not None]
    assert len(winners) == 1
    assert metadata.resolve_tag("team/app", "latest") is not None
    assert str(metadata.resolve_tag("team/app", "latest").digest) == winners[0]  # type: ignore[union-attr]
    engine.dispose()


# -- sign-in throttling: every failure counts


def _fail_sign_ins(number: int, url: str, times: int) -> int:
    engine = make_engine(url, pool_size=2)
    store = IamStore(engine)
    for _ in range(times):
        store.record_failure("user:alice", datetime.now(UTC), 3600, 10_000, 1, 10)
    engine.dispose()
    return times


def test_concurrent_sign_in_failures_all_count(metadata_url: str) -> None:
    failed = sum(race(_fail_sign_ins, metadata_url, 15))
    engine = make_engine(metadata_url, pool_size=1)
    throttle = IamStore(engine).throttle("user:alice")
    engine.dispose()
    assert throttle is not None
    assert throttle.failures == failed


# -- migrations: nodes starting together


def _prepare(number: int, url: str, directory: Path) -> None:
    from pydantic import SecretStr

    from moorage.bootstrap import prepare_data
    from moorage.config import Settings

    prepare_data(
        Settings(
            database_url=url,
            data_dir=directory / f"node{number}",
            admin_password=SecretStr("first-admin-password"),
        )
    )


def test_nodes_starting_together_prepare_one_signing_key_and_one_admin(tmp_path: Path) -> None:
    url = fresh_database_url("postgresql", tmp_path)
    race(_prepare, url, tmp_path, processes=4)
    engine = make_engine(url, pool_size=1)
    store = IamStore(engine)
    assert len([key for key in store.signing_keys() if key.retired_at is None]) == 1
    assert store.user_by_name("admin") is not None
    engine.dispose()


def _migrate(number: int, url: str) -> str:
    engine = make_engine(url, pool_size=1)
    migrate(engine)
    with engine.connect() as connection:
        version = connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    engine.dispose()
    return str(version)


def test_nodes_starting_together_migrate_once(tmp_path: Path) -> None:
    url = fresh_database_url("postgresql", tmp_path)
    versions = race(_migrate, url, processes=4)
    assert len(set(versions)) == 1
