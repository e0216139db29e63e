"""Rust crates: cargo-auditable's `.dep-v0` section in binaries, and `Cargo.lock` files.

cargo-auditable stores zlib-compressed JSON, `{"packages": [{"name", "version", "source",
"kind", "dependencies", "root"}]}`, in the binary. Only crates whose source is crates.io are
reported: a `local` or `git` crate of the same name is a different crate, and matching it
against crates.io advisories would be wrong. Decompression stops at a cap, so a small section
cannot expand into an unbounded document.
"""

from __future__ import annotations

import json
import re
import tomllib
import zlib
from typing import Final

from moorage.scanning.layers import MIB
from moorage.scanning.packages import Ecosystem, FileFindings, Package

LOCK_FILE: Final = "Cargo.lock"
MAX_JSON_BYTES: Final = 8 * MIB
MAX_LOCK_BYTES: Final = 8 * MIB
CRATES_IO_SOURCES: Final = (
    "registry+https://github.com/rust-lang/crates.io-index",
    "sparse+https://index.crates.io/",
)

_CRATE_NAME: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_VERSION: Final = re.compile(r"^[0-9][A-Za-z0-9.+-]{0,127}$")


def wants_lock(path: str) -> bool:
    return path.rpartition("/")[2] == LOCK_FILE


def read_section(location: str, section: bytes) -> tuple[list[Package], list[str]]:
    """The crates.io packages a `.dep-v0` section records, and notes on what was not read."""
    decompressor = zlib.decompressobj()
    try:
        text = decompressor.decompress(section, MAX_JSON_BYTES + 1)
    except zlib.error as error:
        return [], [f"unreadable cargo-auditable data: {error}"]
    if len(text) > MAX_JSON_BYTES:
        return [], [f"cargo-auditable data larger than {MAX_JSON_BYTES} bytes; not read"]
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as error:
        return [], [f"unreadable cargo-auditable data: {str(error)[:200]}"]
    entries = document.get("packages") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        return [], ["cargo-auditable data has no package list"]
    packages: list[Package] = []
    notes: list[str] = []
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("source") != "crates.io":
            continue
        package = _crate(entry.get("name"), entry.get("version"), location, notes)
        if package is not None:
            packages.append(package)
    return packages, notes


def catalog_lock(path: str, data: bytes) -> FileFindings:
    if len(data) > MAX_LOCK_BYTES:
        return FileFindings.of(path, notes=[f"larger than {MAX_LOCK_BYTES} bytes; not read"])
    try:
        document = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError) as error:
        return FileFindings.of(path, notes=[f"unreadable Cargo.lock: {str(error)[:200]}"])
    entries = document.get("package", [])
    if not isinstance(entries, list):
        return FileFindings.of(path, notes=["Cargo.lock [[package]] is not a list"])
    packages: list[Package] = []
    notes: list[str] = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        source = entry.get("source")
        if not isinstance(source, str) or not source.startswith(CRATES_IO_SOURCES):
            continue  # workspace members, git and path dependencies
        package = _crate(entry.get("name"), entry.get("version"), path, notes)
        if package is not None:
            packages.append(package)
    return FileFindings.of(path, packages, notes)


def _crate(name: object, version: object, location: str, notes: list[str]) -> Package | None:
    if not isinstance(name, str) or not _CRATE_NAME.fullmatch(name):
        notes.append(f"skipped crate with name {str(name)[:80]!r}")
        return None
    if not isinstance(version, str) or not _VERSION.fullmatch(version):
        notes.append(f"skipped crate {name} with version {str(version)[:80]!r}")
        return None
    return Package(Ecosystem.CRATES_IO, name, version, location)
