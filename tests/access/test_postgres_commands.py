"""`moorage` commands that open the database work on PostgreSQL, and the database URL's
password is never printed: not on success, not when the database refuses the connection."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from moorage.config import load_settings
from moorage.metadata.database import masked_url
from tests.support.server import session_postgres


def moorage(data_dir: Path, database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MOORAGE_")}
    environment["MOORAGE_DATABASE_URL"] = database_url
    environment["MOORAGE_ADMIN_PASSWORD"] = "first-admin-password"
    return subprocess.run(
        [sys.executable, "-m", "moorage", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=180,
        check=False,
    )


def test_migrate_fsck_and_management_commands_run_on_postgresql(tmp_path: Path) -> None:
    postgres = session_postgres()
    url = postgres.create_database("commands")
    data_dir = tmp_path / "data"

    migrated = moorage(data_dir, url, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    created = moorage(data_dir, url, "project", "create", "team")
    assert created.returncode == 0, created.stderr
    listed = moorage(data_dir, url, "project", "list", "--output", "json")
    assert listed.returncode == 0, listed.stderr
    assert "team" in listed.stdout
    checked = moorage(data_dir, url, "fsck")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "0 problem(s) found" in checked.stdout
    for done in (migrated, created, listed, checked):
        assert postgres.password not in done.stdout + done.stderr
    # Nothing of the metadata went to the data directory.
    assert not (data_dir / "moorage.db").exists()


def test_fsck_of_an_empty_postgresql_database_creates_no_registry(tmp_path: Path) -> None:
    url = session_postgres().create_database("empty_for_fsck")

    checked = moorage(tmp_path / "data", url, "fsck")

    assert checked.returncode == 1
    assert "holds no registry database" in checked.stdout
    assert session_postgres().password not in checked.stdout + checked.stderr
    migrated = moorage(tmp_path / "data", url, "fsck")
    assert "holds no registry database" in migrated.stdout  # still empty: fsck migrated nothing


def test_a_refused_connection_is_one_line_with_the_password_masked(tmp_path: Path) -> None:
    postgres = session_postgres()
    url = postgres.create_database("refusing")
    wrong = url.replace(f":{postgres.password}@", ":Wrong-Secret-42@")

    for command in (["migrate"], ["fsck"], ["project", "list"]):
        done = moorage(tmp_path / "data", wrong, *command)
        assert done.returncode == 1, command
        output = done.stdout + done.stderr
        assert "Wrong-Secret-42" not in output
        assert "Traceback" not in output
        assert "cannot use the database postgresql+psycopg://moorage:***@" in done.stderr


def test_settings_and_masked_urls_hide_the_password() -> None:
    url = "postgresql+psycopg://moorage:hunter2@db.internal:5432/moorage"
    settings = load_settings(environ={"MOORAGE_DATABASE_URL": url})
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in str(settings)
    assert masked_url(url) == "postgresql+psycopg://moorage:***@db.internal:5432/moorage"
    assert "hunter2" not in masked_url("postgresql://moorage:hunter2@[broken")
