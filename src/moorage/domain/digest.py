"""Content digests (`algorithm:hex`) for the algorithms the registry verifies."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Final, Protocol

from moorage.domain.errors import ErrorCode, RegistryError

# Algorithms we can verify, with the exact hex length each produces.
HEX_LENGTH: Final[dict[str, int]] = {"sha256": 64, "sha512": 128}
_DIGEST_RE: Final = re.compile(r"^([a-z0-9]+(?:[.+_-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)$")


class Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...
    def hexdigest(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Digest:
    algorithm: str
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    @classmethod
    def parse(cls, text: str) -> Digest:
        """Parse and validate a digest; only verifiable algorithms are accepted."""
        match = _DIGEST_RE.fullmatch(text)
        if match is None:
            raise RegistryError(ErrorCode.DIGEST_INVALID, f"invalid digest {text[:200]!r}")
        algorithm, hex_part = match.groups()
        expected = HEX_LENGTH.get(algorithm)
        if expected is None:
            raise RegistryError(
                ErrorCode.DIGEST_INVALID, f"unsupported digest algorithm {algorithm[:32]!r}"
            )
        if len(hex_part) != expected or not _is_lower_hex(hex_part):
            raise RegistryError(
                ErrorCode.DIGEST_INVALID,
                f"{algorithm} digest must be {expected} lowercase hex characters",
            )
        return cls(algorithm, hex_part)

    @classmethod
    def is_digest(cls, text: str) -> bool:
        """True when `text` has the shape of a digest (it may still be invalid)."""
        return ":" in text

    @classmethod
    def of(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())

    def hasher(self) -> Hasher:
        return new_hasher(self.algorithm)


def new_hasher(algorithm: str = "sha256") -> Hasher:
    return hashlib.new(algorithm)


def _is_lower_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)
