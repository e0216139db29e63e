"""Alpine packages: apk's `lib/apk/db/installed`.

One stanza per package, separated by blank lines; each line is a one-letter, case-sensitive key,
a colon and a value: `P:` name, `V:` version, `A:` arch, `o:` origin (the source package, which
is what the Alpine secdb and OSV name). Versions are kept verbatim (`2.4_git20230717-r0`); how
they compare is the matcher's business. A malformed stanza is skipped with a note.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Final

from moorage.scanning.catalog.dpkg import paragraphs
from moorage.scanning.packages import Ecosystem, FileFindings, OwnedFile, Package

INSTALLED_PATH: Final = "lib/apk/db/installed"

_LINE: Final = re.compile(r"^(?P<key>[A-Za-z]):(?P<value>.*)$")
_NAME: Final = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,254}$")
_VERSION: Final = re.compile(r"^[0-9][A-Za-z0-9._+~-]{0,127}$")
_ARCH: Final = re.compile(r"^[a-z0-9_]{1,32}$")


class StanzaError(ValueError):
    pass


def wants(path: str) -> bool:
    return path == INSTALLED_PATH


def catalog(path: str, data: bytes) -> FileFindings:
    packages: list[Package] = []
    notes: list[str] = []
    owned: list[OwnedFile] = []
    for line, lines in paragraphs(data.decode("utf-8", errors="replace")):
        try:
            package = _package(_fields(lines), path)
        except StanzaError as error:
            notes.append(f"line {line}: {error}; stanza skipped")
            continue
        packages.append(package)
        owned.extend(_files(lines, package.name))
    return FileFindings.of(path, packages, notes, owned=owned)


def _files(lines: list[str], owner: str) -> Iterator[OwnedFile]:
    """`F:` names a directory, the `R:` lines after it the files the package put there."""
    directory = ""
    for line in lines:
        if line.startswith("F:"):
            directory = line[2:].strip().strip("/")
        elif line.startswith("R:"):
            name = line[2:].strip()
            if name:
                yield OwnedFile(f"{directory}/{name}" if directory else name, owner)


def _fields(lines: list[str]) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in lines:
        match = _LINE.match(line)
        if match is None:
            raise StanzaError(f"malformed line {line[:64]!r}")
        fields.setdefault(match["key"], match["value"])  # F:/R: repeat; P, V, A, o do not
    return fields


def _package(fields: dict[str, str], path: str) -> Package:
    name = _required(fields, "P", "name", _NAME)
    version = _required(fields, "V", "version", _VERSION)
    arch = fields.get("A")
    if arch is not None and not _ARCH.fullmatch(arch):
        raise StanzaError(f"invalid arch {arch[:64]!r}")
    origin = fields.get("o", name)
    if not _NAME.fullmatch(origin):
        raise StanzaError(f"invalid origin {origin[:64]!r}")
    return Package(
        ecosystem=Ecosystem.ALPINE,
        name=name,
        version=version,
        location=path,
        source_name=origin,
        source_version=version,  # an aport builds all its subpackages at one version
        arch=arch,
    )


def _required(fields: dict[str, str], key: str, label: str, pattern: re.Pattern[str]) -> str:
    value = fields.get(key)
    if value is None:
        raise StanzaError(f"no {label} ({key}:)")
    if not pattern.fullmatch(value):
        raise StanzaError(f"invalid {label} {value[:64]!r}")
    return value
