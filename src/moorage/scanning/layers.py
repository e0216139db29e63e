"""Stream one layer blob without extracting it, under hard limits.

A layer is a tar archive, plain or compressed with gzip or zstd (told apart by their magic
bytes, not by the media type, which a client may get wrong). `LayerWalk` reads it front to back
once and yields only what the catalogers need:

- `FileRead`: the content of a regular file whose path the caller wants, read into memory;
- `FileSkipped`: a wanted file that was not read because it is too large;
- `HardLink`: a wanted path that is a hard link to an earlier member of the layer;
- `NonRegular`: a wanted path that this layer turned into a symlink, directory or device, which
  hides any file of a lower layer at that path;
- `Whiteout` / `OpaqueDir`: the OCI markers (`.wh.<name>`, `.wh..wh..opq`) that hide lower layers.

Every layer comes from an untrusted client, so everything is capped: the number of entries, the
uncompressed bytes, the size of a file read into memory, the tar metadata between two entries
(pax headers and GNU long names are read whole into memory by `tarfile`), and the compression
ratio (a gzip or zstd bomb). A violation raises `LayerError` with a reason meant for the report.
The walk also digests the uncompressed stream, so the caller can check the layer's diff_id
before trusting (and caching) anything derived from it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, BinaryIO, Final, Protocol, Self

import zstandard

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

KIB: Final = 1024
MIB: Final = 1024 * KIB
GIB: Final = 1024 * MIB

WHITEOUT_PREFIX: Final = ".wh."
OPAQUE_MARKER: Final = ".wh..wh..opq"

_GZIP_MAGIC: Final = b"\x1f\x8b"
_ZSTD_MAGIC: Final = b"\x28\xb5\x2f\xfd"
# Other compressions a client might upload by mistake; named so the error can say which.
_UNSUPPORTED_MAGIC: Final = {b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x04\x22\x4d\x18": "lz4"}
_READ_CHUNK: Final = 64 * KIB
MAX_PATH_LENGTH: Final = 4096  # PATH_MAX
_ZERO_BLOCK: Final = bytes(tarfile.BLOCKSIZE)


class LayerError(Exception):
    """The layer cannot be scanned; `reason` says why, in words fit for a scan report."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class LayerLimits:
    max_entries: int = 250_000  # large real layers (TeX Live, conda) hold about 200k
    max_total_bytes: int = 16 * GIB  # uncompressed tar stream
    max_file_bytes: int = 64 * MIB  # one wanted file read into memory
    max_header_bytes: int = 1 * MIB  # tar metadata (pax headers, long names) before one entry
    max_path_length: int = MAX_PATH_LENGTH
    # Uncompressed/compressed bytes. Real layers stay well under 20; a bomb is in the
    # thousands. Checked only past the grace, as tar padding makes tiny layers look extreme.
    max_ratio: int = 200
    ratio_grace_bytes: int = 32 * MIB
    max_zstd_window: int = 128 * MIB  # the largest window zstd itself uses by default


class Compression(StrEnum):
    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"


@dataclass(frozen=True, slots=True)
class FileRead:
    path: str
    data: bytes


@dataclass(frozen=True, slots=True)
class FileSkipped:
    path: str
    reason: str


@dataclass(frozen=True, slots=True)
class HardLink:
    path: str
    target: str  # normalised like `path`; tar only links to members that came before


@dataclass(frozen=True, slots=True)
class NonRegular:
    path: str


@dataclass(frozen=True, slots=True)
class Whiteout:
    path: str  # hidden in lower layers, with everything below it


@dataclass(frozen=True, slots=True)
class OpaqueDir:
    path: str  # its lower-layer children are hidden ("" is the root)


LayerEvent = FileRead | FileSkipped | HardLink | NonRegular | Whiteout | OpaqueDir


