"""Java archives: jar, war, ear and par files, and the archives nested inside them.

Each archive is identified by its `META-INF/maven/<group>/<artifact>/pom.properties` (one per
Maven artifact it contains, so a shaded jar reports what it shades), or failing that by
`META-INF/MANIFEST.MF` and the file name (`log4j-core-2.14.1.jar`). Archives inside archives
(`BOOT-INF/lib/*.jar` in Spring Boot jars, `WEB-INF/lib/*.jar` in wars, modules of an ear) are
read from memory, recursively, down to a depth cap.

A zip is an easy bomb: a member's declared size can be huge while its compressed size is tiny,
and members can share compressed data. Every read is capped by the member's size, its
compression ratio and a budget for everything decompressed out of one top-level archive;
a member over a cap is skipped with a note, and an exhausted budget ends the archive.
"""

from __future__ import annotations

import io
import re
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Final

from moorage.scanning.layers import KIB, MIB
from moorage.scanning.packages import Ecosystem, FileFindings, Package

ARCHIVE_SUFFIXES: Final = (".jar", ".war", ".ear", ".par")
MANIFEST_PATH: Final = "META-INF/MANIFEST.MF"

_POM_PROPERTIES: Final = re.compile(r"^META-INF/maven/[^/]+/[^/]+/pom\.properties$")
_COORDINATE: Final = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}$")
_VERSION: Final = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}$")
_FILE_NAME: Final = re.compile(r"^(?P<name>[A-Za-z0-9_.-]+?)-(?P<version>\d[A-Za-z0-9_.+-]*)$")
_PROPERTY_SEPARATOR: Final = re.compile(r"\s*[=:]\s*|\s+")
_MAX_METADATA_BYTES: Final = 256 * KIB
# What zipfile raises on damaged or unsupported archives (RuntimeError: encrypted members,
# NotImplementedError: unknown compression methods).
_UNREADABLE: Final = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    OSError,
    EOFError,
    zlib.error,
    NotImplementedError,
    RuntimeError,
)
_END_OF_DIRECTORY: Final = b"PK\x05\x06"
_END_SEARCH_BYTES: Final = 22 + 65535  # the record and the longest comment
_ZIP64_LOCATOR: Final = b"PK\x06\x07"
_ZIP64_LOCATOR_SIZE: Final = 20
_ZIP64_END: Final = b"PK\x06\x06"
_ZIP64_END_SIZE: Final = 56
_RATIO_GRACE_BYTES: Final = 1 * MIB  # small members compress oddly well; not worth a note


@dataclass(frozen=True, slots=True)
class ArchiveLimits:
    max_depth: int = 4  # an ear holding a war holding a fat jar holding a jar
    # zipfile parses the whole central directory into objects ten times its size before any
    # entry count could be checked, so its size is checked first (about 100 bytes an entry).
    max_directory_bytes: int = 16 * MIB
    max_member_bytes: int = 64 * MIB  # one nested archive read into memory
    max_total_bytes: int = 512 * MIB  # everything decompressed out of one top-level archive
    max_ratio: int = 200  # declared size / compressed size of one member


class ArchiveBudgetExceeded(Exception):
    pass


@dataclass(slots=True)
class _Walk:
    limits: ArchiveLimits
    packages: dict[tuple[str, str, str], Package] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    decompressed: int = 0


def wants(path: str) -> bool:
    return path.lower().endswith(ARCHIVE_SUFFIXES)


def catalog(path: str, data: bytes, limits: ArchiveLimits | None = None) -> FileFindings:
    walk = _Walk(limits or ArchiveLimits())
    try:
        _archive(walk, path, data, depth=0)
    except ArchiveBudgetExceeded:
        walk.notes.append(
            f"stopped after {walk.limits.max_total_bytes} bytes decompressed from nested archives"
        )
    return FileFindings.of(path, walk.packages.values(), walk.notes)


def _archive(walk: _Walk, location: str, data: bytes, depth: int) -> None:
    directory_size = central_directory_size(data)
    if directory_size is not None and directory_size > walk.limits.max_directory_bytes:
        limit = walk.limits.max_directory_bytes
        walk.notes.append(f"{location}: central directory larger than {limit} bytes; not read")
        return
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
            _identify(walk, archive, members, location)
            for member in members:
                if member.filename.lower().endswith(ARCHIVE_SUFFIXES) and not member.is_dir():
                    _nested(walk, archive, member, location, depth)
    except _UNREADABLE as error:
        walk.notes.append(f"{location}: unreadable archive: {error}")


def central_directory_size(data: bytes) -> int | None:
    """The central directory size that zipfile will read, found the way zipfile finds it:
    the last end-of-directory record in the final 64 KiB, and a zip64 record just before it."""
    end = data.rfind(_END_OF_DIRECTORY, max(0, len(data) - _END_SEARCH_BYTES))
    if end < 0 or end + 22 > len(data):
        return None  # zipfile will refuse it
    size = int.from_bytes(data[end + 12 : end + 16], "little")
    zip64 = end - _ZIP64_LOCATOR_SIZE - _ZIP64_END_SIZE
    locator = data[end - _ZIP64_LOCATOR_SIZE : end - _ZIP64_LOCATOR_SIZE + 4]
    if zip64 >= 0 and locator == _ZIP64_LOCATOR and data[zip64 : zip64 + 4] == _ZIP64_END:
        size = int.from_bytes(data[zip64 + 40 : zip64 + 48], "little")
    return size


