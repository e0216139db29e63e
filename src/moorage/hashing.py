"""Digests whose running state can be saved and resumed by another process.

A chunked upload's PATCH requests may land on any worker (or node), so the sha256 state of the
bytes received so far is saved beside the upload after each chunk. hashlib cannot export its
state; OpenSSL's SHA256_CTX/SHA512_CTX can be copied as plain bytes, and calling it through
ctypes hashes at the same speed as hashlib (and releases the GIL). The saved state names the
exact libcrypto build that wrote it; a state from another build is not trusted and the digest
is rebuilt from the stored bytes instead.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
from dataclasses import dataclass
from typing import Final, Protocol

from moorage.domain.digest import Hasher


class ResumableHasher(Hasher, Protocol):
    def state(self) -> bytes | None:
        """An opaque snapshot for `resume`, or None when this hasher cannot be saved."""
        ...


@dataclass(frozen=True)
class _Algorithm:
    context_size: int
    digest_size: int
    prefix: str  # OpenSSL function prefix, e.g. SHA256


_ALGORITHMS: Final = {
    "sha256": _Algorithm(112, 32, "SHA256"),
    "sha512": _Algorithm(216, 64, "SHA512"),
}


def _load_libcrypto() -> tuple[ctypes.CDLL, bytes] | None:
    name = ctypes.util.find_library("crypto")
    if name is None:
        return None
    try:
        library = ctypes.CDLL(name)
        library.OpenSSL_version.restype = ctypes.c_char_p
        version = library.OpenSSL_version(0) or b"unknown"
        for algorithm in _ALGORITHMS.values():
            for suffix in ("Init", "Update", "Final"):
                getattr(library, f"{algorithm.prefix}_{suffix}")
    except (OSError, AttributeError):
        return None
    return library, version


_LIBCRYPTO: Final = _load_libcrypto()


class _OpenSSLHasher:
    def __init__(self, algorithm: str, context: bytes | None = None) -> None:
        assert _LIBCRYPTO is not None
        self._library, self._version = _LIBCRYPTO
        self._algorithm = algorithm
        self._spec = _ALGORITHMS[algorithm]
        self._context = ctypes.create_string_buffer(self._spec.context_size)
        if context is None:
            getattr(self._library, f"{self._spec.prefix}_Init")(self._context)
        else:
            ctypes.memmove(self._context, context, self._spec.context_size)
        self._update = getattr(self._library, f"{self._spec.prefix}_Update")

    def update(self, data: bytes, /) -> None:
        self._update(self._context, data, ctypes.c_size_t(len(data)))

    def hexdigest(self) -> str:
        # Finalise a copy so the running state stays usable.
        copy = ctypes.create_string_buffer(self._context.raw, self._spec.context_size)
        out = ctypes.create_string_buffer(self._spec.digest_size)
        getattr(self._library, f"{self._spec.prefix}_Final")(out, copy)
        return out.raw.hex()

    def state(self) -> bytes:
        return _tag(self._algorithm, self._version) + self._context.raw


class _HashlibHasher:
    def __init__(self, algorithm: str) -> None:
        self._hash = hashlib.new(algorithm)

    def update(self, data: bytes, /) -> None:
        self._hash.update(data)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()

    def state(self) -> None:
        return None


def _tag(algorithm: str, version: bytes) -> bytes:
    header = f"moorage-digest-state/1 {algorithm} ".encode() + version
    return len(header).to_bytes(2, "big") + header


def new_resumable(algorithm: str) -> ResumableHasher:
    if _LIBCRYPTO is not None and algorithm in _ALGORITHMS:
        return _OpenSSLHasher(algorithm)
    return _HashlibHasher(algorithm)


def resume(algorithm: str, state: bytes) -> ResumableHasher | None:
    """A hasher continuing from `state`, or None when the state cannot be trusted here."""
    if _LIBCRYPTO is None or algorithm not in _ALGORITHMS:
        return None
    expected = _tag(algorithm, _LIBCRYPTO[1])
    context = state[len(expected) :]
    if not state.startswith(expected) or len(context) != _ALGORITHMS[algorithm].context_size:
        return None
    return _OpenSSLHasher(algorithm, context)