def detect_compression(head: bytes) -> Compression:
    """Tell the compression from the first bytes of a blob."""
    if head.startswith(_GZIP_MAGIC):
        return Compression.GZIP
    if head.startswith(_ZSTD_MAGIC):
        return Compression.ZSTD
    for magic, name in _UNSUPPORTED_MAGIC.items():
        if head.startswith(magic):
            raise LayerError(f"{name} compressed layers are not supported")
    return Compression.NONE


def normalise_path(name: str, max_length: int = MAX_PATH_LENGTH) -> str:
    """A tar member name as a path relative to the root, without `.`, `//` or a leading `/`.

    A leading `/` means the layer root, as it does when a runtime unpacks the layer. `..` is
    refused outright: no image builder writes it, and a scanner must not guess where it points.
    """
    if len(name) > max_length:
        raise LayerError(f"a path in the layer is longer than {max_length} characters")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise LayerError(f"path {name[:200]!r} contains '..'")
    return "/".join(parts)


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _ZstdFrames:
    """Follows zstd frame and block headers (RFC 8878) through the compressed bytes.

    The zstd reader stops quietly when its input ends inside a frame, so without this a cut-off
    layer would look like a shorter one. Block contents are skipped, not decoded.
    """

    _MAGIC: Final = 0xFD2FB528
    _SKIPPABLE_MAGIC: Final = 0x184D2A50  # the low four bits are free

    def __init__(self) -> None:
        self._state = "magic"
        self._need = 4  # header bytes the current state needs
        self._pending = bytearray()
        self._skip = 0  # block content (or a skippable frame) to pass over
        self._checksum = False
        self.problem: str | None = None

    @property
    def complete(self) -> bool:
        """True when the bytes so far end exactly after a frame."""
        at_frame_start = self._state == "magic" and not self._pending and not self._skip
        return self.problem is None and at_frame_start

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view and self.problem is None:
            if self._skip:
                count = min(self._skip, len(view))
                self._skip -= count
                view = view[count:]
                continue
            count = min(self._need - len(self._pending), len(view))
            self._pending += view[:count]
            view = view[count:]
            if len(self._pending) == self._need:
                header = int.from_bytes(self._pending, "little")
                self._pending.clear()
                self._advance(header)

    def _advance(self, header: int) -> None:
        match self._state:
            case "magic" if header == self._MAGIC:
                self._expect("descriptor", 1)
            case "magic" if header & ~0xF == self._SKIPPABLE_MAGIC:
                self._expect("skippable size", 4)
            case "magic":
                self.problem = "not a zstd frame"
            case "descriptor":
                self._descriptor(header)
            case "frame header":
                self._expect("block", 3)
            case "checksum":
                self._expect("magic", 4)
            case "skippable size":
                self._skip = header
                self._expect("magic", 4)
            case "block":
                self._block(header)

    def _descriptor(self, descriptor: int) -> None:
        single_segment = bool(descriptor & 0x20)
        self._checksum = bool(descriptor & 0x04)
        if descriptor & 0x08:
            self.problem = "reserved bit set in a zstd frame header"
            return
        window = 0 if single_segment else 1
        dictionary = (0, 1, 2, 4)[descriptor & 0x03]
        content_size = (1 if single_segment else 0, 2, 4, 8)[descriptor >> 6]
        rest = window + dictionary + content_size
        if rest:
            self._expect("frame header", rest)
        else:
            self._expect("block", 3)

    def _block(self, header: int) -> None:
        last, block_type, size = header & 1, (header >> 1) & 3, header >> 3
        if block_type == 3:
            self.problem = "reserved zstd block type"
            return
        self._skip = 1 if block_type == 1 else size  # an RLE block stores one byte
        if not last:
            self._expect("block", 3)
        elif self._checksum:
            self._expect("checksum", 4)
        else:
            self._expect("magic", 4)

    def _expect(self, state: str, size: int) -> None:
        self._state, self._need = state, size


