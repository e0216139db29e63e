"""RPM packages from the SQLite rpmdb (`rpmdb.sqlite`: Fedora 33+, RHEL/UBI 9, and derivatives).

The `Packages(hnum, blob)` table holds one RPM header per package: a be32 count of index
entries, a be32 length of the data store, 16-byte entries (tag, type, offset, count), then the
data store. Only a few tags are read. The database comes from an untrusted layer, so it is
opened from memory, read-only, with SQLite's hardening for hostile files, a bound on the work a
query may do, and the `Packages` object checked to be a plain table. An unreadable header is
skipped with a note. The older Berkeley DB and NDB formats are not read.
"""

from __future__ import annotations

import sqlite3
import struct
from collections.abc import Iterator
from typing import Final

from moorage.scanning.packages import Ecosystem, FileFindings, OwnedFile, Package

DATABASE_PATHS: Final = ("var/lib/rpm/rpmdb.sqlite", "usr/lib/sysimage/rpm/rpmdb.sqlite")

TAG_NAME: Final = 1000
TAG_VERSION: Final = 1001
TAG_RELEASE: Final = 1002
TAG_EPOCH: Final = 1003
TAG_ARCH: Final = 1022
TAG_SOURCERPM: Final = 1044
TAG_DIRINDEXES: Final = 1116
TAG_BASENAMES: Final = 1117
TAG_DIRNAMES: Final = 1118

TYPE_INT32: Final = 4
TYPE_STRING: Final = 6
TYPE_STRING_ARRAY: Final = 8
TYPE_I18NSTRING: Final = 9

_HEADER_MAGIC: Final = b"\x8e\xad\xe8\x01\x00\x00\x00\x00"  # present in package files, not the db
_MAX_INDEX_ENTRIES: Final = 100_000
_MAX_STRING: Final = 1024
_MAX_QUERY_STEPS: Final = 50_000_000  # SQLite virtual machine steps for the whole read
_PROGRESS_INTERVAL: Final = 10_000
_PSEUDO_PACKAGES: Final = frozenset({"gpg-pubkey"})  # imported signing keys, not software
_MAX_FILES: Final = 200_000  # per package; the file list is read for ownership only


class HeaderError(ValueError):
    pass


def wants(path: str) -> bool:
    return path in DATABASE_PATHS


def catalog(path: str, data: bytes) -> FileFindings:
    packages: list[Package] = []
    notes: list[str] = []
    owned: list[OwnedFile] = []
    try:
        for hnum, blob in _headers(data):
            try:
                package = _package(parse_header(blob), path)
            except HeaderError as error:
                notes.append(f"header {hnum}: {error}; skipped")
                continue
            if package is None:
                continue
            packages.append(package)
            try:
                owned.extend(OwnedFile(item, package.name) for item in file_paths(blob))
            except HeaderError as error:
                notes.append(f"header {hnum}: file list unreadable ({error})")
    except (sqlite3.Error, HeaderError) as error:
        notes.append(f"unreadable rpm database: {error}")
    return FileFindings.of(path, packages, notes, owned=owned)


def _headers(data: bytes) -> Iterator[tuple[object, bytes]]:
    connection = _open(data)
    try:
        kind = connection.execute(
            "SELECT type FROM sqlite_master WHERE name = 'Packages'"
        ).fetchone()
        if kind is None or kind[0] != "table":
            raise HeaderError("no Packages table")
        for hnum, blob in connection.execute("SELECT hnum, blob FROM Packages"):
            if isinstance(blob, bytes):
                yield hnum, blob
    finally:
        connection.close()


def _open(data: bytes) -> sqlite3.Connection:
    if len(data) < 100 or not data.startswith(b"SQLite format 3\x00"):
        raise HeaderError("not an SQLite database")
    # An in-memory copy cannot use a write-ahead log, so mark the file as rollback-journal
    # (bytes 18 and 19 are the read/write format versions; 2 means WAL).
    image = bytearray(data)
    image[18:20] = b"\x01\x01"
    connection = sqlite3.connect(":memory:")
    connection.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, len(data))
    connection.setlimit(sqlite3.SQLITE_LIMIT_SQL_LENGTH, 10_000)
    steps = 0

    def give_up_after_too_much_work() -> int:
        nonlocal steps
        steps += _PROGRESS_INTERVAL
        return 1 if steps > _MAX_QUERY_STEPS else 0

    connection.set_progress_handler(give_up_after_too_much_work, _PROGRESS_INTERVAL)
    connection.deserialize(bytes(image))
    for pragma in ("trusted_schema = OFF", "cell_size_check = ON", "query_only = ON"):
        connection.execute(f"PRAGMA {pragma}")
    return connection


def parse_header(blob: bytes) -> dict[int, str | int]:
    """The tags this cataloger reads, from one header blob."""
    store, entries = _index(blob)
    wanted = {TAG_NAME, TAG_VERSION, TAG_RELEASE, TAG_EPOCH, TAG_ARCH, TAG_SOURCERPM}
    tags: dict[int, str | int] = {}
    for tag, kind, offset, count in entries:
        if tag in wanted and count > 0:
            tags[tag] = _value(store, kind, offset)
    return tags


