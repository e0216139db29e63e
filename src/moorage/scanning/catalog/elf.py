"""ELF executables: the sections that Go build info and cargo-auditable metadata live in.

Binaries can be anywhere in an image and carry no telling name, so `wants` takes extensionless
files outside the places that hold data rather than programs; `catalog` then keeps only files
with the ELF magic and hands their `.go.buildinfo` and `.dep-v0` sections to the Go and Rust
readers. Only the section headers are trusted, and every offset is checked against the file.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from moorage.scanning.catalog import cargo_auditable, gobinary
from moorage.scanning.packages import FileFindings, Package

ELF_MAGIC: Final = b"\x7fELF"
GO_SECTION: Final = ".go.buildinfo"
CARGO_SECTION: Final = ".dep-v0"
WANTED_SECTIONS: Final = frozenset({GO_SECTION, CARGO_SECTION})

_SHT_NOBITS: Final = 8
_SHF_COMPRESSED: Final = 0x800
_SHN_XINDEX: Final = 0xFFFF
_MAX_SECTIONS: Final = 65536
_MAX_SECTION_NAME: Final = 256

# Directories that hold data, documentation or package databases, not executables.
_NOT_PROGRAMS: Final = (
    "usr/share/",
    "usr/include/",
    "usr/lib/python",
    "usr/local/lib/python",
    "etc/",
    "var/",
    "proc/",
    "sys/",
    "dev/",
    "run/",
    "tmp/",
)
_DOCUMENT_NAMES: Final = frozenset(
    {
        "license",
        "licence",
        "copying",
        "notice",
        "readme",
        "authors",
        "changelog",
        "changes",
        "makefile",
        "dockerfile",
        "version",
        "patents",
        "contributors",
    }
)


class ElfError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class _Layout:
    endian: str  # struct byte-order prefix
    is64: bool


def wants(path: str) -> bool:
    directory, _, base = path.rpartition("/")
    if not base or "." in base or base.lower() in _DOCUMENT_NAMES:
        return False
    if "/node_modules/" in f"/{directory}/":
        return False
    return not (directory + "/").startswith(_NOT_PROGRAMS)


def is_elf(data: bytes) -> bool:
    return data[:4] == ELF_MAGIC


def catalog(path: str, data: bytes) -> FileFindings:
    if not is_elf(data):
        return FileFindings.of(path)
    try:
        found = sections(data, WANTED_SECTIONS)
    except ElfError as error:
        return FileFindings.of(path, notes=[f"malformed ELF file: {error}"])
    packages: list[Package] = []
    notes: list[str] = []
    for name, reader in (
        (GO_SECTION, gobinary.read_buildinfo),
        (CARGO_SECTION, cargo_auditable.read_section),
    ):
        content = found.get(name)
        if content is None:
            continue
        if isinstance(content, str):
            notes.append(f"{name}: {content}")
            continue
        section_packages, section_notes = reader(path, content)
        packages.extend(section_packages)
        notes.extend(section_notes)
    return FileFindings.of(path, packages, notes)


def sections(data: bytes, names: frozenset[str]) -> Mapping[str, bytes | str]:
    """The named sections' contents, or a reason each cannot be read; raises ElfError when the
    headers themselves are malformed."""
    layout = _layout(data)
    if layout.is64:
        shoff, shentsize, shnum, shstrndx = _unpack(layout, "Q10xHHH", data, 0x28)
        header_size, header_format = 64, "IIQQQQIIQQ"
    else:
        shoff, shentsize, shnum, shstrndx = _unpack(layout, "I10xHHH", data, 0x20)
        header_size, header_format = 40, "IIIIIIIIII"
    if shoff == 0:
        return {}  # no section headers (stripped with sstrip, or never written)
    if shentsize < header_size:
        raise ElfError(f"section header size {shentsize} is too small")

    def header(index: int) -> tuple[int, ...]:
        return _unpack(layout, header_format, data, shoff + index * shentsize)

    first = header(0)
    if shnum == 0:
        shnum = first[5]  # more than 0xff00 sections: the count is in section 0's size
    if shstrndx == _SHN_XINDEX:
        shstrndx = first[6]
    if shnum > _MAX_SECTIONS or shoff + shnum * shentsize > len(data):
        raise ElfError("section headers run past the end of the file")
    if shstrndx >= shnum:
        raise ElfError("section name table index out of range")
    string_table = _content(data, header(shstrndx))
    if isinstance(string_table, str):
        raise ElfError(f"section name table: {string_table}")
    found: dict[str, bytes | str] = {}
    for index in range(shnum):
        fields = header(index)
        name = _name(string_table, fields[0])
        if name in names and name not in found:
            found[name] = _content(data, fields)
    return found


def _layout(data: bytes) -> _Layout:
    if len(data) < 0x40:
        raise ElfError("file too short for an ELF header")
    elf_class, encoding = data[4], data[5]
    if elf_class not in (1, 2) or encoding not in (1, 2):
        raise ElfError(f"unknown ELF class {elf_class} or data encoding {encoding}")
    return _Layout("<" if encoding == 1 else ">", elf_class == 2)


def _unpack(layout: _Layout, fmt: str, data: bytes, offset: int) -> tuple[int, ...]:
    full = layout.endian + fmt
    if offset < 0 or offset + struct.calcsize(full) > len(data):
        raise ElfError(f"header at offset {offset} is past the end of the file")
    return struct.unpack_from(full, data, offset)


def _content(data: bytes, fields: tuple[int, ...]) -> bytes | str:
    section_type, flags, offset, size = fields[1], fields[2], fields[4], fields[5]
    if section_type == _SHT_NOBITS:
        return "section has no content in the file"
    if flags & _SHF_COMPRESSED:
        return "compressed sections are not supported"
    if offset + size > len(data):
        return "section runs past the end of the file"
    return data[offset : offset + size]


def _name(string_table: bytes, offset: int) -> str | None:
    if offset >= len(string_table):
        return None
    end = string_table.find(b"\0", offset, offset + _MAX_SECTION_NAME)
    if end < 0:
        return None
    return string_table[offset:end].decode("ascii", errors="replace")
