"""The management commands of the `moorage` CLI: they work on the data directory through the
services (no HTTP), a running server sees their changes, and they leave audit entries."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from moorage.cli import main
from tests.support.api import PASSWORD, api_client, eventually
from tests.support.server import RegistryProcess


@pytest.fixture(autouse=True)
def _no_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [key for key in os.environ if key.startswith("MOORAGE_")]:
        monkeypatch.delenv(name)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


Moorage = Callable[..., Result]


@pytest.fixture
def moorage(data_dir: Path) -> Moorage:
    """Run `moorage <args> --data-dir <data_dir>`; exit status 0 unless `code` says otherwise."""
    runner = CliRunner()

    def run(*args: str, stdin: str | None = None, code: int = 0) -> Result:
        result = runner.invoke(main, [*args, "--data-dir", str(data_dir)], input=stdin)
        assert result.exit_code == code, (result.output, result.exception)
        return result

    return run


def _audit(moorage: Moorage) -> list[dict[str, Any]]:
    lines = moorage("audit", "export", "--format", "jsonl").stdout.splitlines()
    return [json.loads(line) for line in lines]


def test_user_commands(moorage: Moorage) -> None:
    assert (
        "created user alice"
        in moorage(
            "user",
            "create",
            "alice",
            "--email",
            "a@example.com",
            "--password-stdin",
            stdin=PASSWORD,
        ).stdout
    )
    moorage("user", "create", "bob", "--admin", "--password-stdin", stdin=PASSWORD)
    assert moorage("user", "list").stdout.splitlines() == [
        "alice\t-\t-\ta@example.com",
        "bob\tadmin\t-\t",
    ]
    duplicate = moorage("user", "create", "alice", "--password-stdin", stdin=PASSWORD, code=1)
    assert "already exists" in duplicate.output
    short = moorage("user", "create", "carol", "--password-stdin", stdin="short", code=1)
    assert "at least 12" in short.output

    moorage("user", "set-admin", "alice")
    moorage("user", "set-admin", "bob", "--revoke")
    assert moorage("user", "list").stdout.splitlines()[:2] == [
        "alice\tadmin\t-\ta@example.com",
        "bob\t-\t-\t",
    ]
    moorage("user", "passwd", "alice", "--password-stdin", stdin="a-new-long-password")
    moorage("user", "delete", "bob", "--yes")
    assert [line.split("\t")[0] for line in moorage("user", "list").stdout.splitlines()] == [
        "alice"
    ]
    assert "not found" in moorage("user", "delete", "bob", "--yes", code=1).output

    actions = [
        (entry["action"], entry["resource"], entry["actorKind"]) for entry in _audit(moorage)
    ]
    assert ("user:create", "user:alice", "system") in actions
    assert ("user:password", "user:alice", "system") in actions
    assert ("user:delete", "user:bob", "system") in actions


def test_a_password_can_be_typed_at_the_prompt(moorage: Moorage) -> None:
    moorage("user", "create", "dave", stdin=f"{PASSWORD}\n{PASSWORD}\n")
    mismatch = moorage("user", "create", "erin", stdin=f"{PASSWORD}\nother\n", code=1)
    assert "do not match" in mismatch.output.lower()


def test_group_commands(moorage: Moorage) -> None:
    moorage("user", "create", "alice", "--password-stdin", stdin=PASSWORD)
    moorage("group", "create", "builders")
    moorage("group", "add-member", "builders", "alice")
    assert moorage("group", "list").stdout == "builders\talice\n"
    moorage("group", "remove-member", "builders", "alice")
    assert moorage("group", "list").stdout == "builders\t\n"
    assert "not found" in moorage("group", "add-member", "nobody", "alice", code=1).output
    moorage("group", "delete", "builders")
    assert moorage("group", "list").stdout == ""


def test_project_and_member_commands(moorage: Moorage) -> None:
    moorage("user", "create", "alice", "--password-stdin", stdin=PASSWORD)
    moorage("group", "create", "builders")
    moorage("project", "create", "team", "--owner", "alice")
    moorage("project", "create", "open", "--public")
    listed = [line.split("\t")[:2] for line in moorage("project", "list").stdout.splitlines()]
    assert listed == [["open", "public"], ["team", "private"]]
    moorage("project", "set-public", "team", "true")
    assert "team\tpublic" in moorage("project", "list").stdout

    assert moorage("member", "list", "team").stdout == "user\talice\tproject-admin\n"
    moorage("member", "set", "team", "builders", "developer", "--group")
    # A project keeps its last project admin, also against the command line.
    demoted = moorage("member", "set", "team", "alice", "maintainer", code=1)
    assert "last project admin" in demoted.output
    moorage("member", "set", "team", "builders", "project-admin", "--group")
    moorage("member", "set", "team", "alice", "maintainer")
    assert moorage("member", "list", "team").stdout.splitlines() == [
        "group\tbuilders\tproject-admin",
        "user\talice\tmaintainer",
    ]
    assert "unknown role" in moorage("member", "set", "team", "alice", "emperor", code=1).output
    removed = moorage("member", "remove", "team", "builders", "--group", code=1)
    assert "last project admin" in removed.output
    moorage("member", "set", "team", "alice", "project-admin")
    moorage("member", "remove", "team", "builders", "--group")
    assert moorage("member", "list", "team").stdout == "user\talice\tproject-admin\n"

    assert "project names" in moorage("project", "create", "Bad/Name", code=1).output
    moorage("project", "delete", "open", "--yes")
    assert "not found" in moorage("project", "delete", "open", "--yes", code=1).output


def test_robot_commands_print_the_secret_once(moorage: Moorage) -> None:
    moorage("project", "create", "team")
    created = moorage(
        "robot",
        "create",
        "ci",
        "--project",
        "team",
        "--allow",
        "app/**:pull,push",
        "--expires-days",
        "30",
        "--description",
        "builds",
    )
    secret = created.stdout.strip()
    assert len(secret) >= 40
    assert "robot$team+ci" in created.stderr
    listed = moorage("robot", "list", "--project", "team").stdout
    assert listed.startswith("robot$team+ci\tenabled\t")
    assert listed.rstrip().endswith("team:app/**:pull,push")
    assert secret not in listed

    rotated = moorage("robot", "rotate", "ci", "--project", "team").stdout.strip()
    assert rotated != secret
    moorage("robot", "disable", "ci", "--project", "team")
    assert "\tdisabled\t" in moorage("robot", "list", "--project", "team").stdout
    moorage("robot", "disable", "ci", "--project", "team", "--enable")

    elsewhere = moorage(
        "robot", "create", "x", "--project", "team", "--allow", "other:**:pull", code=1
    )
    assert "cannot be granted" in elsewhere.output
    assert (
        "PROJECT:PATTERN:ACTIONS"
        in moorage("robot", "create", "y", "--allow", "pull", code=2).output
    )
    assert "unknown action" in moorage("robot", "create", "y", "--allow", "*:**:fly", code=2).output

    moorage("robot", "create", "sync", "--allow", "*:**:pull")
    assert moorage("robot", "list").stdout.startswith("robot$sync\tenabled")
    moorage("robot", "delete", "sync")
    moorage("robot", "delete", "ci", "--project", "team")
    assert moorage("robot", "list", "--project", "team").stdout == ""
    audit_text = json.dumps(_audit(moorage))
    assert secret not in audit_text
    assert rotated not in audit_text


def test_token_commands(moorage: Moorage) -> None:
    moorage("user", "create", "alice", "--password-stdin", stdin=PASSWORD)
    token = moorage("token", "create", "alice", "ci", "--scope", "team:app/*:pull").stdout.strip()
    assert token.startswith("mpat_")
    assert moorage("token", "list", "alice").stdout.startswith("ci\tactive\t")
    assert token not in moorage("token", "list", "alice").stdout
    moorage("token", "revoke", "alice", "ci")
    assert moorage("token", "list", "alice").stdout.startswith("ci\trevoked\t")
    assert "not found" in moorage("token", "revoke", "alice", "nope", code=1).output


def test_audit_verify_export_and_prune(moorage: Moorage, data_dir: Path, tmp_path: Path) -> None:
    moorage("user", "create", "alice", "--password-stdin", stdin=PASSWORD)
    moorage("project", "create", "team")
    moorage("member", "set", "team", "alice", "developer")
    kid = moorage("keys", "rotate").stdout.split()[-1]
    assert "0 problem(s)" in moorage("audit", "verify").stdout

    output = tmp_path / "audit.jsonl"
    moorage("audit", "export", "--format", "jsonl", "--output", str(output))
    entries = [json.loads(line) for line in output.read_text().splitlines()]
    assert [entry["action"] for entry in entries] == [
        "user:create",
        "project:create",
        "member:set",
        "signing-key:rotate",
    ]
    assert entries[-1]["details"] == {"kid": kid}
    assert stat.S_IMODE(output.stat().st_mode) == 0o600

    pruned = moorage("audit", "prune", "--before", "2999-01-01")
    assert "removed 4 entries" in pruned.stdout
    assert "0 problem(s)" in moorage("audit", "verify").stdout
    assert [entry["action"] for entry in _audit(moorage)] == ["audit:prune"]
    assert "not an ISO 8601" in moorage("audit", "prune", "--before", "soon", code=2).output

    moorage("user", "create", "bob", "--password-stdin", stdin=PASSWORD)
    moorage("user", "create", "carol", "--password-stdin", stdin=PASSWORD)
    with sqlite3.connect(data_dir / "moorage.db") as db:
        db.execute("UPDATE audit_log SET actor = 'mallory' WHERE action = 'user:create'")
    broken = moorage("audit", "verify", code=1)
    assert "modified" in broken.stdout
    assert "2 problem(s)" in broken.stdout


def test_the_running_server_sees_changes_made_with_the_cli(
    moorage: Moorage, data_dir: Path
) -> None:
    server = RegistryProcess(data_dir).start()
    try:
        moorage("user", "create", "alice", "--password-stdin", stdin=PASSWORD)
        moorage("project", "create", "team", "--owner", "alice")
        secret = moorage("robot", "create", "ci", "--project", "team", "--allow", "**:pull").stdout
        token = moorage("token", "create", "alice", "laptop").stdout.strip()
        with api_client(server, "alice", PASSWORD) as alice:
            assert [p["name"] for p in alice.get("/projects").json()] == ["team"]
        with api_client(server, "robot$team+ci", secret.strip()) as robot:
            assert robot.get("/roles").status_code == 200
        with api_client(server, "alice", token) as by_token:
            assert by_token.get("/users/me").json()["username"] == "alice"

        moorage("token", "revoke", "alice", "laptop")
        moorage("robot", "disable", "ci", "--project", "team")

        def refused(username: str, secret: str) -> Callable[[], bool]:
            def check() -> bool:
                with api_client(server, username, secret) as client:
                    return client.get("/roles").status_code == 401

            return check

        eventually(refused("alice", token), what="revoked token refused")
        eventually(refused("robot$team+ci", secret.strip()), what="disabled robot refused")
    finally:
        server.stop()


def test_the_installed_entry_point_runs_the_commands(data_dir: Path) -> None:
    create = subprocess.run(
        [
            sys.executable,
            "-m",
            "moorage",
            "user",
            "create",
            "alice",
            "--password-stdin",
            "--data-dir",
            str(data_dir),
        ],
        input=PASSWORD,
        capture_output=True,
        text=True,
        check=False,
    )
    assert create.returncode == 0, create.stderr
    listed = subprocess.run(
        [sys.executable, "-m", "moorage", "user", "list", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert listed.stdout == "alice\t-\t-\t\n"
