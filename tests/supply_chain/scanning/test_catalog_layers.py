"""Streaming layer blobs: compression detection, whiteout markers, the diff_id, and every cap."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from collections.abc import Callable, Mapping

import pytest
import zstandard

from moorage.scanning.layers import (
    Compression,
    FileRead,
    FileSkipped,
    HardLink,
    LayerError,
    LayerEvent,
    LayerLimits,
    LayerWalk,
    NonRegular,
    OpaqueDir,
    Whiteout,
    detect_compression,
    normalise_path,
)

MIB = 1024 * 1024
GIB = 1024 * MIB
OS_RELEASE = b'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n'


def tar_layer(files: Mapping[str, bytes], symlinks: Mapping[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for name, target in (symlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            archive.addfile(info)
    return buffer.getvalue()


def compress(raw: bytes, compression: Compression) -> bytes:
    if compression is Compression.GZIP:
        return gzip.compress(raw)
    if compression is Compression.ZSTD:
        return zstandard.ZstdCompressor().compress(raw)
    return raw


def walk(
    blob: bytes, wanted: Callable[[str], bool] = lambda _: True, **limits: int
) -> tuple[list[LayerEvent], LayerWalk]:
    layer_walk = LayerWalk(io.BytesIO(blob), wanted, LayerLimits(**limits))
    return list(layer_walk), layer_walk


def refusal(blob: bytes | io.RawIOBase, **limits: int) -> str:
    stream = io.BytesIO(blob) if isinstance(blob, bytes) else io.BufferedReader(blob)
    with pytest.raises(LayerError) as raised:
        list(LayerWalk(stream, lambda _: False, LayerLimits(**limits)))
    return raised.value.reason


# -- reading


@pytest.mark.parametrize("compression", list(Compression))
def test_reads_wanted_files_from_each_compression(compression: Compression) -> None:
    raw = tar_layer(
        {
            "./etc/os-release": OS_RELEASE,
            "usr/share/doc/README": b"not wanted",
            "var/lib/dpkg/status": b"Package: base-files\n",
        }
    )
    events, layer_walk = walk(
        compress(raw, compression), lambda path: path.startswith(("etc", "var"))
    )
    assert events == [
        FileRead("etc/os-release", OS_RELEASE),
        FileRead("var/lib/dpkg/status", b"Package: base-files\n"),
    ]
    assert layer_walk.compression is compression
    assert layer_walk.diff_id == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert layer_walk.entries == 3


def test_diff_id_with_sha512() -> None:
    raw = tar_layer({"a": b"x"})
    layer_walk = LayerWalk(
        io.BytesIO(gzip.compress(raw)), lambda _: False, digest_algorithm="sha512"
    )
    assert list(layer_walk) == []
    assert layer_walk.diff_id == "sha512:" + hashlib.sha512(raw).hexdigest()


def test_multi_member_gzip_and_multi_frame_zstd() -> None:
    raw = tar_layer({"etc/os-release": OS_RELEASE, "pad": bytes(100_000)})
    half = len(raw) // 2
    gzipped = gzip.compress(raw[:half]) + gzip.compress(raw[half:])
    compressor = zstandard.ZstdCompressor()
    zstd = compressor.compress(raw[:half]) + compressor.compress(raw[half:])
    for blob in (gzipped, zstd):
        events, layer_walk = walk(blob, lambda path: path == "etc/os-release")
        assert events == [FileRead("etc/os-release", OS_RELEASE)]
        assert layer_walk.diff_id == "sha256:" + hashlib.sha256(raw).hexdigest()


def test_whiteouts_and_opaque_directories() -> None:
    raw = tar_layer(
        {
            "usr/src/app/node_modules/.wh.lodash": b"",
            "usr/lib/python3/dist-packages/.wh..wh..opq": b"",
            ".wh..wh..opq": b"",
            ".wh.tmp": b"",
            "var/.wh..wh.plnk": b"",  # AUFS bookkeeping, not a whiteout
        }
    )
    events, _ = walk(raw)
    assert events == [
        Whiteout("usr/src/app/node_modules/lodash"),
        OpaqueDir("usr/lib/python3/dist-packages"),
        OpaqueDir(""),
        Whiteout("tmp"),
    ]


def test_symlink_at_a_wanted_path_is_reported_not_followed() -> None:
    raw = tar_layer(
        {"usr/lib/os-release": OS_RELEASE}, symlinks={"etc/os-release": "../usr/lib/os-release"}
    )
    events, _ = walk(raw, lambda path: path.endswith("os-release"))
    assert events == [FileRead("usr/lib/os-release", OS_RELEASE), NonRegular("etc/os-release")]


def test_hard_link_names_its_target() -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo("var/lib/dpkg/status")
        info.type = tarfile.LNKTYPE
        info.linkname = "./var/lib/dpkg/status-old"
        archive.addfile(info)
        info = tarfile.TarInfo("var/lib/dpkg/escape")
        info.type = tarfile.LNKTYPE
        info.linkname = "../../etc/shadow"
        archive.addfile(info)
    layer_walk = LayerWalk(io.BytesIO(buffer.getvalue()), lambda path: "dpkg" in path)
    events = iter(layer_walk)
    assert next(events) == HardLink("var/lib/dpkg/status", "var/lib/dpkg/status-old")
    with pytest.raises(LayerError, match=r"'\.\.'"):
        next(events)


def test_stream_without_end_of_archive_blocks_is_accepted() -> None:
    info = tarfile.TarInfo("etc/os-release")
    info.size = len(OS_RELEASE)
    raw = info.tobuf(format=tarfile.USTAR_FORMAT) + OS_RELEASE.ljust(tarfile.BLOCKSIZE, b"\0")
    events, _ = walk(raw)
    assert events == [FileRead("etc/os-release", OS_RELEASE)]


# -- paths


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("./etc/os-release", "etc/os-release"),
        ("/etc/os-release", "etc/os-release"),
        ("usr//lib/./os-release", "usr/lib/os-release"),
        ("./", ""),
    ],
)
def test_path_normalisation(name: str, expected: str) -> None:
    assert normalise_path(name) == expected


@pytest.mark.parametrize("name", ["../etc/passwd", "usr/../../etc/shadow", "/../x", "a/.."])
def test_dot_dot_is_refused(name: str) -> None:
    with pytest.raises(LayerError, match=r"'\.\.'"):
        normalise_path(name)
    assert "'..'" in refusal(tar_layer({name: b"x"}))


def test_overlong_path_is_refused() -> None:
    assert "longer than" in refusal(tar_layer({"a/" * 3000 + "b": b""}))


# -- compression


def test_detect_compression() -> None:
    assert detect_compression(b"\x1f\x8b\x08\x00") is Compression.GZIP
    assert detect_compression(b"\x28\xb5\x2f\xfd") is Compression.ZSTD
    assert detect_compression(b"etc/\x00\x00") is Compression.NONE
    for head, name in [(b"BZh91AY", "bzip2"), (b"\xfd7zXZ\x00\x00", "xz")]:
        with pytest.raises(LayerError, match=name):
            detect_compression(head)


def test_corrupt_and_truncated_compressed_streams_are_refused() -> None:
    blob = gzip.compress(tar_layer({"etc/os-release": OS_RELEASE, "pad": bytes(50_000)}))
    assert "corrupt compressed stream" in refusal(blob[: len(blob) // 2])
    damaged = bytearray(blob)
    damaged[len(blob) // 2] ^= 0xFF
    assert "corrupt compressed stream" in refusal(bytes(damaged))
    zstd = zstandard.ZstdCompressor().compress(tar_layer({"a": bytes(50_000)}))
    assert "corrupt compressed stream" in refusal(zstd[:-10])


def test_not_a_tar_and_corrupt_headers_are_refused() -> None:
    assert "tar" in refusal(b"this is not a tar archive, it is a text file" * 20)
    assert "empty" in refusal(b"")
    raw = bytearray(tar_layer({"a": b"1", "b": b"2"}))
    second_header = 2 * tarfile.BLOCKSIZE  # after a's header and its one data block
    assert raw[second_header : second_header + 2] == b"b\x00"
    raw[second_header + 150 : second_header + 156] = b"999999"  # breaks the checksum
    assert "malformed tar header" in refusal(bytes(raw))


# -- bombs and caps


def gzip_bomb(uncompressed: int) -> bytes:
    """A tar whose one member is `uncompressed` zero bytes, gzip compressed ~1000:1.

    Built from one compressed chunk repeated (gzip allows concatenated members), so making
    a 16 GiB bomb takes milliseconds."""
    chunk_size = 16 * MIB
    info = tarfile.TarInfo("var/lib/zeros")
    info.size = uncompressed
    chunk = gzip.compress(bytes(chunk_size), compresslevel=9)
    return gzip.compress(info.tobuf(format=tarfile.GNU_FORMAT)) + chunk * (
        uncompressed // chunk_size
    )


# The ratio cap refuses a bomb after a few MiB of output (a fraction of a second); the
# timeouts only turn a bomb that is inflated in full into a failure instead of a long wait.


@pytest.mark.timeout(60)
def test_gzip_bomb_is_refused() -> None:
    blob = gzip_bomb(16 * GIB)
    assert len(blob) < 20 * MIB
    assert "compression ratio" in refusal(blob)


@pytest.mark.timeout(60)
def test_zstd_bomb_is_refused() -> None:
    info = tarfile.TarInfo("zeros")
    info.size = 8 * GIB
    compressor = zstandard.ZstdCompressor(level=3)
    frame = compressor.compress(bytes(64 * MIB))
    blob = compressor.compress(info.tobuf(format=tarfile.GNU_FORMAT)) + frame * 128
    assert "compression ratio" in refusal(blob)


def test_a_bomb_in_a_wanted_file_is_refused_too() -> None:
    # The member is too large to read, and skipping its data still trips the ratio cap.
    blob = gzip_bomb(2 * GIB)
    with pytest.raises(LayerError, match="compression ratio"):
        list(LayerWalk(io.BytesIO(blob), lambda _: True))


def test_ratio_is_not_checked_below_the_grace() -> None:
    blob = gzip.compress(tar_layer({"zeros": bytes(8 * MIB)}))
    assert len(bytes(8 * MIB)) / len(blob) > 200
    events, _ = walk(blob, lambda _: False)
    assert events == []


class _TinyEntries(io.RawIOBase):
    """A plain tar of `count` empty files, made as it is read (1e6 headers are 512 MB)."""

    def __init__(self, count: int) -> None:
        info = tarfile.TarInfo("usr/share/doc/empty")
        self._header = memoryview(info.tobuf(format=tarfile.USTAR_FORMAT))
        self._remaining = count * tarfile.BLOCKSIZE
        self._offset = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        count = min(len(buffer), self._remaining)
        for start in range(0, count, tarfile.BLOCKSIZE):
            end = min(start + tarfile.BLOCKSIZE, count)
            buffer[start:end] = self._header[: end - start]
        self._remaining -= count
        return count


@pytest.mark.slow
@pytest.mark.timeout(120)  # the cap bounds the work: about 7 s on one core
def test_a_million_tiny_entries_are_refused() -> None:
    assert "more than 250000 entries" in refusal(_TinyEntries(1_000_000))


@pytest.mark.timeout(60)
def test_a_million_tiny_entries_compressed_are_refused_by_the_ratio_cap() -> None:
    # 1e6 identical headers gzip to ~1 MB; the ratio cap stops them long before the entry cap.
    header = tarfile.TarInfo("usr/share/doc/empty").tobuf(format=tarfile.USTAR_FORMAT)
    chunk = gzip.compress(header * 2048, compresslevel=9)
    blob = chunk * (1_000_000 // 2048)
    assert "compression ratio" in refusal(blob)


def test_entry_cap() -> None:
    raw = tar_layer({f"f{index}": b"" for index in range(20)})
    assert "more than 10 entries" in refusal(raw, max_entries=10)
    assert walk(raw, max_entries=20)[1].entries == 20


def test_total_uncompressed_bytes_cap() -> None:
    raw = tar_layer({"big": bytes(3 * MIB)})
    assert "larger than 2097152 bytes" in refusal(raw, max_total_bytes=2 * MIB)


def test_huge_wanted_file_is_skipped_not_read() -> None:
    raw = tar_layer({"opt/app/app.jar": bytes(3 * MIB), "etc/os-release": OS_RELEASE})
    events, _ = walk(raw, max_file_bytes=1 * MIB)
    assert events == [
        FileSkipped("opt/app/app.jar", "larger than 1048576 bytes; not read"),
        FileRead("etc/os-release", OS_RELEASE),
    ]


def test_huge_pax_header_is_refused_before_it_is_read() -> None:
    info = tarfile.TarInfo("etc/os-release")
    info.pax_headers = {"comment": "x" * (3 * MIB)}
    raw = info.tobuf(format=tarfile.PAX_FORMAT) + bytes(1024)
    assert "tar metadata" in refusal(raw)
    # …and is fine under a cap that allows it.
    events, _ = walk(raw, max_header_bytes=4 * MIB)
    assert events == [FileRead("etc/os-release", b"")]


def test_huge_gnu_long_name_is_refused() -> None:
    info = tarfile.TarInfo("a" * (2 * MIB))
    raw = info.tobuf(format=tarfile.GNU_FORMAT) + bytes(1024)
    assert "tar metadata" in refusal(raw)


@pytest.mark.parametrize("compression", [Compression.GZIP, Compression.ZSTD])
def test_every_truncation_of_a_compressed_layer_is_refused(compression: Compression) -> None:
    random_content = hashlib.sha256(b"seed").digest() * 20_000  # incompressible-ish, 640 KB
    raw = tar_layer({"etc/os-release": OS_RELEASE, "usr/bin/tool": random_content})
    if compression is Compression.ZSTD:
        # Small frames, so that some cuts land exactly between two of them.
        compressor = zstandard.ZstdCompressor()
        blob = b"".join(
            compressor.compress(raw[start : start + 100_000])
            for start in range(0, len(raw), 100_000)
        )
    else:
        blob = compress(raw, compression)
    frame_ends = _frame_ends(raw, compression)
    for cut in sorted({*range(1, len(blob), len(blob) // 37), *frame_ends}):
        if cut >= len(blob):
            continue
        with pytest.raises(LayerError):
            list(LayerWalk(io.BytesIO(blob[:cut]), lambda _: True))


def _frame_ends(raw: bytes, compression: Compression) -> set[int]:
    if compression is not Compression.ZSTD:
        return set()
    compressor = zstandard.ZstdCompressor()
    ends, total = set(), 0
    for start in range(0, len(raw), 100_000):
        total += len(compressor.compress(raw[start : start + 100_000]))
        ends.add(total)
    return ends