class _CountingSource(io.RawIOBase):
    """The compressed blob, with the bytes peeked for the magic put back, counting what is read."""

    def __init__(self, raw: BinaryIO, head: bytes, frames: _ZstdFrames | None = None) -> None:
        self._raw = raw
        self._head = head
        self._frames = frames
        self.consumed = 0
        self.exhausted = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        if self._head:
            count = min(len(view), len(self._head))
            view[:count] = self._head[:count]
            self._head = self._head[count:]
        else:
            data = self._raw.read(len(view))
            count = len(data)
            view[:count] = data
            self.exhausted = count == 0
        if self._frames is not None:
            self._frames.feed(bytes(view[:count]))
        self.consumed += count
        return count


class _GuardedStream(io.RawIOBase):
    """The uncompressed tar stream: enforces the byte, ratio and metadata caps, and digests it."""

    def __init__(
        self,
        decompressed: _Readable,
        source: _CountingSource,
        limits: LayerLimits,
        digest_algorithm: str,
    ) -> None:
        self._decompressed = decompressed
        self._source = source
        self._limits = limits
        self._hasher = hashlib.new(digest_algorithm)
        self.position = 0
        # Reads past this offset are refused until the walk moves it on (see `allow_until`).
        self._read_limit: int | None = limits.max_header_bytes

    def readable(self) -> bool:
        return True

    def allow_until(self, offset: int | None) -> None:
        self._read_limit = offset

    def hexdigest(self) -> str:
        return self._hasher.hexdigest()

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        wanted = len(view)
        if self._read_limit is not None:
            wanted = min(wanted, self._read_limit - self.position)
            if wanted <= 0:
                raise LayerError(
                    f"tar metadata before one entry exceeds {self._limits.max_header_bytes} bytes"
                )
        try:
            data = self._decompressed.read(wanted)
        except (gzip.BadGzipFile, EOFError, zlib.error, zstandard.ZstdError) as error:
            # Not OSError in general: a storage failure is not the layer's fault.
            raise LayerError(f"corrupt compressed stream: {error}") from None
        count = len(data)
        view[:count] = data
        self._hasher.update(data)
        self.position += count
        self._check_caps()
        return count

    def _check_caps(self) -> None:
        limits = self._limits
        if self.position > limits.max_total_bytes:
            raise LayerError(f"layer is larger than {limits.max_total_bytes} bytes uncompressed")
        if self.position > limits.ratio_grace_bytes and self._source.consumed > 0:
            ratio = self.position / self._source.consumed
            if ratio > limits.max_ratio:
                raise LayerError(
                    f"compression ratio exceeds {limits.max_ratio}:1 (a decompression bomb?)"
                )


class _StrictTarInfo(tarfile.TarInfo):
    """`tarfile` ends the archive quietly at a corrupt header; a layer scan must not."""

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Self:
        if not buf or buf == _ZERO_BLOCK:
            # The end-of-archive blocks, or the end of a stream that omits them.
            return super().frombuf(buf, encoding, errors)
        try:
            return super().frombuf(buf, encoding, errors)
        except tarfile.HeaderError as error:
            raise LayerError(f"malformed tar header: {error}") from None


