"""Filesystem storage driver.

Layout under the root:
    blobs/<algorithm>/<first two hex chars>/<hex>   committed, immutable blobs
    uploads/<upload id>                              in-progress upload sessions

A blob appears only by `rename` of a fully written, fsynced and verified upload file, so a crash
at any moment leaves either no blob or a complete one. Upload files are locked with `flock`
while a request appends, which serialises writers across worker processes on one host and is
released by the kernel if the process dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from moorage.domain.digest import HEX_LENGTH, Digest
from moorage.storage.base import UploadBusyError, UploadMissingError

_READ_CHUNK = 1 << 20


class FilesystemUploadWriter:
    def __init__(self, path: Path, blob_path_for: _BlobPaths) -> None:
        self._path = path
        self._blob_paths = blob_path_for
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        except FileNotFoundError:
            raise UploadMissingError(path.name) from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise UploadBusyError(path.name) from None
        # Between our open() and flock() the previous holder may have committed the session
        # (renamed the file into the blob store) or cancelled it: the descriptor must still be
        # the file at the upload path, or we would append to a committed blob.
        stat = os.fstat(self._fd)
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        if current is None or (current.st_ino, current.st_dev) != (stat.st_ino, stat.st_dev):
            os.close(self._fd)
            raise UploadMissingError(path.name)
        self._size = stat.st_size
        self._closed = False

    @property
    def size(self) -> int:
        return self._size

    def write(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            written = os.write(self._fd, view)
            self._size += written
            view = view[written:]

    def read_all(self) -> Iterator[bytes]:
        with open(self._path, "rb") as source:
            while chunk := source.read(_READ_CHUNK):
                yield chunk

    def commit(self, digest: Digest) -> None:
        os.fsync(self._fd)
        target = self._blob_paths.path(digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(self._path, target)
        _fsync_dir(target.parent)
        with contextlib.suppress(FileNotFoundError):
            _state_path(self._path).unlink()
        self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self._fd)  # closing the descriptor releases the flock


class _BlobPaths:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, digest: Digest) -> Path:
        return self.root / digest.algorithm / digest.hex[:2] / digest.hex


class FilesystemStorage:
    def __init__(self, root: Path) -> None:
        self._root = root
        self._uploads = root / "uploads"
        self._blobs = _BlobPaths(root / "blobs")
        self._uploads.mkdir(parents=True, exist_ok=True)
        self._blobs.root.mkdir(parents=True, exist_ok=True)

    # uploads

    def _upload_path(self, upload_id: str) -> Path:
        if not upload_id or "/" in upload_id or "." in upload_id:
            raise UploadMissingError(upload_id)
        return self._uploads / upload_id

    def create_upload(self, upload_id: str) -> None:
        fd = os.open(self._upload_path(upload_id), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)

    def open_upload(self, upload_id: str) -> FilesystemUploadWriter:
        return FilesystemUploadWriter(self._upload_path(upload_id), self._blobs)

    def upload_size(self, upload_id: str) -> int | None:
        try:
            return self._upload_path(upload_id).stat().st_size
        except (FileNotFoundError, UploadMissingError):
            return None

    def upload_activity(self, upload_id: str) -> float | None:
        try:
            return self._upload_path(upload_id).stat().st_mtime
        except (FileNotFoundError, UploadMissingError):
            return None

    def delete_upload(self, upload_id: str) -> None:
        path = self._upload_path(upload_id)
        for victim in (path, _state_path(path)):
            with contextlib.suppress(FileNotFoundError):
                victim.unlink()

    def delete_upload_if_idle(self, upload_id: str) -> bool:
        try:
            writer = self.open_upload(upload_id)
        except (UploadMissingError, UploadBusyError):
            return False
        try:
            self.delete_upload(upload_id)
        finally:
            writer.close()
        return True

    def save_digest_state(self, upload_id: str, size: int, state: bytes) -> None:
        path = _state_path(self._upload_path(upload_id))
        temporary = path.with_name(path.name + ".tmp")
        # No fsync: a lost or stale state only costs re-reading the upload.
        temporary.write_bytes(size.to_bytes(8, "big") + state)
        os.replace(temporary, path)

    def load_digest_state(self, upload_id: str) -> tuple[int, bytes] | None:
        try:
            raw = _state_path(self._upload_path(upload_id)).read_bytes()
        except (FileNotFoundError, UploadMissingError):
            return None
        if len(raw) < 8:
            return None
        return int.from_bytes(raw[:8], "big"), raw[8:]

    def list_uploads(self) -> Iterator[tuple[str, float]]:
        for entry in os.scandir(self._uploads):
            if "." in entry.name:
                continue  # digest state files live beside their upload
            with contextlib.suppress(FileNotFoundError):
                yield entry.name, entry.stat().st_mtime

    # blobs

    def blob_size(self, digest: Digest) -> int | None:
        try:
            return self._blobs.path(digest).stat().st_size
        except FileNotFoundError:
            return None

    def local_path(self, digest: Digest) -> Path:
        return self._blobs.path(digest)

    def open_blob(self, digest: Digest) -> BinaryIO:
        return open(self._blobs.path(digest), "rb")

    def delete_blob(self, digest: Digest) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._blobs.path(digest).unlink()

    def delete_blobs(self, digests: Iterable[Digest]) -> int:
        count = 0
        for digest in digests:
            self.delete_blob(digest)
            count += 1
        return count

    def blob_url(self, digest: Digest, expires_seconds: int) -> str | None:
        return None

    def list_blobs(self) -> Iterator[Digest]:
        for algorithm, length in HEX_LENGTH.items():
            base = self._blobs.root / algorithm
            if not base.is_dir():
                continue
            for prefix in os.scandir(base):
                for entry in os.scandir(prefix.path):
                    if len(entry.name) == length:
                        yield Digest(algorithm, entry.name)


def _state_path(upload_path: Path) -> Path:
    return upload_path.with_name(upload_path.name + ".state")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
