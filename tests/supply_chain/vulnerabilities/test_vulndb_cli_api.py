"""`moorage vulndb` while the server runs, and the administrators' API: import, status,
rollback, signatures, limits, permissions and the audit trail, on real server processes."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from tests.support.api import PASSWORD, api_client, assert_problem, create_user, eventually
from tests.support.osv import (
    held_vulndb_lock,
    log4shell,
    osv_record,
    write_bundle,
    write_osv_zip,
)
from tests.support.server import RegistryProcess

RECORDS = {
    "Debian": [
        osv_record("TEST-DEB-OPENSSL", "Debian:12", "openssl", fixed="3.0.11-1~deb12u2"),
        osv_record("TEST-DEB-ZLIB", "Debian:12", "zlib", fixed="1:1.2.13.dfsg-1"),
    ],
    "PyPI": [osv_record("GHSA-j8r2-6x86-q33q", "PyPI", "requests", fixed="2.31.0")],
    "Maven": [log4shell()],
}
BINARY = {"Content-Type": "application/octet-stream"}


def vulndb(
    data_dir: Path, *args: str, config: Path | None = None
) -> subprocess.CompletedProcess[str]:
    options = ["--data-dir", str(data_dir)] + (["--config", str(config)] if config else [])
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MOORAGE_")}
    return subprocess.run(
        [sys.executable, "-m", "moorage", "vulndb", *args, *options],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
        check=False,
    )


def status_json(data_dir: Path) -> dict[str, Any]:
    result = vulndb(data_dir, "status", "--json")
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def audit_entries(admin: httpx.Client, action: str) -> list[dict[str, Any]]:
    response = admin.get("/audit-logs", params={"action": action})
    assert response.status_code == 200, response.text
    entries: list[dict[str, Any]] = response.json()
    return entries


def test_import_status_and_rollback_through_the_cli_and_the_api(
    start_registry: Callable[..., RegistryProcess], tmp_path: Path
) -> None:
    server = start_registry()
    first_bundle = write_bundle(tmp_path / "first.tar.gz", RECORDS)

    # The CLI imports into the running server's data directory.
    imported = vulndb(server.data_dir, "import", str(first_bundle))
    assert imported.returncode == 0, imported.stderr
    assert "is current: 4 records" in imported.stdout
    first = status_json(server.data_dir)["current"]
    assert first["records"] == 4
    assert first["source_kind"] == "bundle"

    with api_client(server) as admin:
        status = admin.get("/vulnerability-database")
        assert status.status_code == 200, status.text
        body = status.json()
        assert body["current"]["id"] == first["id"]
        assert body["current"]["records"] == 4
        assert body["current"]["ecosystems"] == {"Debian": 2, "Maven": 1, "PyPI": 1}
        assert body["current"]["sourceChecksum"] == first["source_checksum"]
        assert [item["id"] for item in body["history"]] == [first["id"]]

        # An upload through the API becomes the next generation.
        second_zip = write_osv_zip(tmp_path / "all.zip", RECORDS["Debian"])
        uploaded = admin.post(
            "/vulnerability-database", content=second_zip.read_bytes(), headers=BINARY
        )
        assert uploaded.status_code == 201, uploaded.text
        report = uploaded.json()
        assert report["records"] == 2
        assert report["skipped"] == 0
        assert report["ecosystems"] == {"Debian": 2}
        assert report["signed"] is False
        current = admin.get("/vulnerability-database").json()
        assert current["current"]["id"] == report["generation"]
        assert [item["id"] for item in current["history"]] == [report["generation"], first["id"]]
        assert [item["current"] for item in current["history"]] == [True, False]
        assert list((server.data_dir / "vulndb" / "tmp" / "uploads").iterdir()) == []

        # Bodies far beyond the JSON API's 1 MiB are streamed, not refused.
        noisy = [
            osv_record(f"TEST-NOISE-{n}", "npm", "left-pad", summary=secrets.token_hex(1000))
            for n in range(1500)
        ]
        large = write_osv_zip(tmp_path / "large.zip", noisy)
        assert large.stat().st_size > 2 << 20
        big = admin.post("/vulnerability-database", content=large.read_bytes(), headers=BINARY)
        assert big.status_code == 201, big.text
        assert big.json()["records"] == 1500
        rolled_back = admin.post("/vulnerability-database/rollback")
        assert rolled_back.json()["id"] == report["generation"]

        # The CLI sees it, and rolls back to the first generation.
        lines = vulndb(server.data_dir, "status").stdout.splitlines()
        assert lines[0].startswith(f"* {report['generation']}")
        assert lines[1].startswith(f"  {first['id']}")
        rolled = vulndb(server.data_dir, "rollback")
        assert rolled.returncode == 0, rolled.stderr
        assert f"generation {first['id']} is current again" in rolled.stdout
        assert admin.get("/vulnerability-database").json()["current"]["id"] == first["id"]

        # Nothing before the first: the API says so, and so does the CLI.
        assert_problem(admin.post("/vulnerability-database/rollback"), 409)
        refused = vulndb(server.data_dir, "rollback")
        assert refused.returncode == 1
        assert "no earlier generation" in refused.stderr

        # Bad uploads are refused with a reason and change nothing.
        junk = admin.post("/vulnerability-database", content=b"\x01junk" * 200, headers=BINARY)
        assert assert_problem(junk, 422)["detail"].startswith("upload: not a zip, tar or tar.gz")
        assert_problem(admin.post("/vulnerability-database", content=b"", headers=BINARY), 400)
        assert admin.get("/vulnerability-database").json()["current"]["id"] == first["id"]

        # While another import holds the lock (as a CLI import or another node would), the
        # API says 409.
        with held_vulndb_lock(server.data_dir):
            busy = admin.post(
                "/vulnerability-database", content=second_zip.read_bytes(), headers=BINARY
            )
            assert "another vulnerability database import" in assert_problem(busy, 409)["detail"]
            assert_problem(admin.post("/vulnerability-database/rollback"), 409)

        # Import and rollback through the API as well, then the audit trail of all of it.
        again = admin.post(
            "/vulnerability-database", content=second_zip.read_bytes(), headers=BINARY
        )
        assert again.status_code == 201, again.text
        back = admin.post("/vulnerability-database/rollback")
        assert back.status_code == 200, back.text
        assert back.json()["id"] == first["id"]
        assert back.json()["current"] is True

        def audited() -> bool:
            return len(audit_entries(admin, "vulndb:import")) >= 6

        eventually(audited, what="the imports are audited")
        imports = audit_entries(admin, "vulndb:import")
        by_result = {entry["result"] for entry in imports}
        assert by_result == {"success", "failure"}
        cli_entry = imports[-1]  # oldest first from the end: the CLI's import
        assert cli_entry["actorKind"] == "system"
        assert cli_entry["details"]["generation"] == first["id"]
        assert cli_entry["details"]["records"] == 4
        assert cli_entry["details"]["source_checksum"] == first["source_checksum"]
        api_entries = [entry for entry in imports if entry["actor"] == "admin"]
        assert {entry["result"] for entry in api_entries} == {"success", "failure"}
        reasons = [e["details"]["reason"] for e in api_entries if e["result"] == "failure"]
        assert len(reasons) == 2
        assert any("not a zip" in reason for reason in reasons)
        assert any("is running" in reason for reason in reasons)
        eventually(
            lambda: len(audit_entries(admin, "vulndb:rollback")) >= 6,
            what="the rollbacks are audited",
        )
        rollbacks = audit_entries(admin, "vulndb:rollback")
        assert rollbacks[0]["actor"] == "admin"
        assert rollbacks[0]["details"]["generation"] == first["id"]

        # Only administrators.
        username = create_user(admin)
    with api_client(server, username, PASSWORD) as user:
        assert_problem(user.get("/vulnerability-database"), 403)
        assert_problem(
            user.post("/vulnerability-database", content=second_zip.read_bytes(), headers=BINARY),
            403,
        )
        assert_problem(user.post("/vulnerability-database/rollback"), 403)
    with api_client(server, None) as anonymous:
        assert_problem(anonymous.get("/vulnerability-database"), 401)


def test_a_configured_key_and_upload_limit(
    start_registry: Callable[..., RegistryProcess], tmp_path: Path
) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    public = tmp_path / "vulndb.pub.pem"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    config = tmp_path / "moorage.toml"
    config.write_text(f'vulndb_public_key = "{public}"\nvulndb_require_signature = true\n')
    server = start_registry(
        env={
            "MOORAGE_VULNDB_PUBLIC_KEY": str(public),
            "MOORAGE_VULNDB_REQUIRE_SIGNATURE": "true",
            "MOORAGE_VULNDB_MAX_UPLOAD_BYTES": str(1 << 20),
        }
    )
    unsigned = write_bundle(tmp_path / "unsigned.tar.gz", RECORDS)
    signed = write_bundle(tmp_path / "signed.tar.gz", RECORDS, signing_key=key)
    forged = write_bundle(
        tmp_path / "forged.tar.gz", RECORDS, signing_key=ed25519.Ed25519PrivateKey.generate()
    )

    refused = vulndb(server.data_dir, "import", str(unsigned), config=config)
    assert refused.returncode == 1
    assert "not signed" in refused.stderr
    accepted = vulndb(server.data_dir, "import", str(signed), config=config)
    assert accepted.returncode == 0, accepted.stderr
    assert ", signed," in accepted.stdout

    with api_client(server) as admin:
        body = unsigned.read_bytes()
        assert (
            "not signed"
            in assert_problem(
                admin.post("/vulnerability-database", content=body, headers=BINARY), 422
            )["detail"]
        )
        assert (
            "does not verify"
            in assert_problem(
                admin.post("/vulnerability-database", content=forged.read_bytes(), headers=BINARY),
                422,
            )["detail"]
        )
        uploaded = admin.post(
            "/vulnerability-database", content=signed.read_bytes(), headers=BINARY
        )
        assert uploaded.status_code == 201, uploaded.text
        assert uploaded.json()["signed"] is True
        too_big = admin.post(
            "/vulnerability-database", content=b"\x00" * ((1 << 20) + 1), headers=BINARY
        )
        assert_problem(too_big, 413)
        history = admin.get("/vulnerability-database").json()["history"]
        assert [item["signed"] for item in history] == [True, True]


def test_a_require_signature_setting_needs_a_key(tmp_path: Path) -> None:
    config = tmp_path / "moorage.toml"
    config.write_text("vulndb_require_signature = true\n")
    result = vulndb(tmp_path / "data", "status", config=config)
    assert result.returncode == 2
    assert "vulndb_require_signature needs vulndb_public_key" in result.stderr


def test_the_manifest_command_lists_the_zips_with_their_checksums(tmp_path: Path) -> None:
    root = tmp_path / "osv"
    write_osv_zip(root / "Debian" / "all.zip", RECORDS["Debian"])
    write_osv_zip(root / "PyPI" / "all.zip", RECORDS["PyPI"])
    result = subprocess.run(
        [sys.executable, "-m", "moorage", "vulndb", "manifest", str(root)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["format"] == "moorage-vulndb/1"
    assert [item["path"] for item in manifest["files"]] == ["Debian/all.zip", "PyPI/all.zip"]
    assert manifest["files"][0]["size"] == (root / "Debian" / "all.zip").stat().st_size


def test_an_unusable_key_stops_the_commands_with_a_message(tmp_path: Path) -> None:
    config = tmp_path / "moorage.toml"
    config.write_text(f'vulndb_public_key = "{tmp_path / "missing.pem"}"\n')
    missing = vulndb(tmp_path / "data", "status", config=config)
    assert missing.returncode == 2
    assert "cannot read vulndb_public_key" in missing.stderr
    (tmp_path / "junk.pem").write_text("not a key")
    config.write_text(f'vulndb_public_key = "{tmp_path / "junk.pem"}"\n')
    junk = vulndb(tmp_path / "data", "status", config=config)
    assert junk.returncode == 2
    assert "not a PEM public key" in junk.stderr


@pytest.mark.tools("openssl", "tar")
def test_the_documented_air_gapped_procedure(tmp_path: Path) -> None:
    """docs/scanning.md, steps 2 to 9, with the commands as written there."""
    osv = tmp_path / "osv"
    write_osv_zip(osv / "Debian" / "all.zip", RECORDS["Debian"])
    write_osv_zip(osv / "Maven" / "all.zip", RECORDS["Maven"])
    write_osv_zip(osv / "Rocky Linux" / "all.zip", [osv_record("TEST-R", "Rocky Linux:9", "curl")])

    def sh(*command: str) -> None:
        subprocess.run(command, cwd=tmp_path, check=True, capture_output=True)

    sh(sys.executable, "-m", "moorage", "vulndb", "manifest", "osv")
    sh("openssl", "genpkey", "-algorithm", "ed25519", "-out", "vulndb-signing.key")
    sh("openssl", "pkey", "-in", "vulndb-signing.key", "-pubout", "-out", "vulndb-signing.pub.pem")
    sh(
        "openssl", "pkeyutl", "-sign", "-inkey", "vulndb-signing.key", "-rawin",
        "-in", "osv/manifest.json", "-out", "osv/manifest.json.sig",
    )  # fmt: skip
    sh(
        "openssl", "pkeyutl", "-verify", "-pubin", "-inkey", "vulndb-signing.pub.pem", "-rawin",
        "-in", "osv/manifest.json", "-sigfile", "osv/manifest.json.sig",
    )  # fmt: skip
    sh("tar", "-C", "osv", "-czf", "osv-bundle.tar.gz", ".")
    config = tmp_path / "moorage.toml"
    config.write_text(
        f'vulndb_public_key = "{tmp_path / "vulndb-signing.pub.pem"}"\n'
        "vulndb_require_signature = true\n"
    )
    data = tmp_path / "data"
    imported = vulndb(data, "import", str(tmp_path / "osv-bundle.tar.gz"), config=config)
    assert imported.returncode == 0, imported.stderr
    assert "4 records (Debian 2, Maven 1, Rocky Linux 1)" in imported.stdout
    assert ", signed," in imported.stdout
    status = status_json(data)
    checksum = hashlib.sha256((tmp_path / "osv-bundle.tar.gz").read_bytes()).hexdigest()
    assert status["current"]["source_checksum"] == checksum
    assert status["current"]["signed"] is True
