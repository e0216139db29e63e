"""Benchmark payloads: many distinct large blobs without many large buffers.

Every large blob is one shared random buffer's prefix followed by a unique 32-byte suffix, so
blobs are distinct (content addressing cannot deduplicate them) while the client holds one
buffer. The sha256 of each prefix length is computed once, in one pass, before any timing; a
blob's digest is then a hasher copy plus 32 bytes. Bodies are streamed as memoryview slices of
that buffer, never copied into new large objects.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

SUFFIX_LENGTH = 32
STREAM_SLICE = 1 << 20

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


@dataclass(frozen=True, slots=True)
class Blob:
    """Bytes `prefix + suffix` (prefix is a view of the shared buffer) and their digest."""

    prefix: memoryview
    suffix: bytes
    digest: str

    @property
    def size(self) -> int:
        return len(self.prefix) + len(self.suffix)

    def views(self, start: int = 0, end: int | None = None) -> Iterable[memoryview]:
        """Slices (at most STREAM_SLICE bytes each) covering [start, end)."""
        end = self.size if end is None else end
        split = len(self.prefix)
        position = start
        while position < end:
            if position < split:
                stop = min(end, split, position + STREAM_SLICE)
                yield self.prefix[position:stop]
            else:
                stop = end
                yield memoryview(self.suffix)[position - split : stop - split]
            position = stop

    def stream(self, start: int = 0, end: int | None = None) -> AsyncIterator[memoryview]:
        views = self.views(start, end)

        async def generate() -> AsyncIterator[memoryview]:
            for view in views:
                yield view

        return generate()


class BlobFactory:
    """Makes distinct blobs of the given sizes from one random buffer."""

    def __init__(self, sizes: Iterable[int]) -> None:
        lengths = sorted({size - SUFFIX_LENGTH for size in sizes})
        if not lengths or lengths[0] < 0:
            raise ValueError("blob sizes must be at least the suffix length")
        self._buffer = os.urandom(lengths[-1])
        self._view = memoryview(self._buffer)
        self._states: dict[int, Any] = {}
        hasher = hashlib.sha256()
        done = 0
        for length in lengths:
            hasher.update(self._view[done:length])
            done = length
            self._states[length] = hasher.copy()

    def make(self, size: int, label: str) -> Blob:
        length = size - SUFFIX_LENGTH
        state = self._states.get(length)
        if state is None:
            raise ValueError(f"size {size} was not declared to the factory")
        suffix = hashlib.sha256(label.encode()).digest()
        hasher = state.copy()
        hasher.update(suffix)
        return Blob(self._view[:length], suffix, f"sha256:{hasher.hexdigest()}")


def small_blob(data: bytes) -> Blob:
    return Blob(memoryview(data), b"", f"sha256:{hashlib.sha256(data).hexdigest()}")


@dataclass(frozen=True, slots=True)
class Image:
    """A tiny OCI image: one layer, one config, the manifest that ties them."""

    layer: Blob
    config: Blob
    manifest: bytes
    manifest_digest: str


def make_image(layer_bytes: bytes, label: str) -> Image:
    layer = small_blob(layer_bytes)
    config_document = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Labels": {"bench": label}},
        "rootfs": {"type": "layers", "diff_ids": [layer.digest]},
    }
    config = small_blob(json.dumps(config_document, separators=(",", ":")).encode())
    manifest_document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config.digest, "size": config.size},
        "layers": [{"mediaType": OCI_LAYER, "digest": layer.digest, "size": layer.size}],
    }
    manifest = json.dumps(manifest_document, separators=(",", ":")).encode()
    return Image(layer, config, manifest, f"sha256:{hashlib.sha256(manifest).hexdigest()}")
