"""HTTP byte ranges: `Content-Range` on chunk uploads and `Range` on blob downloads."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

_CHUNK_RANGE_RE: Final = re.compile(
    r"^(?:bytes[ =])?([0-9]{1,19})-([0-9]{1,19})(?:/(?:[0-9]{1,19}|\*))?$"
)
_RANGE_RE: Final = re.compile(r"^bytes=([0-9]{0,19})-([0-9]{0,19})$")


class RangeError(ValueError):
    """The header is malformed or cannot be satisfied."""


@dataclass(frozen=True, slots=True)
class ByteRange:
    """An inclusive byte range [start, end]."""

    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1


def parse_chunk_range(value: str) -> ByteRange:
    """Parse a chunk upload's `Content-Range: <start>-<end>` (inclusive on both ends).

    Clients in the wild also send `bytes <start>-<end>/<total>`; both are accepted.
    """
    match = _CHUNK_RANGE_RE.fullmatch(value.strip())
    if match is None:
        raise RangeError(f"malformed Content-Range {value[:100]!r}")
    start, end = int(match.group(1)), int(match.group(2))
    if end < start:
        raise RangeError(f"Content-Range end {end} is before start {start}")
    return ByteRange(start, end)


def parse_range(value: str, size: int) -> ByteRange | None:
    """Parse a single-range `Range` request header against a blob of `size` bytes.

    Returns None when the header should be ignored (multi-range or other units: the
    whole blob is then sent, which RFC 9110 allows). Raises RangeError when the range
    is well-formed but unsatisfiable.
    """
    match = _RANGE_RE.fullmatch(value.strip())
    if match is None:
        return None
    first, last = match.group(1), match.group(2)
    if first == "" and last == "":
        return None
    if first == "":
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise RangeError("unsatisfiable suffix range")
        return ByteRange(max(0, size - suffix), size - 1)
    start = int(first)
    end = int(last) if last != "" else size - 1
    if last != "" and end < start:
        return None
    if start >= size:
        raise RangeError(f"range start {start} is beyond the blob size {size}")
    return ByteRange(start, min(end, size - 1))
