"""Binary catalogers: Go build info and cargo-auditable data in ELF files, and Cargo.lock."""

from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
import tarfile
import zlib
from collections.abc import Mapping
from pathlib import Path

import pytest

from moorage.scanning.catalog import cargo_auditable, catalog_layer, elf, gobinary
from moorage.scanning.packages import Ecosystem, FileFindings, LayerInventory, Package

OBJCOPY = shutil.which("objcopy")
needs_objcopy = pytest.mark.tools("objcopy")

SENTINEL_START = bytes.fromhex("3077af0c9274080241e1c107e6d618e6")
SENTINEL_END = bytes.fromhex("f932433186182072008242104116d8f2")
MAX_AUDIT_JSON_BYTES = 8 * 1024 * 1024  # the cap on a binary's cargo-auditable section


def uvarint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def go_buildinfo(go_version: str, modinfo: str, flags: int = 2) -> bytes:
    header = gobinary.MAGIC + bytes([8, flags])
    header += b"\0" * (gobinary.HEADER_SIZE - len(header))
    framed = SENTINEL_START + modinfo.encode() + SENTINEL_END
    body = uvarint(len(go_version)) + go_version.encode() + uvarint(len(framed)) + framed
    return header + body


MODINFO = (
    "path\texample.com/server/cmd/server\n"
    "mod\texample.com/server\tv1.4.0\th1:abc=\n"
    "dep\tgolang.org/x/net\tv0.17.0\th1:net=\n"
    "dep\tgithub.com/old/yaml\tv2.0.0\th1:old=\n"
    "=>\tgithub.com/fork/yaml\tv2.0.1-fixed\th1:fork=\n"
    "dep\texample.com/local\tv0.0.0\n"
    "=>\t../local\n"
    "build\t-compiler=gc\n"
)


def cargo_dep_v0(packages: list[dict[str, object]]) -> bytes:
    return zlib.compress(json.dumps({"packages": packages}).encode())


RUST_PACKAGES: list[dict[str, object]] = [
    {"name": "myapp", "version": "0.1.0", "source": "local", "root": True, "dependencies": [1]},
    {"name": "serde", "version": "1.0.193", "source": "crates.io", "dependencies": []},
    {"name": "private", "version": "2.0.0", "source": "git", "dependencies": []},
    {"name": "time", "version": "0.1.45", "source": "crates.io", "kind": "build"},
]


def elf_with_sections(tmp_path: Path, sections: Mapping[str, bytes]) -> bytes:
    assert OBJCOPY is not None
    source = tmp_path / "input"
    shutil.copyfile("/bin/true", source)
    args = [OBJCOPY]
    for index, (name, content) in enumerate(sections.items()):
        payload = tmp_path / f"section{index}"
        payload.write_bytes(content)
        args += [f"--add-section={name}={payload}", f"--set-section-flags={name}=alloc,readonly"]
    output = tmp_path / "output"
    subprocess.run([*args, str(source), str(output)], check=True, capture_output=True)
    return output.read_bytes()


def layer(files: Mapping[str, bytes]) -> LayerInventory:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755
            archive.addfile(info, io.BytesIO(data))
    return catalog_layer(io.BytesIO(buffer.getvalue()))


def findings(inventory: LayerInventory, path: str) -> FileFindings:
    return next(f for f in inventory.files if f.path == path)


def named(found: FileFindings) -> set[tuple[Ecosystem, str, str]]:
    return {(p.ecosystem, p.name, p.version) for p in found.packages}


@needs_objcopy
def test_go_binary_modules_replacements_and_stdlib(tmp_path: Path) -> None:
    binary = elf_with_sections(tmp_path, {".go.buildinfo": go_buildinfo("go1.21.5", MODINFO)})
    found = findings(layer({"usr/local/bin/server": binary}), "usr/local/bin/server")
    assert named(found) == {
        (Ecosystem.GO, "example.com/server", "v1.4.0"),
        (Ecosystem.GO, "golang.org/x/net", "v0.17.0"),
        (Ecosystem.GO, "github.com/fork/yaml", "v2.0.1-fixed"),
        (Ecosystem.GO, "stdlib", "go1.21.5"),
    }
    assert found.notes == ()
    net = next(p for p in found.packages if p.name == "golang.org/x/net")
    assert net.purl == "pkg:golang/golang.org/x/net@v0.17.0"
    assert net.location == "usr/local/bin/server"


@needs_objcopy
def test_devel_main_module_is_left_out(tmp_path: Path) -> None:
    modinfo = "path\tapp\nmod\tapp\t(devel)\t\ndep\tgithub.com/pkg/errors\tv0.9.1\th1:x=\n"
    binary = elf_with_sections(tmp_path, {".go.buildinfo": go_buildinfo("go1.22.0", modinfo)})
    found = findings(layer({"app": binary}), "app")
    assert named(found) == {
        (Ecosystem.GO, "github.com/pkg/errors", "v0.9.1"),
        (Ecosystem.GO, "stdlib", "go1.22.0"),
    }


