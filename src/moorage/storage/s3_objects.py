"""Pieces of the S3 driver: error classification, the upload lease, the blob reader."""

from __future__ import annotations

import io
import json
import logging
import secrets
import threading
import time
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from moorage.storage.base import UploadBusyError

if TYPE_CHECKING:
    from moorage.storage.s3 import S3Storage

log = logging.getLogger("moorage.storage.s3")
_MISSING = frozenset({"404", "NoSuchKey", "NotFound", "NoSuchUpload"})
_CONFLICT = frozenset({"412", "PreconditionFailed", "409", "ConditionalRequestConflict"})


def error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def status(error: ClientError) -> int:
    return int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def is_missing(error: ClientError) -> bool:
    return error_code(error) in _MISSING or status(error) == 404


def is_conflict(error: ClientError) -> bool:
    return error_code(error) in _CONFLICT or status(error) in (409, 412)


class Lease:
    """The lock object of one session, renewed by a thread until released."""

    def __init__(self, storage: S3Storage, key: str, etag: str) -> None:
        self._storage = storage
        self._key = key
        self._etag = etag
        self._guard = threading.Lock()
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew_loop, daemon=True, name="s3-lease")
        self._thread.start()

    @staticmethod
    def _body(storage: S3Storage) -> bytes:
        expires = time.time() + storage.options.lease_seconds
        return json.dumps({"expires": expires, "owner": secrets.token_hex(8)}).encode()

    @classmethod
    def acquire(cls, storage: S3Storage, key: str, upload_id: str) -> Lease:
        try:
            return cls(storage, key, storage._put(key, cls._body(storage), IfNoneMatch="*"))
        except ClientError as error:
            if not is_conflict(error):
                raise
        found = storage._get(key)
        if found is not None:
            if json.loads(found[0]).get("expires", 0) > time.time():
                raise UploadBusyError(upload_id)
            condition = {"IfMatch": found[1]}  # take over an expired lease: one node wins
        else:
            condition = {"IfNoneMatch": "*"}  # released meanwhile
        try:
            return cls(storage, key, storage._put(key, cls._body(storage), **condition))
        except ClientError as error:
            if is_conflict(error):
                raise UploadBusyError(upload_id) from None
            raise

    def _renew_loop(self) -> None:
        interval = self._storage.options.lease_seconds / 3
        while not self._stop.wait(interval):
            with self._guard:
                if self._stop.is_set():
                    return
                try:
                    self._etag = self._storage._put(
                        self._key, self._body(self._storage), IfMatch=self._etag
                    )
                except ClientError as error:
                    if is_conflict(error) or is_missing(error):
                        self.lost = True
                        return
                    log.warning("renewing the lease %s failed (retrying): %s", self._key, error)
                except (OSError, BotoCoreError) as error:  # network trouble: retry later
                    log.warning("renewing the lease %s failed (retrying): %s", self._key, error)

    def release(self) -> None:
        self._stop.set()
        with self._guard:
            if self.lost:
                return
            try:
                self._storage._client.delete_object(
                    Bucket=self._storage._bucket, Key=self._key, IfMatch=self._etag
                )
            except ClientError as error:
                if not (is_conflict(error) or is_missing(error)):
                    raise


class BlobReader(io.RawIOBase):
    """A seekable reader over one object: sequential reads stream one GET, a seek reopens."""

    def __init__(self, client: Any, bucket: str, key: str, response: dict[str, Any]) -> None:
        self._client = client
        self._bucket = bucket
        self._key = key
        self._size = int(response["ContentLength"])
        self._body: Any = response["Body"]
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        position = max(0, base + offset)
        if position != self._position:
            self._drop_body()
            self._position = position
        return position

    def _drop_body(self) -> None:
        if self._body is not None:
            self._body.close()
            self._body = None

    def readinto(self, buffer: Any) -> int:
        if self._position >= self._size:
            return 0
        if self._body is None:
            response = self._client.get_object(
                Bucket=self._bucket, Key=self._key, Range=f"bytes={self._position}-"
            )
            self._body = response["Body"]
        data = self._body.read(len(buffer))
        view = memoryview(buffer).cast("B")
        view[: len(data)] = data
        self._position += len(data)
        return len(data)

    def close(self) -> None:
        self._drop_body()
        super().close()
