"""Go build info: the module list that Go 1.18 and later embed in `.go.buildinfo`.

The section starts with a 32-byte header: the magic `\\xff Go buildinf:`, the pointer size and a
flags byte. With flag 2 set, the Go version and the module information follow as varint-prefixed
strings. The module information is text between two 16-byte sentinels, one record a line:
`path` (the main package), `mod` (the main module), `dep` (a dependency) and `=>` (a replacement
of the dependency before it). Older binaries hold pointers into the data segment instead, which
are not followed.
"""

from __future__ import annotations

import re
from typing import Final

from moorage.scanning.packages import Ecosystem, Package

MAGIC: Final = b"\xff Go buildinf:"
HEADER_SIZE: Final = 32
FLAG_INLINE: Final = 2
SENTINEL_SIZE: Final = 16
DEVEL_VERSION: Final = "(devel)"
STDLIB: Final = "stdlib"

_MAX_STRING_BYTES: Final = 4 * 1024 * 1024
_GO_VERSION: Final = re.compile(r"^go\d+(\.\d+)*[A-Za-z0-9.+-]*")
_MODULE_PATH: Final = re.compile(r"^[A-Za-z0-9._~/+!-]{1,512}$")
_VERSION: Final = re.compile(r"^v?[A-Za-z0-9._+~-]{1,128}$")


class BuildInfoError(ValueError):
    pass


def read_buildinfo(location: str, section: bytes) -> tuple[list[Package], list[str]]:
    """The packages a `.go.buildinfo` section records, and notes on what could not be read."""
    try:
        go_version, modinfo = parse_section(section)
    except BuildInfoError as error:
        return [], [f"unreadable Go build info: {error}"]
    packages, notes = parse_modinfo(location, modinfo)
    match = _GO_VERSION.match(go_version)
    if match:  # "go1.21.5 X:boringcrypto" carries experiments after the version
        packages.append(Package(Ecosystem.GO, STDLIB, match.group(0), location))
    else:
        notes.append(f"unrecognised Go version {go_version[:80]!r}")
    return packages, notes


def parse_section(section: bytes) -> tuple[str, str]:
    """The Go version and the module information text, sentinels removed."""
    if len(section) < HEADER_SIZE or not section.startswith(MAGIC):
        raise BuildInfoError("no build info header")
    flags = section[len(MAGIC) + 1]
    if not flags & FLAG_INLINE:
        raise BuildInfoError("unsupported Go build info format")
    version, offset = _string(section, HEADER_SIZE)
    modinfo, _ = _string(section, offset)
    # A binary built outside module mode records no modules, and no sentinels.
    framed = len(modinfo) >= 2 * SENTINEL_SIZE
    modinfo = modinfo[SENTINEL_SIZE:-SENTINEL_SIZE] if framed else b""
    return version.decode("utf-8", errors="replace"), modinfo.decode("utf-8", errors="replace")


def _string(data: bytes, offset: int) -> tuple[bytes, int]:
    length, offset = _uvarint(data, offset)
    if length > _MAX_STRING_BYTES or offset + length > len(data):
        raise BuildInfoError("string runs past the end of the section")
    return data[offset : offset + length], offset + length


def _uvarint(data: bytes, offset: int) -> tuple[int, int]:
    value = 0
    for shift in range(0, 64, 7):
        if offset >= len(data):
            raise BuildInfoError("truncated varint")
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, offset
    raise BuildInfoError("varint longer than 64 bits")


def parse_modinfo(location: str, text: str) -> tuple[list[Package], list[str]]:
    """Packages from `go version -m` style module lines; the last replacement of a dep wins."""
    modules: list[tuple[str, str]] = []  # main module first, then deps in order
    notes: list[str] = []
    main_index: int | None = None
    for line in text.splitlines():
        kind, _, rest = line.partition("\t")
        fields = rest.split("\t")
        if kind in ("mod", "dep"):
            if len(fields) < 2:
                notes.append(f"{kind} line without a version: {line[:120]!r}")
                modules.append(("", ""))  # a replacement after it must not land on another dep
                continue
            if kind == "mod":
                main_index = len(modules)
            modules.append((fields[0], fields[1]))
        elif kind == "=>":
            if not modules or not fields[0]:
                notes.append(f"replacement without a module: {line[:120]!r}")
                continue
            # A local directory replacement has a path and no version; it is dropped below.
            modules[-1] = (fields[0], fields[1] if len(fields) >= 2 else "")
    packages: list[Package] = []
    for index, (path, version) in enumerate(modules):
        if not path or not version:
            continue
        if index == main_index and version == DEVEL_VERSION:
            continue  # built from a checkout: no released version to match
        if not _MODULE_PATH.fullmatch(path) or not _VERSION.fullmatch(version):
            notes.append(f"skipped module {path[:120]!r} with version {version[:80]!r}")
            continue
        packages.append(Package(Ecosystem.GO, path, version, location))
    return packages, notes