class LayerWalk:
    """One pass over a layer blob; iterate it once, then read `diff_id`.

    `wanted(path)` is asked for every path (normalised, no leading slash); only the regular files
    it accepts are read into memory, one at a time.
    """

    def __init__(
        self,
        blob: BinaryIO,
        wanted: Callable[[str], bool],
        limits: LayerLimits | None = None,
        digest_algorithm: str = "sha256",
    ) -> None:
        self._blob = blob
        self._wanted = wanted
        self.limits = limits or LayerLimits()
        self._digest_algorithm = digest_algorithm
        self.compression: Compression | None = None
        self.entries = 0
        self.uncompressed_bytes = 0
        self.diff_id: str | None = None  # set once the whole blob has been read

    def __iter__(self) -> Iterator[LayerEvent]:
        head = self._blob.read(8)
        self.compression = detect_compression(head)
        frames = _ZstdFrames() if self.compression is Compression.ZSTD else None
        source = _CountingSource(self._blob, head, frames)
        stream = _GuardedStream(
            self._decompressor(source), source, self.limits, self._digest_algorithm
        )
        try:
            yield from self._members(stream)
            stream.allow_until(None)
            while stream.read(_READ_CHUNK):  # the diff_id covers the padding after the archive
                pass
        except (tarfile.TarError, EOFError, UnicodeError) as error:
            _check_zstd_frames(frames, source)  # a cut-off stream is the better explanation
            if isinstance(error, UnicodeError):
                raise LayerError(f"undecodable tar metadata: {error}") from None
            raise LayerError(f"malformed tar archive: {error}") from None
        _check_zstd_frames(frames, source)
        self.uncompressed_bytes = stream.position
        self.diff_id = f"{self._digest_algorithm}:{stream.hexdigest()}"

    def _decompressor(self, source: _CountingSource) -> _Readable:
        buffered = io.BufferedReader(source, _READ_CHUNK)
        if self.compression is Compression.GZIP:
            return gzip.GzipFile(fileobj=buffered, mode="rb")
        if self.compression is Compression.ZSTD:
            decompressor = zstandard.ZstdDecompressor(max_window_size=self.limits.max_zstd_window)
            return decompressor.stream_reader(buffered, read_across_frames=True)
        return buffered

    def _members(self, stream: _GuardedStream) -> Iterator[LayerEvent]:
        limits = self.limits
        with tarfile.open(
            fileobj=stream, mode="r|", tarinfo=_StrictTarInfo, bufsize=_READ_CHUNK
        ) as archive:
            while (member := archive.next()) is not None:
                _forget_members(archive)
                self.entries += 1
                if self.entries > limits.max_entries:
                    raise LayerError(f"layer has more than {limits.max_entries} entries")
                if member.size < 0:
                    raise LayerError(f"tar entry {member.name[:200]!r} has a negative size")
                data_end = member.offset_data + _blocks(member.size)
                stream.allow_until(data_end + limits.max_header_bytes)
                event = self._event(archive, member)
                if event is not None:
                    yield event

    def _event(self, archive: tarfile.TarFile, member: tarfile.TarInfo) -> LayerEvent | None:
        path = normalise_path(member.name, self.limits.max_path_length)
        directory, _, base = path.rpartition("/")
        if base == OPAQUE_MARKER:
            return OpaqueDir(directory)
        if base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
            return None  # other AUFS bookkeeping (.wh..wh.plnk and the like)
        if base.startswith(WHITEOUT_PREFIX):
            hidden = base.removeprefix(WHITEOUT_PREFIX)
            return Whiteout(f"{directory}/{hidden}" if directory else hidden)
        if not path or not self._wanted(path):
            return None
        if member.islnk():
            return HardLink(path, normalise_path(member.linkname, self.limits.max_path_length))
        if not member.isreg():
            return NonRegular(path)
        if member.size > self.limits.max_file_bytes:
            return FileSkipped(path, f"larger than {self.limits.max_file_bytes} bytes; not read")
        content = archive.extractfile(member)
        if content is None:
            return NonRegular(path)
        return FileRead(path, content.read())


def _check_zstd_frames(frames: _ZstdFrames | None, source: _CountingSource) -> None:
    if frames is not None and source.exhausted and not frames.complete:
        problem = frames.problem or "the last zstd frame is cut short"
        raise LayerError(f"corrupt compressed stream: {problem}")


def _forget_members(archive: tarfile.TarFile) -> None:
    """`tarfile` keeps every member it has read; a walk needs none of them."""
    archive.members.clear()  # type: ignore[attr-defined]  # not in the stubs


def _blocks(size: int) -> int:
    """The bytes a member's data occupies in the archive: whole 512-byte blocks."""
    return -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
