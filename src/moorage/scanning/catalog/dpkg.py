"""Debian packages: dpkg's `status` database and distroless `status.d/` files.

Both are RFC 822-style stanzas separated by blank lines. distroless images have no `status`;
each package has its own file in `status.d/` (next to a `<name>.md5sums` that is not a stanza).
A package whose `Status` says only its configuration files remain is not installed. `Source:`
names the source package, optionally with its version in parentheses when it differs from the
binary's (`Source: gcc-12 (12.2.0-14)` on `cpp-12 12.2.0-14+deb12u1`); vulnerability feeds key on
the source. A malformed stanza is skipped with a note and the rest of the database still counts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final

from moorage.scanning.packages import Ecosystem, FileFindings, OwnedFile, Package

STATUS_PATH: Final = "var/lib/dpkg/status"
STATUS_DIR: Final = "var/lib/dpkg/status.d/"
INFO_DIR: Final = "var/lib/dpkg/info/"  # <package>[:<arch>].list: the files each one installed
MAX_OWNED_PATHS: Final = 200_000  # per file list; a package listing more is cut off with a note

_NAME: Final = re.compile(r"^[a-z0-9][a-z0-9+.-]*$")  # Debian policy 5.6.1
_VERSION: Final = re.compile(r"^(?:[0-9]+:)?[A-Za-z0-9][A-Za-z0-9.+~:-]*$")
_ARCH: Final = re.compile(r"^[a-z0-9-]+$")
_SOURCE: Final = re.compile(r"^(?P<name>\S+)(?:\s+\((?P<version>[^()\s]+)\))?$")
_FIELD: Final = re.compile(r"^(?P<key>[!-9;-~]+):[ \t]*(?P<value>.*)$")  # deb-control(5)
# dpkg states in which the package's files are (at least partly) on disk.
_STATES_WITH_FILES: Final = frozenset(
    (
        "installed",
        "unpacked",
        "half-installed",
        "half-configured",
        "triggers-awaited",
        "triggers-pending",
    )
)
_MAX_FIELD_LENGTH: Final = 256


@dataclass(frozen=True, slots=True)
class Stanza:
    line: int  # where it starts, for notes
    fields: dict[str, str] | None  # None when the stanza is not well formed


class StanzaError(ValueError):
    pass


def wants(path: str) -> bool:
    if path == STATUS_PATH:
        return True
    listed = path.removeprefix(INFO_DIR)
    if listed != path:
        return "/" not in listed and listed.endswith(".list") and len(listed) > len(".list")
    name = path.removeprefix(STATUS_DIR)
    return name != path and bool(name) and "/" not in name


def catalog(path: str, data: bytes) -> FileFindings:
    if path.startswith(INFO_DIR):
        return catalog_file_list(path, data)
    if path.endswith(".md5sums"):
        return catalog_md5sums(path, data)
    packages: list[Package] = []
    notes: list[str] = []
    for stanza in parse_stanzas(data.decode("utf-8", errors="replace")):
        if stanza.fields is None:
            notes.append(f"line {stanza.line}: malformed stanza skipped")
            continue
        try:
            package = _package(stanza.fields, path)
        except StanzaError as error:
            notes.append(f"line {stanza.line}: {error}; stanza skipped")
            continue
        if package is not None:
            packages.append(package)
    return FileFindings.of(path, packages, notes)


def catalog_file_list(path: str, data: bytes) -> FileFindings:
    """`info/<package>[:<arch>].list`: one absolute path per line, files and directories."""
    owner = path.removeprefix(INFO_DIR).removesuffix(".list").partition(":")[0]
    if not _NAME.fullmatch(owner):
        return FileFindings.of(path, notes=[f"file list of an invalid package name {owner[:64]!r}"])
    lines = data.decode("utf-8", errors="replace").splitlines()
    return _owned_paths(path, owner, (line.strip() for line in lines))


def catalog_md5sums(path: str, data: bytes) -> FileFindings:
    """distroless `status.d/<package>.md5sums`: `<md5>  <path>` per installed file."""
    owner = path.removeprefix(STATUS_DIR).removesuffix(".md5sums")
    if not _NAME.fullmatch(owner):
        return FileFindings.of(path, notes=[f"checksums of an invalid package name {owner[:64]!r}"])
    lines = data.decode("utf-8", errors="replace").splitlines()
    return _owned_paths(path, owner, (line.partition("  ")[2].strip() for line in lines))


def _owned_paths(path: str, owner: str, listed: Iterable[str]) -> FileFindings:
    owned: list[OwnedFile] = []
    notes: list[str] = []
    for item in listed:
        relative = item.lstrip("/")
        if not relative or relative == ".":
            continue
        if len(owned) >= MAX_OWNED_PATHS:
            notes.append(f"more than {MAX_OWNED_PATHS} files listed; the rest not read")
            break
        owned.append(OwnedFile(relative, owner))
    # The list names directories too; a directory is the parent of another entry.
    parents = {item.path.rpartition("/")[0] for item in owned}
    files = [item for item in owned if item.path not in parents]
    return FileFindings.of(path, notes=notes, owned=files)


def parse_stanzas(text: str) -> Iterator[Stanza]:
    """deb-control(5) paragraphs; field names are case-insensitive, so they are title-cased."""
    for line, lines in paragraphs(text):
        yield Stanza(line, _fields(lines))


def paragraphs(text: str) -> Iterator[tuple[int, list[str]]]:
    """Runs of non-blank lines, with the line number each starts at."""
    start, lines = 0, list[str]()
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            if not lines:
                start = number
            lines.append(line)
        elif lines:
            yield start, lines
            lines = []
    if lines:
        yield start, lines


def _fields(lines: list[str]) -> dict[str, str] | None:
    fields: dict[str, str] = {}
    key = None
    for line in lines:
        if line[0] in " \t":
            if key is None:
                return None  # a continuation with nothing to continue
            continue  # only single-line fields are used; folded ones are descriptions
        match = _FIELD.match(line)
        if match is None:
            return None
        key = match["key"].title()
        fields[key] = match["value"].strip()
    return fields


def _package(fields: dict[str, str], path: str) -> Package | None:
    if not _has_files_on_disk(fields.get("Status")):
        return None
    name = _required(fields, "Package", _NAME)
    version = _required(fields, "Version", _VERSION)
    arch = fields.get("Architecture")
    if arch is not None and not _ARCH.fullmatch(arch):
        raise StanzaError(f"invalid Architecture {arch[:64]!r}")
    source_name, source_version = _source(fields.get("Source"), name, version)
    return Package(
        ecosystem=Ecosystem.DEBIAN,
        name=name,
        version=version,
        location=path,
        source_name=source_name,
        source_version=source_version,
        arch=arch,
    )


def _has_files_on_disk(status: str | None) -> bool:
    if status is None:
        return True  # distroless status.d files carry no Status
    words = status.split()
    if len(words) != 3:
        raise StanzaError(f"invalid Status {status[:64]!r}")
    return words[2] in _STATES_WITH_FILES


def _required(fields: dict[str, str], key: str, pattern: re.Pattern[str]) -> str:
    value = fields.get(key)
    if value is None:
        raise StanzaError(f"no {key}")
    if len(value) > _MAX_FIELD_LENGTH or not pattern.fullmatch(value):
        raise StanzaError(f"invalid {key} {value[:64]!r}")
    return value


def _source(field: str | None, name: str, version: str) -> tuple[str, str]:
    """The source package and its version; both default to the binary package's."""
    if field is None:
        return name, version
    match = _SOURCE.fullmatch(field)
    if match is None or not _NAME.fullmatch(match["name"]):
        raise StanzaError(f"invalid Source {field[:64]!r}")
    source_version = match["version"]
    if source_version is not None and not _VERSION.fullmatch(source_version):
        raise StanzaError(f"invalid Source version {source_version[:64]!r}")
    return match["name"], source_version or version