@pytest.mark.parametrize(
    ("section", "note"),
    [
        (gobinary.MAGIC + bytes([8, 2]) + b"\0" * 16 + b"\xff\xff", "truncated varint"),
        (gobinary.MAGIC + bytes([8, 2]) + b"\0" * 16 + b"\x7fgo1", "past the end"),
        (gobinary.MAGIC + bytes([8, 0]) + b"\0" * 32, "unsupported Go build info format"),
        (b"not build info at all" * 3, "no build info header"),
    ],
)
def test_malformed_go_build_info_is_a_note(section: bytes, note: str) -> None:
    packages, notes = gobinary.read_buildinfo("bin/x", section)
    assert packages == []
    assert len(notes) == 1
    assert note in notes[0]


@needs_objcopy
def test_truncated_go_build_info_through_a_layer(tmp_path: Path) -> None:
    truncated = go_buildinfo("go1.21.5", MODINFO)[:40]
    binary = elf_with_sections(tmp_path, {".go.buildinfo": truncated})
    found = findings(layer({"bin/server": binary}), "bin/server")
    assert found.packages == ()
    assert found.notes
    assert "unreadable Go build info" in found.notes[0]


@needs_objcopy
def test_cargo_auditable_section(tmp_path: Path) -> None:
    binary = elf_with_sections(tmp_path, {".dep-v0": cargo_dep_v0(RUST_PACKAGES)})
    found = findings(layer({"usr/bin/myapp": binary}), "usr/bin/myapp")
    assert named(found) == {
        (Ecosystem.CRATES_IO, "serde", "1.0.193"),
        (Ecosystem.CRATES_IO, "time", "0.1.45"),
    }
    assert {p.purl for p in found.packages} == {
        "pkg:cargo/serde@1.0.193",
        "pkg:cargo/time@0.1.45",
    }


@needs_objcopy
def test_binary_with_both_sections(tmp_path: Path) -> None:
    binary = elf_with_sections(
        tmp_path,
        {
            ".go.buildinfo": go_buildinfo("go1.21.5", MODINFO),
            ".dep-v0": cargo_dep_v0(RUST_PACKAGES),
        },
    )
    found = findings(layer({"opt/tool": binary}), "opt/tool")
    ecosystems = {p.ecosystem for p in found.packages}
    assert ecosystems == {Ecosystem.GO, Ecosystem.CRATES_IO}