def _nested(
    walk: _Walk, archive: zipfile.ZipFile, member: zipfile.ZipInfo, location: str, depth: int
) -> None:
    inner = f"{location}!/{member.filename}"
    if depth + 1 > walk.limits.max_depth:
        walk.notes.append(f"{inner}: nested deeper than {walk.limits.max_depth}; not read")
        return
    data = _read(walk, archive, member, inner, walk.limits.max_member_bytes)
    if data is not None:
        _archive(walk, inner, data, depth + 1)


def _read(
    walk: _Walk, archive: zipfile.ZipFile, member: zipfile.ZipInfo, where: str, cap: int
) -> bytes | None:
    """A member's content, or None (with a note) when a cap says not to read it."""
    limits = walk.limits
    if member.file_size > cap:
        walk.notes.append(f"{where}: larger than {cap} bytes; not read")
        return None
    ratio = member.file_size / max(member.compress_size, 1)
    if member.file_size > _RATIO_GRACE_BYTES and ratio > limits.max_ratio:
        walk.notes.append(f"{where}: compression ratio over {limits.max_ratio}:1; not read")
        return None
    if walk.decompressed + member.file_size > limits.max_total_bytes:
        raise ArchiveBudgetExceeded
    walk.decompressed += member.file_size
    try:
        with archive.open(member) as content:
            return content.read(cap)  # zipfile stops at the declared size and checks the CRC
    except _UNREADABLE as error:
        walk.notes.append(f"{where}: unreadable: {error}")
        return None


def _identify(
    walk: _Walk, archive: zipfile.ZipFile, members: list[zipfile.ZipInfo], location: str
) -> None:
    found = False
    for member in members:
        if _POM_PROPERTIES.fullmatch(member.filename):
            data = _read(
                walk, archive, member, f"{location}!/{member.filename}", _MAX_METADATA_BYTES
            )
            package = _from_pom_properties(data, location) if data is not None else None
            if package is not None:
                walk.packages[(package.name, package.version, location)] = package
                found = True
    if found:
        return
    manifest_member = next((m for m in members if m.filename == MANIFEST_PATH), None)
    manifest = None
    if manifest_member is not None:
        manifest = _read(walk, archive, manifest_member, location, _MAX_METADATA_BYTES)
    package = _from_manifest(manifest or b"", location)
    if package is not None:
        walk.packages[(package.name, package.version, location)] = package


def _from_pom_properties(data: bytes, location: str) -> Package | None:
    properties = parse_properties(data.decode("utf-8", errors="replace"))
    group = properties.get("groupId", "")
    artifact = properties.get("artifactId", "")
    version = properties.get("version", "")
    if not (_COORDINATE.fullmatch(group) and _COORDINATE.fullmatch(artifact)):
        return None
    if not _VERSION.fullmatch(version):
        return None  # an unresolved ${...} or an empty version identifies nothing
    return Package(Ecosystem.MAVEN, f"{group}:{artifact}", version, location=location)


def _from_manifest(data: bytes, location: str) -> Package | None:
    """Name from the file name (or Bundle-SymbolicName); group only from Implementation-Vendor-Id,
    the one manifest field the Maven archiver fills with the groupId."""
    attributes = parse_manifest(data.decode("utf-8", errors="replace"))
    stem = PurePosixPath(location.rpartition("!/")[2]).stem
    from_name = _FILE_NAME.fullmatch(stem)
    artifact = from_name["name"] if from_name else stem
    if not _COORDINATE.fullmatch(artifact):
        artifact = attributes.get("Bundle-SymbolicName", "").split(";")[0].strip()
    version = next(
        (
            candidate
            for candidate in (
                attributes.get("Implementation-Version"),
                attributes.get("Bundle-Version"),
                from_name["version"] if from_name else None,
                attributes.get("Specification-Version"),
            )
            if candidate and _VERSION.fullmatch(candidate)
        ),
        None,
    )
    if version is None or not _COORDINATE.fullmatch(artifact):
        return None
    group = attributes.get("Implementation-Vendor-Id", "")
    name = f"{group}:{artifact}" if _COORDINATE.fullmatch(group) else artifact
    return Package(Ecosystem.MAVEN, name, version, location=location)


def parse_properties(text: str) -> dict[str, str]:
    """Java .properties, as far as pom.properties uses it: `key=value` lines and comments."""
    properties: dict[str, str] = {}
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if not line or line.startswith(("#", "!")):
            continue
        key, *value = _PROPERTY_SEPARATOR.split(line, maxsplit=1)
        properties.setdefault(key, value[0].strip() if value else "")
    return properties


def parse_manifest(text: str) -> dict[str, str]:
    """The main section of a jar manifest; lines are wrapped at 72 bytes with a leading space."""
    attributes: dict[str, str] = {}
    key = None
    for line in text.splitlines():
        if not line:
            break  # the end of the main section
        if line.startswith(" ") and key is not None:
            attributes[key] += line[1:]
            continue
        key, separator, value = line.partition(":")
        if not separator:
            key = None
            continue
        key = key.strip()
        attributes[key] = value.strip()
    return attributes