def _index(blob: bytes) -> tuple[bytes, Iterator[tuple[int, int, int, int]]]:
    if blob.startswith(_HEADER_MAGIC):
        blob = blob[len(_HEADER_MAGIC) :]
    if len(blob) < 8:
        raise HeaderError("truncated header")
    entry_count, store_length = struct.unpack_from(">II", blob)
    store_start = 8 + 16 * entry_count
    if entry_count > _MAX_INDEX_ENTRIES or store_start + store_length > len(blob):
        raise HeaderError("header sizes exceed the blob")
    entries = (struct.unpack_from(">IIII", blob, 8 + 16 * index) for index in range(entry_count))
    return blob[store_start : store_start + store_length], entries


def file_paths(blob: bytes) -> list[str]:
    """The files a header lists (DIRNAMES[DIRINDEXES[i]] + BASENAMES[i]), root-relative."""
    store, entries = _index(blob)
    found = {tag: (kind, offset, count) for tag, kind, offset, count in entries}
    if TAG_BASENAMES not in found:
        return []
    basenames = _strings(store, *found[TAG_BASENAMES])
    dirnames = _strings(store, *found.get(TAG_DIRNAMES, (TYPE_STRING_ARRAY, 0, 0)))
    indexes = _int32s(store, *found.get(TAG_DIRINDEXES, (TYPE_INT32, 0, 0)))
    if len(indexes) != len(basenames):
        raise HeaderError("DIRINDEXES and BASENAMES differ in length")
    paths = []
    for basename, index in zip(basenames, indexes, strict=True):
        if not 0 <= index < len(dirnames):
            raise HeaderError("a DIRINDEXES entry points outside DIRNAMES")
        paths.append((dirnames[index] + basename).lstrip("/"))
    return paths


def _strings(store: bytes, kind: int, offset: int, count: int) -> list[str]:
    if kind != TYPE_STRING_ARRAY or count > _MAX_FILES:
        raise HeaderError("unexpected file list")
    values = []
    for _ in range(count):
        end = store.find(b"\x00", offset, offset + 4096)
        if offset >= len(store) or end < 0:
            raise HeaderError("unterminated string in the file list")
        values.append(store[offset:end].decode("utf-8", errors="replace"))
        offset = end + 1
    return values


def _int32s(store: bytes, kind: int, offset: int, count: int) -> list[int]:
    if kind != TYPE_INT32 or count > _MAX_FILES or offset + 4 * count > len(store):
        raise HeaderError("unexpected file index list")
    return list(struct.unpack_from(f">{count}i", store, offset))


def _value(store: bytes, kind: int, offset: int) -> str | int:
    if kind == TYPE_INT32:
        if offset + 4 > len(store):
            raise HeaderError("integer outside the data store")
        value: int = struct.unpack_from(">i", store, offset)[0]
        return value
    if kind in (TYPE_STRING, TYPE_I18NSTRING):
        end = store.find(b"\x00", offset, offset + _MAX_STRING)
        if offset >= len(store) or end < 0:
            raise HeaderError("unterminated string")
        return store[offset:end].decode("utf-8", errors="replace")
    raise HeaderError(f"unexpected tag type {kind}")


def _package(tags: dict[int, str | int], path: str) -> Package | None:
    name, version, release = (tags.get(tag) for tag in (TAG_NAME, TAG_VERSION, TAG_RELEASE))
    if not (isinstance(name, str) and isinstance(version, str) and isinstance(release, str)):
        raise HeaderError("no NAME, VERSION or RELEASE")
    if not (name and version and release):
        raise HeaderError("empty NAME, VERSION or RELEASE")
    if name in _PSEUDO_PACKAGES:
        return None
    epoch = tags.get(TAG_EPOCH)
    prefix = f"{epoch}:" if isinstance(epoch, int) and epoch > 0 else ""
    arch = tags.get(TAG_ARCH)
    source = _source_rpm(tags.get(TAG_SOURCERPM))
    return Package(
        ecosystem=Ecosystem.RPM,
        name=name,
        version=f"{prefix}{version}-{release}",
        location=path,
        source_name=source[0] if source else name,
        # The source RPM shares the binary's epoch; its file name never carries one.
        source_version=f"{prefix}{source[1]}" if source else f"{prefix}{version}-{release}",
        arch=arch if isinstance(arch, str) and arch else None,
    )


def _source_rpm(value: str | int | None) -> tuple[str, str] | None:
    """`openssl-3.0.7-24.el9.src.rpm` → (`openssl`, `3.0.7-24.el9`)."""
    if not isinstance(value, str):
        return None
    stem = value.removesuffix(".rpm").removesuffix(".src").removesuffix(".nosrc")
    rest, _, release = stem.rpartition("-")
    name, _, version = rest.rpartition("-")
    if not (name and version and release):
        return None
    return name, f"{version}-{release}"
