"""Importing the vulnerability database: sources, checksums, signatures, hostile archives,
malformed records, generations (atomic switch, rollback, status) and changed packages."""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import subprocess
import tarfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from moorage.vulnerability.bundle import (
    BundleError,
    ImportLimits,
    SignatureError,
    load_public_key,
)
from moorage.vulnerability.database import (
    DatabaseBusyError,
    NoPreviousGenerationError,
    VulnerabilityDatabase,
)
from tests.support.osv import (
    log4shell,
    manifest_for,
    osv_record,
    write_bundle,
    write_osv_zip,
    write_tar,
    zip_bytes,
)

DEBIAN = [
    osv_record("TEST-DEB-OPENSSL", "Debian:12", "openssl", fixed="3.0.11-1~deb12u2"),
    osv_record("TEST-DEB-ZLIB", "Debian:12", "zlib", fixed="1:1.2.13.dfsg-1"),
]
PYPI = [osv_record("GHSA-j8r2-6x86-q33q", "PyPI", "requests", introduced="2.3.0", fixed="2.31.0")]
MAVEN = [log4shell()]
RECORDS = {"Debian": DEBIAN, "PyPI": PYPI, "Maven": MAVEN}
# docs/scanning.md: "The current generation and the three before it are kept"
KEEP_GENERATIONS = 4


@pytest.fixture
def database(tmp_path: Path) -> VulnerabilityDatabase:
    return VulnerabilityDatabase(tmp_path / "vulndb")


