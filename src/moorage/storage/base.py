"""The storage driver interfaces.

Blobs are immutable and content-addressed; upload sessions are append-only files that become
blobs by an atomic commit after their digest was verified. A driver never interprets content.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from moorage.domain.digest import Digest


class UploadMissingError(Exception):
    """The upload session has no data in storage (never created, cancelled or expired)."""


class UploadBusyError(Exception):
    """Another request is appending to the same upload session right now."""


class UploadWriter(Protocol):
    """Exclusive, append-only access to one upload session's data, held for one request."""

    @property
    def size(self) -> int: ...

    def write(self, chunk: bytes) -> None: ...

    def read_all(self) -> Iterator[bytes]:
        """The bytes written so far, from the start (to rebuild a digest state)."""
        ...

    def commit(self, digest: Digest) -> None:
        """Make the data durable and visible as blob `digest`; the session is consumed."""
        ...

    def close(self) -> None: ...


class UploadStore(Protocol):
    def create_upload(self, upload_id: str) -> None: ...

    def open_upload(self, upload_id: str) -> UploadWriter:
        """Lock the session for appending; raises UploadMissingError or UploadBusyError."""
        ...

    def upload_size(self, upload_id: str) -> int | None: ...

    def upload_activity(self, upload_id: str) -> float | None:
        """When the session's data last changed (seconds since the epoch), or None."""
        ...

    def delete_upload(self, upload_id: str) -> None: ...

    def delete_upload_if_idle(self, upload_id: str) -> bool:
        """Delete unless a request is writing to it right now; whether it was deleted."""
        ...

    def save_digest_state(self, upload_id: str, size: int, state: bytes) -> None:
        """Remember the digest state of the first `size` bytes (an optimisation, not truth)."""
        ...

    def load_digest_state(self, upload_id: str) -> tuple[int, bytes] | None: ...

    def list_uploads(self) -> Iterator[tuple[str, float]]:
        """(upload id, last modification time) of every session's data."""
        ...


class BlobStore(Protocol):
    def blob_size(self, digest: Digest) -> int | None: ...

    def local_path(self, digest: Digest) -> Path | None:
        """A local file for zero-copy serving, or None when the driver is not local."""
        ...

    def open_blob(self, digest: Digest) -> BinaryIO: ...

    def delete_blob(self, digest: Digest) -> None: ...

    def delete_blobs(self, digests: Iterable[Digest]) -> int:
        """Delete many blobs (in bulk where the backend can); how many were requested."""
        ...

    def blob_url(self, digest: Digest, expires_seconds: int) -> str | None:
        """A URL a client may GET the blob from directly for a while, or None (local)."""
        ...

    def list_blobs(self) -> Iterator[Digest]: ...


class StorageDriver(UploadStore, BlobStore, Protocol):
    """Everything the registry needs from a storage backend."""
