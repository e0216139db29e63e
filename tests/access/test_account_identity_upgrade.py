"""Upgrading to ids that are never reused keeps every account, credential, membership, grant,
robot, approval and the audit chain; only approvals of accounts deleted before are removed.

The data directory is written at revision 0013 (the schema before) by the services, started
with the real server (which migrates it) and then checked through the API and the database."""

from __future__ import annotations

import base64
import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from moorage.cli import main
from moorage.config import Settings
from moorage.domain.events import Actor
from moorage.metadata.access.iam_store import IamStore
from moorage.metadata.database import make_engine, migrate, sqlite_url
from moorage.metadata.registry.store import MetadataStore
from moorage.metadata.staging.promotion_store import PromotionStore
from moorage.services.access.audit import AuditLog
from moorage.services.access.identity import IdentityService, policy_from
from moorage.services.access.projects import ProjectService
from moorage.services.access.tokens import ensure_signing_key
from moorage.services.events import EventBus
from tests.support.api import PASSWORD, api_client, bearer_client
from tests.support.auth import ADMIN_PASSWORD
from tests.support.server import RegistryProcess

ADMIN = Actor("admin", "user")
DIGEST = "sha256:" + "c" * 64
KEPT = (
    "users",
    "groups",
    "group_members",
    "projects",
    "project_members",
    "repository_grants",
    "robots",
    "personal_access_tokens",
    "signing_keys",
    "audit_log",
)


@pytest.fixture(autouse=True)
def _no_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [key for key in os.environ if key.startswith("MOORAGE_")]:
        monkeypatch.delenv(name)


def dump(database: Path) -> dict[str, list[tuple[Any, ...]]]:
    with sqlite3.connect(database) as db:
        return {
            table: sorted(db.execute(f"SELECT * FROM {table}"))  # noqa: S608 - fixed names
            for table in (*KEPT, "promotion_approvals")
        }


def written_at_0013(data_dir: Path) -> dict[str, Any]:
    """Fill a data directory at revision 0013 the way that release's services did."""
    data_dir.mkdir(parents=True)
    engine = make_engine(sqlite_url(data_dir / "moorage.db"), pool_size=1)
    try:
        migrate(engine, "0013")
        store = IamStore(engine)
        ensure_signing_key(store)
        events = EventBus()
        events.subscribe(AuditLog(store, immediate=True))
        identity = IdentityService(store, events, policy_from(Settings(data_dir=data_dir)))
        projects = ProjectService(store, identity, events)
        identity.bootstrap_admin(ADMIN_PASSWORD)
        projects.create(ADMIN, "prod", False, None)
        for username in ("alice", "bob", "carol"):
            identity.create_user(ADMIN, username, PASSWORD)
        carol = store.user_by_name("carol")
        assert carol is not None
        PromotionStore(engine, MetadataStore(engine)).add_approval(
            "prod", DIGEST, carol.id, "carol", None
        )
        # 0013 handed the newest deleted id out again: the new carol holds the old one's id.
        with sqlite3.connect(data_dir / "moorage.db") as db:
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("DELETE FROM users WHERE id = ?", (carol.id,))
        identity.create_user(ADMIN, "carol", PASSWORD)
        reused = store.user_by_name("carol")
        assert reused is not None
        assert reused.id == carol.id
        identity.create_user(ADMIN, "gone", PASSWORD)
        identity.create_group(ADMIN, "team")
        identity.set_group_member(ADMIN, "team", "alice", True)
        projects.set_member(ADMIN, "prod", "user", "alice", "maintainer")
        projects.set_member(ADMIN, "prod", "group", "team", "developer")
        projects.add_grant(ADMIN, "prod", "user", "bob", "app/*", ["pull"])
        robot = identity.create_robot(
            ADMIN, "ci", [{"project": "prod", "actions": ["pull"]}], "prod", None
        )
        projects.add_grant(ADMIN, "prod", "robot", robot.name, "app/**", ["push"])
        token = identity.create_token(ADMIN, "alice", "cli", None, None)
        approvals = PromotionStore(engine, MetadataStore(engine))
        for username in ("alice", "gone"):
            user = store.user_by_name(username)
            assert user is not None
            approvals.add_approval("prod", DIGEST, user.id, username, None)
        gone = store.user_by_name("gone")
        assert gone is not None
        # How 0013 deleted a user: memberships, grants and the row; its approval stayed.
        with sqlite3.connect(data_dir / "moorage.db") as db:
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("DELETE FROM users WHERE id = ?", (gone.id,))
    finally:
        engine.dispose()
    return {"robot": robot, "token": token, "gone_id": gone.id}