def bomb() -> bytes:
    compressor = zlib.compressobj(9)
    chunk = b" " * (1024 * 1024)
    data = compressor.compress(b'{"packages": [')
    for _ in range(MAX_AUDIT_JSON_BYTES // len(chunk) + 2):
        data += compressor.compress(chunk)
    return data + compressor.compress(b"]}") + compressor.flush()


@pytest.mark.parametrize(
    ("section", "note"),
    [
        (b"definitely not zlib", "unreadable cargo-auditable data"),
        (zlib.compress(b"{not json"), "unreadable cargo-auditable data"),
        (zlib.compress(b"[" * 100_000 + b"]" * 100_000), "unreadable cargo-auditable data"),
        (zlib.compress(b'{"packages": 3}'), "no package list"),
        (bomb(), "larger than"),
    ],
)
def test_malformed_cargo_auditable_is_a_note(section: bytes, note: str) -> None:
    packages, notes = cargo_auditable.read_section("bin/x", section)
    assert packages == []
    assert len(notes) == 1
    assert note in notes[0]


@needs_objcopy
def test_cargo_bomb_through_a_layer(tmp_path: Path) -> None:
    binary = elf_with_sections(tmp_path, {".dep-v0": bomb()})
    found = findings(layer({"bin/bomb": binary}), "bin/bomb")
    assert found.packages == ()
    assert found.notes
    assert "larger than" in found.notes[0]


def test_non_elf_file_named_like_a_binary_is_ignored() -> None:
    script = b"#!/bin/sh\n" + gobinary.MAGIC + b"echo .dep-v0\n"
    found = findings(layer({"usr/local/bin/server": script}), "usr/local/bin/server")
    assert found.packages == ()
    assert found.notes == ()


@pytest.mark.parametrize(
    "path",
    ["usr/share/doc/foo/copyright", "etc/hostname", "app/node_modules/x/bin/cli", "LICENSE"],
)
def test_data_paths_are_not_wanted(path: str) -> None:
    assert not elf.wants(path)


@pytest.mark.parametrize("path", ["usr/bin/kubectl", "manager", "ko-app/server", "opt/x/run"])
def test_program_paths_are_wanted(path: str) -> None:
    assert elf.wants(path)


def minimal_elf(is64: bool, big_endian: bool, shoff: int, shnum: int, shstrndx: int) -> bytes:
    order = ">" if big_endian else "<"
    ident = b"\x7fELF" + bytes([2 if is64 else 1, 2 if big_endian else 1, 1]) + b"\0" * 9
    if is64:
        header = ident + struct.pack(
            order + "HHIQQQIHHHHHH", 2, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64, shnum, shstrndx
        )
    else:
        header = ident + struct.pack(
            order + "HHIIIIIHHHHHH", 2, 3, 1, 0, 0, shoff, 0, 52, 0, 0, 40, shnum, shstrndx
        )
    return header.ljust(64, b"\0")


def build_elf(is64: bool, big_endian: bool, section: bytes) -> bytes:
    """A section-only ELF file: null section, .shstrtab and .go.buildinfo."""
    order = ">" if big_endian else "<"
    names = b"\0.shstrtab\0.go.buildinfo\0"
    names_at = 64
    section_at = names_at + len(names)
    shoff = section_at + len(section)
    fmt = order + ("IIQQQQIIQQ" if is64 else "IIIIIIIIII")
    headers = struct.pack(fmt, *[0] * 10)
    headers += struct.pack(fmt, 1, 3, 0, 0, names_at, len(names), 0, 0, 1, 0)
    headers += struct.pack(fmt, 11, 1, 2, 0, section_at, len(section), 0, 0, 16, 0)
    head = minimal_elf(is64, big_endian, shoff, 3, 1)
    return head + names + section + headers


@pytest.mark.parametrize("is64", [True, False])
@pytest.mark.parametrize("big_endian", [True, False])
def test_hand_built_elf_layouts(is64: bool, big_endian: bool) -> None:
    data = build_elf(is64, big_endian, go_buildinfo("go1.20.1", MODINFO))
    found = elf.catalog("bin/x", data)
    assert (Ecosystem.GO, "stdlib", "go1.20.1") in named(found)


@pytest.mark.parametrize(
    ("data", "note"),
    [
        (minimal_elf(True, False, 1 << 40, 3, 1), "past the end"),
        (minimal_elf(True, False, 64, 60000, 1), "past the end"),
        (minimal_elf(False, True, 0x40, 1, 5) + b"\0" * 40, "out of range"),
        (b"\x7fELF\x09\x01" + b"\0" * 80, "unknown ELF class"),
        (b"\x7fELF\x02\x01", "too short"),
    ],
    ids=["offset", "count", "name-table", "class", "short"],
)
def test_malformed_elf_headers_are_a_note(data: bytes, note: str) -> None:
    found = elf.catalog("bin/x", data)
    assert found.packages == ()
    assert len(found.notes) == 1
    assert note in found.notes[0]


def test_section_past_the_end_is_a_note() -> None:
    data = bytearray(build_elf(True, False, go_buildinfo("go1.20.1", MODINFO)))
    size_field = len(data) - 64 + 32  # sh_size of the last section header
    data[size_field : size_field + 8] = struct.pack("<Q", 1 << 40)
    found = elf.catalog("bin/x", bytes(data))
    assert found.packages == ()
    assert found.notes == (".go.buildinfo: section runs past the end of the file",)


CARGO_LOCK = b"""# This file is automatically @generated by Cargo.
version = 3

[[package]]
name = "myapp"
version = "0.1.0"
dependencies = ["serde"]

[[package]]
name = "serde"
version = "1.0.193"
source = "registry+https://github.com/rust-lang/crates.io-index"
checksum = "25dd9975e68d0cb5aa1120c288333fc98731bd1dd12f561e468ea4728c042b89"

[[package]]
name = "regex"
version = "1.10.2"
source = "sparse+https://index.crates.io/"

[[package]]
name = "forked"
version = "0.3.0"
source = "git+https://example.com/forked.git#abc"
"""


def test_cargo_lock() -> None:
    path = "src/app/Cargo.lock"
    found = findings(layer({path: CARGO_LOCK}), path)
    assert found.packages == (
        Package(Ecosystem.CRATES_IO, "serde", "1.0.193", path),
        Package(Ecosystem.CRATES_IO, "regex", "1.10.2", path),
    )


@pytest.mark.parametrize("content", [b"[[package]\nname=", b"\xff\xfe", b"package = 3\n"])
def test_malformed_cargo_lock_is_a_note(content: bytes) -> None:
    found = cargo_auditable.catalog_lock("Cargo.lock", content)
    assert found.packages == ()
    assert len(found.notes) == 1