def public_pem(key: ed25519.Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def bundle_members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as archive:
        return {
            member.name: archive.extractfile(member).read()  # type: ignore[union-attr]
            for member in archive.getmembers()
        }


def ids(database: VulnerabilityDatabase, ecosystem: str, name: str) -> set[str]:
    current = database.current()
    assert current is not None
    return {record.id for record in current.records_for(ecosystem, name)}


# --- Sources -----------------------------------------------------------------------------


def test_a_bundle_is_imported_and_becomes_current(
    tmp_path: Path, database: VulnerabilityDatabase
) -> None:
    assert database.current() is None
    bundle = write_bundle(tmp_path / "osv.tar.gz", RECORDS)
    result = database.import_path(bundle)
    assert result.records == 4
    assert result.skipped == 0
    assert result.ecosystems == {"Debian": 2, "Maven": 1, "PyPI": 1}
    assert result.source_checksum == hashlib.sha256(bundle.read_bytes()).hexdigest()
    assert result.signed is False
    assert result.elapsed_seconds >= 0
    current = database.current()
    assert current is not None
    assert current.generation == result.generation
    assert ids(database, "Debian", "openssl") == {"TEST-DEB-OPENSSL"}
    assert ids(database, "Maven", "org.apache.logging.log4j:log4j-core") == {"GHSA-jfh8-c2jp-5v3q"}
    assert ids(database, "PyPI", "Requests") == {"GHSA-j8r2-6x86-q33q"}  # canonical names
    assert ids(database, "Debian", "curl") == set()


def test_an_uncompressed_tar_bundle(tmp_path: Path, database: VulnerabilityDatabase) -> None:
    members = bundle_members(write_bundle(tmp_path / "b.tar.gz", RECORDS))
    plain = write_tar(tmp_path / "b.tar", members, gzip=False)
    assert database.import_path(plain).records == 4


def test_a_directory_of_ecosystem_zips(tmp_path: Path, database: VulnerabilityDatabase) -> None:
    root = tmp_path / "osv"
    write_osv_zip(root / "Debian" / "all.zip", DEBIAN)
    write_osv_zip(root / "PyPI" / "all.zip", PYPI)
    write_osv_zip(root / "maven-extra.zip", MAVEN)
    (root / "README").write_text("not a zip")
    result = database.import_path(root)
    assert result.records == 4
    assert database.status().current is not None
    assert database.status().history[0].source_kind == "directory"


def test_a_single_zip(tmp_path: Path, database: VulnerabilityDatabase) -> None:
    result = database.import_path(write_osv_zip(tmp_path / "all.zip", DEBIAN))
    assert result.records == 2
    assert result.ecosystems == {"Debian": 2}


def test_the_same_record_in_two_zips_is_kept_once_newest_first(
    tmp_path: Path, database: VulnerabilityDatabase
) -> None:
    older = osv_record("GHSA-dup", "PyPI", "flask", fixed="2.2.5", modified="2023-01-01T00:00:00Z")
    newer = osv_record("GHSA-dup", "PyPI", "flask", fixed="2.3.2", modified="2023-06-01T00:00:00Z")
    root = tmp_path / "osv"
    write_osv_zip(root / "A" / "all.zip", [newer])
    write_osv_zip(root / "B" / "all.zip", [older])
    assert database.import_path(root).records == 1
    current = database.current()
    assert current is not None
    (record,) = current.records_for("PyPI", "flask")
    assert record.affected[0].ranges[0].events[1].version == "2.3.2"


def test_a_file_that_is_no_archive_is_refused(
    tmp_path: Path, database: VulnerabilityDatabase
) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(BundleError, match=r"not a zip, tar or tar\.gz"):
        database.import_path(junk)
    assert database.current() is None


# --- Checksums and signatures ------------------------------------------------------------


def test_a_signed_bundle_verifies_with_the_configured_key(
    tmp_path: Path, database: VulnerabilityDatabase
) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    bundle = write_bundle(tmp_path / "signed.tar.gz", RECORDS, signing_key=key)
    result = database.import_path(bundle, public_key_pem=public_pem(key), require_signature=True)
    assert result.signed is True
    status = database.status()
    assert status.current is not None
    assert status.current.signed is True
    assert status.current.bundle_created is not None


def test_a_tampered_manifest_fails_the_signature(
    tmp_path: Path, database: VulnerabilityDatabase
) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    members = bundle_members(write_bundle(tmp_path / "b.tar.gz", RECORDS, signing_key=key))
    manifest = json.loads(members["manifest.json"])
    manifest["created"] = "2030-01-01T00:00:00Z"
    members["manifest.json"] = json.dumps(manifest).encode()
    tampered = write_tar(tmp_path / "tampered.tar.gz", members)
    with pytest.raises(SignatureError, match="does not verify"):
        database.import_path(tampered, public_key_pem=public_pem(key))
    assert database.current() is None


def test_a_tampered_zip_fails_its_checksum(tmp_path: Path, database: VulnerabilityDatabase) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    members = bundle_members(write_bundle(tmp_path / "b.tar.gz", RECORDS, signing_key=key))
    evil = osv_record("TEST-DEB-OPENSSL", "Debian:12", "openssl", fixed="0")
    members["Debian/all.zip"] = zip_bytes([evil, DEBIAN[1]])
    tampered = write_tar(tmp_path / "tampered.tar.gz", members)
    with pytest.raises(BundleError, match="does not match its checksum"):
        database.import_path(tampered, public_key_pem=public_pem(key), require_signature=True)
    # Without a key there is no signature check, but the checksums still hold.
    with pytest.raises(BundleError, match="does not match its checksum"):
        database.import_path(tampered)


def test_a_signature_by_another_key_is_refused(
    tmp_path: Path, database: VulnerabilityDatabase
) -> None:
    signer, configured = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
    bundle = write_bundle(tmp_path / "b.tar.gz", RECORDS, signing_key=signer)
    with pytest.raises(SignatureError):
        database.import_path(bundle, public_key_pem=public_pem(configured))


def test_unsigned_input_is_refused_when_a_signature_is_required(
    tmp_path: Path, database: VulnerabilityDatabase
) -> None:
    pem = public_pem(ed25519.Ed25519PrivateKey.generate())
    unsigned = write_bundle(tmp_path / "b.tar.gz", RECORDS)
    with pytest.raises(SignatureError, match="not signed"):
        database.import_path(unsigned, public_key_pem=pem, require_signature=True)
    with pytest.raises(SignatureError, match="only signed bundles"):
        database.import_path(
            write_osv_zip(tmp_path / "all.zip", DEBIAN), public_key_pem=pem, require_signature=True
        )
    # A key alone (signature optional) accepts an unsigned bundle, and says so.
    assert database.import_path(unsigned, public_key_pem=pem).signed is False


def test_a_listed_file_missing_or_an_unlisted_file_is_refused(
    tmp_path: Path, database: VulnerabilityDatabase
) -> None:
    members = bundle_members(write_bundle(tmp_path / "b.tar.gz", RECORDS))
    missing = dict(members)
    del missing["PyPI/all.zip"]
    with pytest.raises(BundleError, match="listed but missing"):
        database.import_path(write_tar(tmp_path / "missing.tar.gz", missing))
    extra = dict(members)
    extra["npm/all.zip"] = zip_bytes([])
    with pytest.raises(BundleError, match="not listed"):
        database.import_path(write_tar(tmp_path / "extra.tar.gz", extra))
    no_manifest = {name: data for name, data in members.items() if name != "manifest.json"}
    with pytest.raises(BundleError, match=r"no manifest\.json"):
        database.import_path(write_tar(tmp_path / "bare.tar.gz", no_manifest))


@pytest.mark.tools("openssl")
@pytest.mark.parametrize(
    ("generate", "sign"),
    [
        (
            ["genpkey", "-algorithm", "ed25519"],
            ["pkeyutl", "-sign", "-inkey", "{key}", "-rawin", "-in", "{manifest}"],
        ),
        (
            ["ecparam", "-name", "prime256v1", "-genkey", "-noout"],
            ["dgst", "-sha256", "-sign", "{key}", "{manifest}"],
        ),
        (
            ["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:3072"],
            ["dgst", "-sha256", "-sign", "{key}", "{manifest}"],
        ),
    ],
    ids=["ed25519", "ecdsa-p256", "rsa"],
)
def test_signatures_made_with_openssl_as_documented(
    tmp_path: Path, database: VulnerabilityDatabase, generate: list[str], sign: list[str]
) -> None:
    key, public, manifest = tmp_path / "key.pem", tmp_path / "key.pub.pem", tmp_path / "m.json"
    subprocess.run(["openssl", *generate, "-out", str(key)], check=True, capture_output=True)
    subprocess.run(
        ["openssl", "pkey", "-in", str(key), "-pubout", "-out", str(public)],
        check=True,
        capture_output=True,
    )
    files = {f"{eco}/all.zip": zip_bytes(records) for eco, records in RECORDS.items()}
    manifest.write_bytes(manifest_for(files))
    command = [part.format(key=key, manifest=manifest) for part in sign]
    signature = subprocess.run(["openssl", *command], check=True, capture_output=True).stdout
    bundle = write_tar(
        tmp_path / "b.tar.gz",
        {"manifest.json": manifest.read_bytes(), "manifest.json.sig": signature, **files},
    )
    result = database.import_path(
        bundle, public_key_pem=public.read_bytes(), require_signature=True
    )
    assert result.signed is True
    # The same signature over a changed manifest fails.
    changed = manifest.read_bytes().replace(b"tests", b"other")
    forged = write_tar(
        tmp_path / "forged.tar.gz",
        {"manifest.json": changed, "manifest.json.sig": signature, **files},
    )
    with pytest.raises(SignatureError):
        database.import_path(forged, public_key_pem=public.read_bytes(), require_signature=True)


def test_unusable_keys_are_refused() -> None:
    with pytest.raises(BundleError, match="not a PEM public key"):
        load_public_key(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    small = subprocess.run(
        ["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"],
        check=True,
        capture_output=True,
    ).stdout
    public = serialization.load_pem_private_key(small, None).public_key()
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(BundleError, match="2048 bits"):
        load_public_key(pem)


# --- Hostile archives --------------------------------------------------------------------


def test_a_zip_bomb_is_refused(tmp_path: Path, database: VulnerabilityDatabase) -> None:
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("TEST-BOMB.json", b" " * (12 << 20))  # 12 MiB of spaces, ~12 KiB packed
    with pytest.raises(BundleError, match="zip bomb"):
        database.import_path(bomb)
    assert database.current() is None


def test_zip_entries_over_the_size_or_count_limits_are_refused(tmp_path: Path) -> None:
    database = VulnerabilityDatabase(
        tmp_path / "vulndb", limits=ImportLimits(max_entry_bytes=1000, max_entries=10)
    )
    big = osv_record("TEST-BIG", "PyPI", "requests", summary="x" * 2000)
    with pytest.raises(BundleError, match="the limit is 1000"):
        database.import_path(write_osv_zip(tmp_path / "big.zip", [big]))
    many = [osv_record(f"TEST-{n}", "PyPI", "requests") for n in range(11)]
    with pytest.raises(BundleError, match="more than 10 records"):
        database.import_path(write_osv_zip(tmp_path / "many.zip", many))


def test_a_tar_bomb_is_refused(tmp_path: Path) -> None:
    database = VulnerabilityDatabase(
        tmp_path / "vulndb", limits=ImportLimits(max_archive_bytes=4 << 20)
    )
    members = bundle_members(write_bundle(tmp_path / "b.tar.gz", RECORDS))
    members["Debian/all.zip"] = bytes(64 << 20)  # compresses to ~64 KiB in the tar.gz
    bomb = write_tar(tmp_path / "bomb.tar.gz", members)
    assert bomb.stat().st_size < 4 << 20
    with pytest.raises(BundleError, match="tar bomb"):
        database.import_path(bomb)


def _tar_with(tmp_path: Path, info: tarfile.TarInfo, data: bytes = b"") -> Path:
    path = tmp_path / "hostile.tar"
    with tarfile.open(path, "w") as archive:
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize(
    "name", ["../escape.zip", "/etc/cron.d/x.zip", "a/../../b.zip", "c:\\x.zip"]
)
def test_tar_members_that_escape_are_refused(
    tmp_path: Path, database: VulnerabilityDatabase, name: str
) -> None:
    with pytest.raises(BundleError, match="path traversal"):
        database.import_path(_tar_with(tmp_path, tarfile.TarInfo(name), b"PK"))


def test_links_in_a_bundle_are_refused(tmp_path: Path, database: VulnerabilityDatabase) -> None:
    link = tarfile.TarInfo("Debian/all.zip")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/shadow"
    with pytest.raises(BundleError, match="link or special file"):
        database.import_path(_tar_with(tmp_path, link))


def test_zip_entries_that_escape_are_refused(
    tmp_path: Path, database: VulnerabilityDatabase
) -> None:
    path = tmp_path / "evil.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("../../etc/passwd.json", json.dumps(DEBIAN[0]))
    with pytest.raises(BundleError, match="path traversal"):
        database.import_path(path)


# --- Malformed records -------------------------------------------------------------------


def test_malformed_records_are_skipped_and_counted(
    tmp_path: Path, database: VulnerabilityDatabase
) -> None:
    bad_event = osv_record("TEST-BAD-EVENT", "PyPI", "requests")
    bad_event["affected"][0]["ranges"][0]["events"] = [{"fixed": "1.0"}]
    no_id: dict[str, Any] = {"modified": "2024-01-01T00:00:00Z"}
    path = tmp_path / "mixed.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("TEST-GOOD.json", json.dumps(DEBIAN[0]))
        archive.writestr("TEST-BAD-EVENT.json", json.dumps(bad_event))
        archive.writestr("NO-ID.json", json.dumps(no_id))
        archive.writestr("BROKEN.json", b"{not json")
        archive.writestr("DEEP.json", b"[" * 100_000 + b"]" * 100_000)
        archive.writestr("notes.txt", b"hello")
    result = database.import_path(path)
    # A record whose range cannot be read is kept: the package it names must come out
    # possibly affected, not silently unaffected.
    assert result.records == 2
    assert result.skipped == 4
    reasons = {
        (item.origin.split(":")[1], item.record_id): item.reason for item in result.skipped_records
    }
    assert ("TEST-BAD-EVENT.json", "TEST-BAD-EVENT") not in reasons
    assert reasons[("BROKEN.json", None)] == "not JSON"
    assert reasons[("notes.txt", None)] == "not a .json file"
    assert "id must be" in reasons[("NO-ID.json", None)]
    status = database.status()
    assert status.current is not None
    assert (status.current.records, status.current.skipped) == (2, 4)
    generation = database.current()
    assert generation is not None
    (kept,) = generation.records_for("PyPI", "requests")
    assert kept.affected[0].unreadable == (
        "affected[0].ranges[0].events must include an introduced event",
    )


def test_a_source_without_one_valid_record_changes_nothing(
    tmp_path: Path, database: VulnerabilityDatabase
) -> None:
    first = database.import_path(write_osv_zip(tmp_path / "good.zip", DEBIAN))
    path = tmp_path / "bad.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("BROKEN.json", b"{not json")
    with pytest.raises(BundleError, match="no valid OSV records"):
        database.import_path(path)
    current = database.current()
    assert current is not None
    assert current.generation == first.generation
    assert len(database.status().history) == 1


# --- Generations -------------------------------------------------------------------------


def test_readers_switch_to_a_new_generation_and_old_ones_keep_working(
    tmp_path: Path, database: VulnerabilityDatabase
) -> None:
    first = database.import_path(write_osv_zip(tmp_path / "one.zip", DEBIAN))
    reader = VulnerabilityDatabase(tmp_path / "vulndb")  # another process, in effect
    old = reader.current()
    assert old is not None
    assert old.generation == first.generation
    assert reader.current() is old  # nothing changed: the same object, no reopening
    changed = [osv_record("TEST-DEB-OPENSSL", "Debian:12", "openssl", fixed="3.0.13-1~deb12u1")]
    for serial in range(KEEP_GENERATIONS + 1):  # the first generation's file is pruned
        second = database.import_path(write_osv_zip(tmp_path / f"{serial}.zip", changed))
    new = reader.current()
    assert new is not None
    assert new.generation == second.generation
    assert old.records_for("Debian", "openssl")[0].affected[0].ranges[0].events[1].version == (
        "3.0.11-1~deb12u2"
    )
    assert new.records_for("Debian", "openssl")[0].affected[0].ranges[0].events[1].version == (
        "3.0.13-1~deb12u1"
    )
    kept = sorted(path.stem for path in (tmp_path / "vulndb" / "generations").iterdir())
    history = [info.id for info in database.status().history]
    assert len(history) == KEEP_GENERATIONS
    assert kept == sorted(history)
    assert list(history) == sorted(history, reverse=True)


def test_rollback_restores_the_previous_generation(
    tmp_path: Path, database: VulnerabilityDatabase
) -> None:
    with pytest.raises(NoPreviousGenerationError):
        database.rollback()
    first = database.import_path(write_osv_zip(tmp_path / "one.zip", DEBIAN))
    second = database.import_path(write_bundle(tmp_path / "two.tar.gz", RECORDS))
    assert [info.id for info in database.status().history] == [second.generation, first.generation]
    info = database.rollback()
    assert info.id == first.generation
    assert info.records == 2
    current = database.current()
    assert current is not None
    assert current.generation == first.generation
    assert ids(database, "PyPI", "requests") == set()
    status = database.status()
    assert status.current is not None
    assert status.current.id == first.generation
    assert [item.id for item in status.history] == [first.generation]
    with pytest.raises(NoPreviousGenerationError):
        database.rollback()


def test_status_describes_each_generation(tmp_path: Path, database: VulnerabilityDatabase) -> None:
    assert database.status().current is None
    assert database.status().history == ()
    zip_path = write_osv_zip(tmp_path / "all.zip", DEBIAN + PYPI)
    result = database.import_path(zip_path)
    (info,) = database.status().history
    assert info.id == result.generation
    assert info.records == 3
    assert info.ecosystems == {"Debian": 2, "PyPI": 1}
    assert info.source_kind == "zip"
    assert info.source_name == "all.zip"
    assert info.source_checksum == hashlib.sha256(zip_path.read_bytes()).hexdigest()
    assert info.newest_modified is not None


def test_an_import_waits_for_no_one_while_another_holds_the_lock(
    tmp_path: Path, database: VulnerabilityDatabase
) -> None:
    database.import_path(write_osv_zip(tmp_path / "one.zip", DEBIAN))
    with (tmp_path / "vulndb" / "lock").open("a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        with pytest.raises(DatabaseBusyError):
            database.import_path(write_osv_zip(tmp_path / "two.zip", PYPI))
        with pytest.raises(DatabaseBusyError):
            database.rollback()
        fcntl.flock(held.fileno(), fcntl.LOCK_UN)
    assert database.import_path(write_osv_zip(tmp_path / "two.zip", PYPI)).records == 1


# --- Changed packages --------------------------------------------------------------------


def test_changed_packages_between_two_generations(
    tmp_path: Path, database: VulnerabilityDatabase
) -> None:
    dsa = osv_record(
        "TEST-DSA-GCC", "Debian:12", "gcc-12", fixed="12.2.0-14+deb12u1", aliases=("CVE-2023-4039",)
    )
    ghsa = osv_record(
        "TEST-GHSA-GCC",
        "npm",
        "left-pad",
        aliases=("CVE-2023-4039",),
        cvss_v3="CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:L/I:N/A:N",
    )
    unchanged = osv_record("TEST-CURL", "Debian:12", "curl", fixed="7.88.1-10+deb12u5")
    first = database.import_path(
        write_bundle(
            tmp_path / "one.tar.gz",
            {"Debian": [*DEBIAN, dsa, unchanged], "npm": [ghsa], "PyPI": PYPI, "Maven": MAVEN},
        )
    )
    fixed_later = osv_record("TEST-DEB-OPENSSL", "Debian:12", "openssl", fixed="3.0.13-1~deb12u1")
    rerated = dict(
        ghsa,
        severity=[{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"}],
    )
    lodash = osv_record("GHSA-35jh-r3h4-6jhm", "npm", "lodash", fixed="4.17.21")
    withdrawn = dict(PYPI[0], withdrawn="2024-05-01T00:00:00Z")
    # Only the details (which matching never reads) differ for zlib: not a change.
    zlib = dict(DEBIAN[1], details="Reworded.")
    second = database.import_path(
        write_bundle(
            tmp_path / "two.tar.gz",
            {
                "Debian": [fixed_later, zlib, dsa, unchanged],
                "npm": [rerated, lodash],
                "PyPI": [withdrawn],
                # Maven dropped out of the bundle entirely.
            },
        )
    )
    current = database.current()
    assert current is not None
    assert current.generation == second.generation
    assert database.changed_packages(first.generation, current) == frozenset(
        {
            ("Debian", "openssl"),  # fixed version changed
            ("Debian", "gcc-12"),  # its alias record's CVSS changed, so its rating may have
            ("npm", "left-pad"),
            ("npm", "lodash"),  # new
            ("PyPI", "requests"),  # withdrawn
            ("Maven", "org.apache.logging.log4j:log4j-core"),  # gone
        }
    )
    assert database.changed_packages(second.generation, current) == frozenset()
    assert database.changed_packages(None, current) is None
    assert database.changed_packages("20000101T000000Z-000000", current) is None


def test_many_reader_threads_see_whole_generations_during_imports(
    tmp_path: Path, database: VulnerabilityDatabase
) -> None:
    """Each generation has a different openssl fix; a reader must always see exactly one."""
    fixes = [f"3.0.{minor}-1~deb12u1" for minor in range(11, 15)]
    sources = [
        write_osv_zip(
            tmp_path / f"{index}.zip",
            [osv_record(f"TEST-{n}", "Debian:12", "openssl", fixed=fix) for n in range(50)],
        )
        for index, fix in enumerate(fixes)
    ]
    database.import_path(sources[0])
    reader = VulnerabilityDatabase(tmp_path / "vulndb")
    stop = threading.Event()
    problems: list[str] = []
    seen: set[str] = set()

    def read() -> None:
        while not stop.is_set():
            generation = reader.current()
            if generation is None:
                problems.append("no current generation")
                return
            records = generation.records_for("Debian", "openssl")
            versions = {record.affected[0].ranges[0].events[1].version for record in records}
            if len(records) != 50 or len(versions) != 1:
                problems.append(f"{len(records)} records, fixes {sorted(versions)}")
                return
            seen.update(versions)

    threads = [threading.Thread(target=read) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        for source in sources[1:]:
            database.import_path(source)
        database.rollback()
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert problems == []
    assert seen <= set(fixes)
    current = reader.current()
    assert current is not None
    assert {
        r.affected[0].ranges[0].events[1].version for r in current.records_for("Debian", "openssl")
    } == {fixes[2]}


def test_an_import_clears_what_interrupted_ones_left_behind(
    tmp_path: Path, database: VulnerabilityDatabase
) -> None:
    scratch = tmp_path / "vulndb" / "tmp"
    (scratch / "20260101T000000.000000Z-dead00").mkdir(parents=True)
    (scratch / "20260101T000000.000000Z-dead00.sqlite").write_bytes(b"half built")
    old_upload, new_upload = scratch / "uploads" / "old", scratch / "uploads" / "new"
    for upload in (old_upload, new_upload):
        upload.mkdir(parents=True)
        (upload / "upload").write_bytes(b"bytes")
    day_and_more = time.time() - 2 * 24 * 3600
    os.utime(old_upload, (day_and_more, day_and_more))
    database.import_path(write_osv_zip(tmp_path / "one.zip", DEBIAN))
    assert sorted(path.name for path in scratch.iterdir()) == ["uploads"]
    assert [path.name for path in (scratch / "uploads").iterdir()] == ["new"]


def test_a_bundle_packed_with_its_directory(
    tmp_path: Path, database: VulnerabilityDatabase
) -> None:
    """`tar -czf bundle.tar.gz osv/` puts everything under `osv/`: still one bundle."""
    key = ed25519.Ed25519PrivateKey.generate()
    members = bundle_members(write_bundle(tmp_path / "b.tar.gz", RECORDS, signing_key=key))
    nested = write_tar(tmp_path / "nested.tar.gz", {f"osv/{n}": d for n, d in members.items()})
    result = database.import_path(nested, public_key_pem=public_pem(key), require_signature=True)
    assert (result.records, result.signed) == (4, True)
    stray = dict({f"osv/{n}": d for n, d in members.items()}, **{"PyPI/all.zip": b"PK"})
    with pytest.raises(BundleError, match="is not beside"):
        database.import_path(write_tar(tmp_path / "stray.tar.gz", stray))
    twice = dict({f"osv/{n}": d for n, d in members.items()}, **members)
    with pytest.raises(BundleError, match="more than one"):
        database.import_path(write_tar(tmp_path / "twice.tar.gz", twice))


def test_malformed_references_cost_only_the_link(
    tmp_path: Path, database: VulnerabilityDatabase
) -> None:
    record = osv_record("TEST-REFS", "PyPI", "urllib3", fixed="1.26.18")
    record["references"] = [{"type": "WEB"}, "junk", {"url": "https://example.org/fix"}]
    database.import_path(write_osv_zip(tmp_path / "refs.zip", [record]))
    current = database.current()
    assert current is not None
    (stored,) = current.records_for("PyPI", "urllib3")
    assert [reference.url for reference in stored.references] == ["https://example.org/fix"]
    assert stored.references[0].type == "WEB"