@pytest.fixture
def upgraded(tmp_path: Path) -> Iterator[tuple[RegistryProcess, dict[str, Any], dict[str, Any]]]:
    data_dir = tmp_path / "data"
    written = written_at_0013(data_dir)
    before = dump(data_dir / "moorage.db")
    server = RegistryProcess(data_dir).start()
    try:
        yield server, written, before
    finally:
        server.kill()


def test_the_upgrade_keeps_every_account_and_drops_only_the_dangling_approval(
    upgraded: tuple[RegistryProcess, dict[str, Any], dict[str, Any]],
) -> None:
    server, written, before = upgraded
    database = server.data_dir / "moorage.db"
    after = dump(database)
    for table in KEPT:
        if table == "audit_log":  # the server may have appended since; the old chain is kept
            assert after[table][: len(before[table])] == before[table]
        else:
            assert after[table] == before[table], table
    gone_id = written["gone_id"]
    # Only alice's approval is left: the deleted account's, and the first carol's (whose id the
    # second carol holds), are gone.
    assert [row[4] for row in before["promotion_approvals"]] == ["carol", "alice", "gone"]
    assert after["promotion_approvals"] == [
        row for row in before["promotion_approvals"] if row[4] == "alice"
    ]
    with sqlite3.connect(database) as db:
        sequence = dict(db.execute("SELECT name, seq FROM sqlite_sequence"))
    # The deleted account's id is still known from its approval: it is not handed out again.
    assert sequence["users"] >= gone_id

    with api_client(server, "alice", PASSWORD) as alice:
        assert alice.get("/users/me").json()["username"] == "alice"
        approvals = alice.get("/projects/prod/promotion-approvals", params={"digest": DIGEST})
        assert [entry["approver"] for entry in approvals.json()] == ["alice"]
        members = {
            (m["kind"], m["name"], m["role"]) for m in alice.get("/projects/prod/members").json()
        }
    assert members == {("user", "alice", "maintainer"), ("group", "team", "developer")}
    with bearer_client(server, written["token"].secret) as by_token:
        assert by_token.get("/users/me").json()["username"] == "alice"
    robot = written["robot"]
    # The robot signs in with its secret and holds its allow-list plus the grant made to it.
    response = httpx.get(
        f"{server.url}/service/token",
        params={"service": "moorage", "scope": "repository:prod/app/api:pull,push"},
        auth=(robot.name, robot.secret),
    )
    assert response.status_code == 200, response.text
    payload = response.json()["token"].split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert sorted(claims["access"][0]["actions"]) == ["pull", "push"]
    with api_client(server) as admin:
        grants = {
            (g["kind"], g["name"], g["pattern"]) for g in admin.get("/projects/prod/grants").json()
        }
        assert grants == {("user", "bob", "app/*"), ("robot", robot.name, "app/**")}
        assert admin.get("/groups/team").json()["members"] == ["alice"]
        # New accounts get ids above every id used so far, also after deleting the newest.
        assert (
            admin.post("/users", json={"username": "erin", "password": PASSWORD}).status_code == 201
        )
        erin = _id(database, "erin")
        assert erin > gone_id
        assert admin.delete("/users/erin").status_code == 204
        assert (
            admin.post("/users", json={"username": "frank", "password": PASSWORD}).status_code
            == 201
        )
        assert _id(database, "frank") > erin

    assert server.stop() == 0
    verified = CliRunner().invoke(main, ["audit", "verify", "--data-dir", str(server.data_dir)])
    assert verified.exit_code == 0, verified.output
    assert "0 problem(s)" in verified.output


def _id(database: Path, username: str) -> int:
    with sqlite3.connect(database) as db:
        ((found,),) = db.execute("SELECT id FROM users WHERE username = ?", (username,))
    return int(found)


def test_the_rebuild_refuses_to_run_with_foreign_keys_on(tmp_path: Path) -> None:
    """Dropping a referenced table with foreign keys on would cascade into its references."""
    from alembic import command
    from alembic.config import Config

    engine = make_engine(sqlite_url(tmp_path / "moorage.db"), pool_size=1)
    migrate(engine, "0013")
    config = Config()
    config.set_main_option(
        "script_location", str(Path(migrate.__code__.co_filename).parent / "migrations")
    )
    with engine.connect() as connection:
        config.attributes["connection"] = connection
        with pytest.raises(RuntimeError, match="foreign keys off"):
            command.upgrade(config, "0014")
    engine.dispose()
