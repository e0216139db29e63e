"""Synthetic OSV data: records, `all.zip` files and signed bundles, built in the tests.

No real vulnerability data ships with any package, so tests describe the advisories they need
with real package names and versions (and a few real advisory ids, such as log4j-core's
GHSA-jfh8-c2jp-5v3q); distribution edge cases use `TEST-` ids.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

MODIFIED = "2024-01-01T00:00:00Z"
LOG4SHELL_VECTOR = "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:C/C:H/I:H/A:H"  # 10.0, Critical


def osv_record(
    id: str,
    ecosystem: str,
    name: str,
    *,
    introduced: str = "0",
    fixed: str | None = None,
    last_affected: str | None = None,
    versions: Sequence[str] = (),
    aliases: Sequence[str] = (),
    cvss_v3: str | None = None,
    database_severity: str | None = None,
    withdrawn: bool = False,
    summary: str = "",
    range_type: str = "ECOSYSTEM",
    modified: str = MODIFIED,
    references: Sequence[str] = (),
) -> dict[str, Any]:
    """One OSV record affecting one package.

    The range is `introduced`..`fixed` (or ..`last_affected`, inclusive). A record given only
    `versions` (no fixed or last_affected) has no range at all: exactly those versions match.
    """
    affected: dict[str, Any] = {"package": {"ecosystem": ecosystem, "name": name}}
    if fixed is not None or last_affected is not None or not versions:
        events: list[dict[str, str]] = [{"introduced": introduced}]
        if fixed is not None:
            events.append({"fixed": fixed})
        if last_affected is not None:
            events.append({"last_affected": last_affected})
        version_range: dict[str, Any] = {"type": range_type, "events": events}
        if range_type == "GIT":
            version_range["repo"] = f"https://example.invalid/{name}.git"
        affected["ranges"] = [version_range]
    if versions:
        affected["versions"] = list(versions)
    record: dict[str, Any] = {
        "schema_version": "1.6.0",
        "id": id,
        "modified": modified,
        "published": "2023-06-01T00:00:00Z",
        "aliases": list(aliases),
        "summary": summary or f"{name}: test advisory {id}",
        "details": f"Synthetic advisory {id} for {name} in {ecosystem}.",
        "affected": [affected],
        "references": [{"type": "ADVISORY", "url": url} for url in references]
        or [{"type": "ADVISORY", "url": f"https://osv.dev/vulnerability/{id}"}],
    }
    if cvss_v3 is not None:
        record["severity"] = [{"type": "CVSS_V3", "score": cvss_v3}]
    if database_severity is not None:
        record["database_specific"] = {"severity": database_severity}
    if withdrawn:
        record["withdrawn"] = "2024-02-01T00:00:00Z"
    return record


def log4shell() -> dict[str, Any]:
    """The real log4j-core advisory's identity, ranges and rating."""
    record = osv_record(
        "GHSA-jfh8-c2jp-5v3q",
        "Maven",
        "org.apache.logging.log4j:log4j-core",
        introduced="2.0-beta9",
        fixed="2.15.0",
        aliases=("CVE-2021-44228",),
        cvss_v3=LOG4SHELL_VECTOR,
        database_severity="CRITICAL",
        summary="Remote code injection in Log4j",
        references=("https://nvd.nist.gov/vuln/detail/CVE-2021-44228",),
    )
    record["modified"] = "2024-02-20T21:54:00Z"
    return record


def write_osv_zip(path: Path, records: Iterable[dict[str, Any]]) -> Path:
    """An OSV `all.zip`: one `<id>.json` per record, deflated as osv.dev publishes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for record in records:
            archive.writestr(f"{record['id']}.json", json.dumps(record))
    return path


def manifest_for(files: Mapping[str, bytes], created: datetime | None = None) -> bytes:
    """The bundle manifest (`moorage-vulndb/1`) naming each file with its size and sha256."""
    moment = (created or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    manifest = {
        "format": "moorage-vulndb/1",
        "created": moment,
        "producer": "tests",
        "files": [
            {
                "path": name,
                "ecosystem": name.partition("/")[0],
                "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
            for name, data in sorted(files.items())
        ],
    }
    return json.dumps(manifest, indent=2).encode()


def write_tar(path: Path, members: Mapping[str, bytes], *, gzip: bool = True) -> Path:
    """A tar (gzip-compressed by default) holding `members` as regular files, in order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz" if gzip else "w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000
            archive.addfile(info, io.BytesIO(data))
    return path


