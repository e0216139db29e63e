"""A database written before replication carried referrers (revision 0014) opens and serves as
before: its rules do not mirror deletions, its tasks show no referrers copied, and the real
server migrates it and answers through the API."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from moorage.metadata.database import make_engine, migrate, sqlite_url
from moorage.metadata.distribution.replication_store import ReplicationStore, TaskSpec
from tests.support.api import api_client
from tests.support.server import RegistryProcess

WHEN = "2026-12-01 10:00:00.000000"


@pytest.fixture(autouse=True)
def _no_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [key for key in os.environ if key.startswith("MOORAGE_")]:
        monkeypatch.delenv(name)


def written_at_0014(data_dir: Path) -> None:
    """An endpoint, a push rule with one finished run, as that release stored them."""
    data_dir.mkdir(parents=True)
    engine = make_engine(sqlite_url(data_dir / "moorage.db"), pool_size=1)
    try:
        migrate(engine, "0014")
    finally:
        engine.dispose()
    with sqlite3.connect(data_dir / "moorage.db") as db:
        db.execute(
            "INSERT INTO replication_endpoints (id, name, url, kind, username, credential_kind,"
            " credential, ca_bundle, verify_tls, allow_private_network, timeout_seconds,"
            " updated_by, updated_at) VALUES (1, 'dr', 'https://dr.example', 'distribution',"
            " NULL, 'none', NULL, NULL, 1, 0, 60, 'admin', ?)",
            (WHEN,),
        )
        db.execute(
            "INSERT INTO replication_rules (id, name, endpoint_id, direction, filters,"
            " destination_prefix, strip_segments, trigger, interval_seconds, cron,"
            " replicate_deletions, enabled, next_run_at, updated_by, updated_at) VALUES"
            " (1, 'prod-to-dr', 1, 'push', '{\"repositories\": [\"prod/**\"]}', NULL, 0,"
            " 'manual', NULL, NULL, 1, 1, NULL, 'admin', ?)",
            (WHEN,),
        )
        db.execute(
            "INSERT INTO replication_executions (id, rule_id, trigger, triggered_by, status,"
            " planned, lease_owner, lease_expires_at, message, created_at, finished_at) VALUES"
            " (1, 1, 'manual', 'admin', 'succeeded', 1, NULL, NULL, NULL, ?, ?)",
            (WHEN, WHEN),
        )
        db.execute(
            "INSERT INTO replication_tasks (id, execution_id, operation, source, destination,"
            " tag, digest, status, attempts, next_attempt_at, lease_owner, lease_expires_at,"
            " error, bytes_copied, blobs_copied, blobs_skipped, updated_at, finished_at) VALUES"
            " (1, 1, 'copy', 'prod/app', 'prod/app', 'v1', ?, 'succeeded', 1, ?, NULL, NULL,"
            " NULL, 1234, 2, 1, ?, ?)",
            ("sha256:" + "a" * 64, WHEN, WHEN, WHEN),
        )


@pytest.fixture
def upgraded(tmp_path: Path) -> Path:
    data_dir = tmp_path / "data"
    written_at_0014(data_dir)
    return data_dir


def test_the_store_reads_old_rules_and_tasks_after_the_upgrade(upgraded: Path) -> None:
    engine = make_engine(sqlite_url(upgraded / "moorage.db"), pool_size=1)
    try:
        migrate(engine)
        store = ReplicationStore(engine)
        (rule,) = store.rules()
        assert (rule.name, rule.replicate_deletions, rule.mirror_deletions) == (
            "prod-to-dr",
            True,
            False,
        )
        (task,) = store.tasks(1, None, 10)
        assert (task.bytes_copied, task.blobs_copied, task.referrers_copied) == (1234, 2, 0)
        assert store.copies(rule.id, 10) == []
        # New work lands beside the old.
        store.record_copies(rule.id, "prod/app", "prod/app", [("v1", "sha256:" + "b" * 64)])
        assert [copy.tag for copy in store.copies(rule.id, 10)] == ["v1"]
        execution = store.create_execution(
            rule.id, "manual", "admin", [TaskSpec("copy", "prod/app", "prod/app", "v2", None)]
        )
        assert store.tasks(execution, None, 10)[0].referrers_copied == 0
        # Removing the rule removes what it remembers.
        store.delete_rule(rule.id)
        assert store.copies(rule.id, 10) == []
    finally:
        engine.dispose()


def test_the_server_migrates_and_serves_the_old_rule_and_its_history(upgraded: Path) -> None:
    server = RegistryProcess(upgraded).start()
    try:
        with api_client(server) as admin:
            response = admin.get("/replication/rules/1")
            assert response.status_code == 200, response.text
            rule = response.json()
            assert rule["name"] == "prod-to-dr"
            assert rule["replicateDeletions"] is True
            assert rule["mirrorDeletions"] is False
            (task,) = admin.get("/replication/executions/1/tasks").json()
            assert task["referrersCopied"] == 0
            assert task["bytesCopied"] == 1234
            # The old rule can be saved again, now mirroring deletions.
            response = admin.put(
                "/replication/rules/1",
                json={
                    "name": "prod-to-dr",
                    "endpointId": 1,
                    "direction": "push",
                    "repositories": ["prod/**"],
                    "mirrorDeletions": True,
                },
            )
            assert response.status_code == 200, response.text
            assert response.json()["mirrorDeletions"] is True
    finally:
        server.stop()