def zip_bytes(records: Iterable[dict[str, Any]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for record in records:
            archive.writestr(f"{record['id']}.json", json.dumps(record))
    return buffer.getvalue()


def write_bundle(
    path: Path,
    by_ecosystem: Mapping[str, Sequence[dict[str, Any]]],
    *,
    signing_key: ed25519.Ed25519PrivateKey | None = None,
) -> Path:
    """A bundle: tar.gz of `<ecosystem>/all.zip` files, `manifest.json` and, when a key is
    given, `manifest.json.sig` (an Ed25519 signature over the manifest's bytes)."""
    files = {
        f"{ecosystem}/all.zip": zip_bytes(records) for ecosystem, records in by_ecosystem.items()
    }
    manifest = manifest_for(files)
    members = {"manifest.json": manifest}
    if signing_key is not None:
        members["manifest.json.sig"] = signing_key.sign(manifest)
    members.update(files)
    return write_tar(path, members)


# --- A large, plausible database for the bench ---------------------------------------------

# Real package names per ecosystem; generated variants of them fill the long tail.
_NAMES: dict[str, tuple[str, ...]] = {
    "Debian:12": (
        "openssl",
        "glibc",
        "curl",
        "zlib",
        "systemd",
        "openssh",
        "gnutls28",
        "libxml2",
        "expat",
        "sqlite3",
        "perl",
        "python3.11",
        "tiff",
        "libpng1.6",
        "krb5",
        "nghttp2",
        "libssh2",
        "git",
        "vim",
        "tar",
        "bash",
        "coreutils",
        "xz-utils",
        "libgcrypt20",
        "gnupg2",
        "nss",
        "ncurses",
        "pcre2",
        "freetype",
        "libwebp",
    ),
    "Ubuntu:22.04:LTS": ("openssl", "curl", "glibc", "linux", "sudo", "openssh", "libxml2"),
    "Alpine:v3.19": ("openssl", "busybox", "musl", "curl", "zlib", "libxml2", "expat"),
    "PyPI": (
        "requests",
        "urllib3",
        "django",
        "flask",
        "jinja2",
        "pyyaml",
        "pillow",
        "cryptography",
        "werkzeug",
        "aiohttp",
        "numpy",
        "setuptools",
        "certifi",
        "idna",
        "sqlalchemy",
    ),
    "npm": (
        "lodash",
        "minimist",
        "axios",
        "express",
        "moment",
        "handlebars",
        "ws",
        "semver",
        "tar",
        "node-fetch",
        "json5",
        "qs",
        "debug",
        "glob-parent",
        "ansi-regex",
    ),
    "Maven": (
        "org.apache.logging.log4j:log4j-core",
        "com.fasterxml.jackson.core:jackson-databind",
        "org.springframework:spring-web",
        "org.apache.commons:commons-text",
        "commons-io:commons-io",
        "org.yaml:snakeyaml",
        "com.google.guava:guava",
    ),
    "Go": (
        "golang.org/x/net",
        "golang.org/x/crypto",
        "golang.org/x/text",
        "stdlib",
        "github.com/gin-gonic/gin",
        "google.golang.org/grpc",
        "github.com/docker/docker",
    ),
    "crates.io": ("tokio", "hyper", "openssl", "regex", "time", "smallvec", "h2"),
}
_WEIGHTS: dict[str, int] = {
    "Debian:12": 30,
    "Ubuntu:22.04:LTS": 10,
    "Alpine:v3.19": 5,
    "PyPI": 10,
    "npm": 30,
    "Maven": 8,
    "Go": 5,
    "crates.io": 2,
}
_SUFFIXES = ("utils", "core", "common", "plugin", "extra", "compat", "tools", "ng", "lite", "dev")
# The share of records about the real names: about ten advisories each, as in real data.
_REAL_NAME_RECORDS_PER_NAME = 10
_VECTORS = (
    "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H",
    "CVSS:3.1/AV:N/AC:L/PR:N/UI:R/S:U/C:L/I:L/A:N",
    "CVSS:3.1/AV:L/AC:H/PR:L/UI:N/S:U/C:L/I:N/A:N",
    "CVSS:3.1/AV:N/AC:H/PR:N/UI:N/S:U/C:H/I:N/A:N",
)


def synthetic_name(ecosystem: str, index: int) -> str:
    """A plausible package name derived from a real one (the long tail of an ecosystem)."""
    pool = _NAMES[ecosystem]
    base = pool[index % len(pool)]
    suffix = _SUFFIXES[(index // len(pool)) % len(_SUFFIXES)]
    serial = index // (len(pool) * len(_SUFFIXES))
    if ecosystem == "Maven":
        group, _, artifact = base.partition(":")
        return f"{group}:{artifact}-{suffix}{serial}"
    if ecosystem == "Go":
        return f"github.com/example{serial}/{base.rsplit('/', 1)[-1]}-{suffix}"
    return f"{base}-{suffix}{serial}"


def _version(ecosystem: str, rng: random.Random) -> tuple[str, str]:
    """An introduced version and a later fixed version, in the ecosystem's syntax."""
    major, minor, patch = rng.randint(0, 9), rng.randint(0, 30), rng.randint(0, 20)
    fixed_patch = patch + rng.randint(1, 5)
    if ecosystem.startswith("Debian"):
        revision = rng.randint(1, 5)
        return f"{major}.{minor}.{patch}-{revision}", f"{major}.{minor}.{fixed_patch}-1+deb12u1"
    if ecosystem.startswith("Ubuntu"):
        return f"{major}.{minor}.{patch}-1", f"{major}.{minor}.{fixed_patch}-1ubuntu0.1"
    if ecosystem.startswith("Alpine"):
        return f"{major}.{minor}.{patch}-r0", f"{major}.{minor}.{fixed_patch}-r{rng.randint(0, 9)}"
    return f"{major}.{minor}.{patch}", f"{major}.{minor}.{fixed_patch}"


def _identifier(ecosystem: str, serial: int, rng: random.Random) -> str:
    if ecosystem.startswith("Debian"):
        return f"DEBIAN-CVE-{2015 + serial % 10}-{serial:06d}"
    if ecosystem.startswith("Ubuntu"):
        return f"UBUNTU-CVE-{2015 + serial % 10}-{serial:06d}"
    if ecosystem.startswith("Alpine"):
        return f"ALPINE-CVE-{2015 + serial % 10}-{serial:06d}"
    alphabet = "23456789cfghjmpqrvwx"
    parts = ("".join(rng.choice(alphabet) for _ in range(4)) for _ in range(3))
    return "GHSA-" + "-".join(parts)


def synthetic_database(count: int, seed: int = 0) -> Iterator[dict[str, Any]]:
    """`count` distinct, plausible OSV records over real package names (deterministic)."""
    rng = random.Random(seed)
    ecosystems = list(_WEIGHTS)
    weights = [_WEIGHTS[ecosystem] for ecosystem in ecosystems]
    real_records = {
        ecosystem: len(_NAMES[ecosystem]) * _REAL_NAME_RECORDS_PER_NAME for ecosystem in ecosystems
    }
    seen: set[str] = set()
    tail: dict[str, int] = dict.fromkeys(ecosystems, 0)
    for serial in range(count):
        ecosystem = rng.choices(ecosystems, weights)[0]
        if real_records[ecosystem] > 0:
            real_records[ecosystem] -= 1
            name = rng.choice(_NAMES[ecosystem])
        else:
            name = synthetic_name(ecosystem, tail[ecosystem] // 2)
            tail[ecosystem] += 1
        identifier = _identifier(ecosystem, serial, rng)
        while identifier in seen:
            identifier = _identifier(ecosystem, serial, rng) + "x"
        seen.add(identifier)
        introduced, fixed = _version(ecosystem, rng)
        cve = f"CVE-{2015 + serial % 10}-{100000 + serial}"
        carries_cvss = ecosystem.split(":")[0] not in ("Debian", "Ubuntu", "Alpine")
        yield osv_record(
            identifier,
            ecosystem,
            name,
            introduced=introduced,
            fixed=fixed if rng.random() > 0.05 else None,
            aliases=(cve,),
            cvss_v3=rng.choice(_VECTORS) if carries_cvss else None,
            database_severity=rng.choice(("LOW", "MODERATE", "HIGH", "CRITICAL"))
            if carries_cvss
            else None,
            range_type="SEMVER" if ecosystem in ("npm", "Go", "crates.io") else "ECOSYSTEM",
        )


def _with_test_database(data_dir: Path) -> dict[str, str]:
    # Under MOORAGE_TEST_DATABASE=postgresql the server's metadata is not in data_dir.
    from tests.support.server import database_url_for

    environment = {k: v for k, v in os.environ.items() if k != "MOORAGE_TEST_DATABASE"}
    url = database_url_for(data_dir)
    return {**environment, **({"MOORAGE_DATABASE_URL": url} if url else {})}


def run_vulndb(data_dir: Path, *args: str) -> str:
    """`moorage vulndb …` on a data directory (a server may be running on it); its output."""
    result = subprocess.run(
        [sys.executable, "-m", "moorage", "vulndb", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=_with_test_database(data_dir),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@contextmanager
def held_vulndb_lock(data_dir: Path) -> Iterator[None]:
    """Hold the vulnerability database's lock as another node's import would (through the
    metadata database of `data_dir`)."""
    from moorage.metadata.database import make_engine, sqlite_url
    from moorage.metadata.supply_chain.vulndb_store import VulndbStore

    engine = make_engine(sqlite_url(data_dir / "moorage.db"), pool_size=1)
    store = VulndbStore(engine)
    owner = "another-node:1:test"
    try:
        assert store.claim_lock(owner, 600), "the lock is held already"
        yield
    finally:
        store.release_lock(owner)
        engine.dispose()
