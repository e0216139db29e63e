"""S3-compatible storage driver (boto3; any endpoint that speaks S3 with conditional writes).

Layout under the bucket's prefix:
    blobs/<algorithm>/<first two hex chars>/<hex>    committed, immutable blobs
    uploads/<id>/state                               the session: stored parts, digest state
    uploads/<id>/part-<offset>-<token>               staged bytes, part_size each but the last
    uploads/<id>/lock                                the lease of the request appending now

Every node can continue any session: its parts are plain objects (readable, so a digest state
can always be rebuilt), and the state object lists exactly the parts that belong to it. The
state is replaced only by a conditional write (If-Match on the ETag read when the session was
opened), so a writer that lost its lease can never make its bytes, or a digest state for them,
part of the session. The digest state is saved inside that same state object, so it always
describes exactly the bytes the state lists.

Exclusive append across nodes: the lock object is created with `If-None-Match: *`, renewed by a
thread while the request runs and deleted at the end (conditionally, on its own ETag). A node
that dies holding it blocks the session for at most `lease_seconds`; after that another node
takes the lease over with `If-Match` on the expired lock's ETag, so exactly one wins. Expiry is
judged by the clocks of the nodes, which must be roughly in sync (NTP).

Commit: after the caller verified the digest, the parts are assembled server-side into the
blob key with a multipart upload (UploadPartCopy) or a single copy/put. S3 creates an object
atomically when the upload completes, so a blob key is only ever complete and verified; a crash
mid-commit leaves at most an incomplete multipart upload (`abort_multipart_uploads`, or the
bucket's AbortIncompleteMultipartUpload lifecycle rule, removes it).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import secrets
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

from moorage.domain.digest import HEX_LENGTH, Digest
from moorage.storage.base import UploadBusyError, UploadMissingError
from moorage.storage.s3_objects import BlobReader, Lease, is_conflict, is_missing

log = logging.getLogger(__name__)
MiB = 1 << 20
_DELETE_BATCH = 1000  # DeleteObjects accepts at most 1000 keys


@dataclass(frozen=True)
class S3Options:
    bucket: str
    endpoint: str | None = None
    region: str = "us-east-1"
    access_key: str | None = None  # None: boto3's own chain (environment, profile, role)
    secret_key: str | None = None
    prefix: str = ""
    part_size: int = 8 * MiB  # S3 requires >= 5 MiB for every part but the last
    lease_seconds: float = 15.0
    max_parallel: int = 8


class S3Storage:
    def __init__(self, options: S3Options, client: Any = None) -> None:
        if options.part_size < 5 * MiB:
            raise ValueError("S3 parts must be at least 5 MiB")
        self.options = options
        self._bucket = options.bucket
        prefix = options.prefix.strip("/")
        self._prefix = f"{prefix}/" if prefix else ""
        # botocore's debug records carry signed requests: never in Moorage's logs.
        for name in ("boto3", "botocore", "s3transfer", "urllib3"):
            logging.getLogger(name).setLevel(max(logging.INFO, logging.getLogger(name).level))
        self._client = client if client is not None else self._make_client(options)
        self._pool = ThreadPoolExecutor(options.max_parallel, thread_name_prefix="s3")
        self._writers: dict[str, S3UploadWriter] = {}
        self._writers_lock = threading.Lock()

    @staticmethod
    def _make_client(options: S3Options) -> Any:
        config = BotoConfig(
            max_pool_connections=max(32, options.max_parallel * 2),
            retries={"max_attempts": 4, "mode": "standard"},
            signature_version="s3v4",
            # Self-hosted endpoints (MinIO, Ceph, moto) rarely have per-bucket DNS names.
            s3={"addressing_style": "path" if options.endpoint else "auto"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        return boto3.session.Session().client(
            "s3",
            endpoint_url=options.endpoint,
            region_name=options.region,
            aws_access_key_id=options.access_key,
            aws_secret_access_key=options.secret_key,
            config=config,
        )

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # keys

    def _blob_key(self, digest: Digest) -> str:
        return f"{self._prefix}blobs/{digest.algorithm}/{digest.hex[:2]}/{digest.hex}"

    def _upload_dir(self, upload_id: str) -> str:
        if not upload_id or "/" in upload_id or "." in upload_id:
            raise UploadMissingError(upload_id)
        return f"{self._prefix}uploads/{upload_id}/"

    # low-level helpers

    def _put(self, key: str, body: bytes, **conditions: str) -> str:
        response = self._client.put_object(Bucket=self._bucket, Key=key, Body=body, **conditions)
        return str(response["ETag"])

    def _put_unconditional(self, key: str, body: bytes) -> None:
        self._client.put_object(Bucket=self._bucket, Key=key, Body=body)

    def _get(self, key: str) -> tuple[bytes, str, float] | None:
        try:
            response = self._client.get_object(Bucket=self._bucket, Key=key)
        except ClientError as error:
            if is_missing(error):
                return None
            raise
        with response["Body"] as body:
            data = body.read()
        return data, str(response["ETag"]), response["LastModified"].timestamp()

    def _head(self, key: str) -> dict[str, Any] | None:
        try:
            return dict(self._client.head_object(Bucket=self._bucket, Key=key))
        except ClientError as error:
            if is_missing(error):
                return None
            raise

    def _list(self, prefix: str) -> Iterator[dict[str, Any]]:
        paginator = self._client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self._bucket, Prefix=prefix):
            yield from page.get("Contents", [])

    def delete_keys(self, keys: Iterable[str]) -> int:
        """Bulk delete (DeleteObjects, 1000 keys a request); how many were deleted."""
        deleted = 0
        batch: list[str] = []
        for key in keys:
            batch.append(key)
            if len(batch) == _DELETE_BATCH:
                deleted += self._delete_batch(batch)
                batch = []
        if batch:
            deleted += self._delete_batch(batch)
        return deleted

    def _delete_batch(self, keys: list[str]) -> int:
        response = self._client.delete_objects(
            Bucket=self._bucket,
            Delete={"Objects": [{"Key": key} for key in keys], "Quiet": True},
        )
        errors = response.get("Errors", [])
        if errors:
            first = errors[0]
            raise OSError(f"S3 refused to delete {len(errors)} keys: {first.get('Code')}")
        return len(keys)

    # uploads

    def create_upload(self, upload_id: str) -> None:
        state = _UploadState(size=0, parts=[], digest=None)
        try:
            self._put(self._upload_dir(upload_id) + "state", state.encode(), IfNoneMatch="*")
        except ClientError as error:
            if is_conflict(error):
                raise FileExistsError(upload_id) from None
            raise

    def open_upload(self, upload_id: str) -> S3UploadWriter:
        directory = self._upload_dir(upload_id)
        lease = Lease.acquire(self, directory + "lock", upload_id)
        try:
            found = self._get(directory + "state")
            if found is None:
                raise UploadMissingError(upload_id)
            writer = S3UploadWriter(self, upload_id, lease, _UploadState.decode(found[0]), found[1])
        except BaseException:
            lease.release()
            raise
        with self._writers_lock:
            self._writers[upload_id] = writer
        return writer

    def _forget_writer(self, writer: S3UploadWriter) -> None:
        with self._writers_lock:
            if self._writers.get(writer.upload_id) is writer:
                del self._writers[writer.upload_id]

    def _read_state(self, upload_id: str) -> tuple[_UploadState, float] | None:
        try:
            found = self._get(self._upload_dir(upload_id) + "state")
        except UploadMissingError:
            return None
        if found is None:
            return None
        return _UploadState.decode(found[0]), found[2]

    def upload_size(self, upload_id: str) -> int | None:
        found = self._read_state(upload_id)
        return None if found is None else found[0].size

    def upload_activity(self, upload_id: str) -> float | None:
        try:
            head = self._head(self._upload_dir(upload_id) + "state")
        except UploadMissingError:
            return None
        return None if head is None else float(head["LastModified"].timestamp())

    def delete_upload(self, upload_id: str) -> None:
        directory = self._upload_dir(upload_id)
        with self._writers_lock:
            writer = self._writers.get(upload_id)
        if writer is not None:
            writer.deleted = True
        # The state goes first: from then on the session is gone for every node.
        keys = sorted((item["Key"] for item in self._list(directory)), key=_state_first)
        self.delete_keys(keys)

    def delete_upload_if_idle(self, upload_id: str) -> bool:
        try:
            writer = self.open_upload(upload_id)
        except (UploadMissingError, UploadBusyError):
            return False
        try:
            self.delete_upload(upload_id)
        finally:
            writer.abandon()
        return True

    def save_digest_state(self, upload_id: str, size: int, state: bytes) -> None:
        # Saved with the session's state when the writer stores its bytes (see the module's
        # docstring): never on its own, or it could describe bytes another node replaced.
        with self._writers_lock:
            writer = self._writers.get(upload_id)
        if writer is not None and writer.size == size:
            writer.digest_state = (size, state)

    def load_digest_state(self, upload_id: str) -> tuple[int, bytes] | None:
        with self._writers_lock:
            writer = self._writers.get(upload_id)
        if writer is not None:
            return writer.digest_state
        found = self._read_state(upload_id)
        return None if found is None else found[0].digest

    def list_uploads(self) -> Iterator[tuple[str, float]]:
        base = f"{self._prefix}uploads/"
        for item in self._list(base):
            upload_id, _, name = item["Key"][len(base) :].partition("/")
            if name == "state":
                yield upload_id, float(item["LastModified"].timestamp())

    def abort_multipart_uploads(self, older_than: float) -> int:
        """Abort multipart uploads started before `older_than` (left by crashed commits)."""
        aborted = 0
        paginator = self._client.get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=self._bucket, Prefix=self._prefix):
            for upload in page.get("Uploads", []):
                if upload["Initiated"].timestamp() < older_than:
                    self._client.abort_multipart_upload(
                        Bucket=self._bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    aborted += 1
        return aborted

    # blobs

    def blob_size(self, digest: Digest) -> int | None:
        head = self._head(self._blob_key(digest))
        return None if head is None else int(head["ContentLength"])

    def local_path(self, digest: Digest) -> Path | None:
        return None

    def blob_url(self, digest: Digest, expires_seconds: int) -> str | None:
        """A presigned GET URL (computed locally, no request)."""
        return str(
            self._client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self._bucket, "Key": self._blob_key(digest)},
                ExpiresIn=expires_seconds,
            )
        )

    def open_blob(self, digest: Digest) -> BinaryIO:
        key = self._blob_key(digest)
        try:
            response = self._client.get_object(Bucket=self._bucket, Key=key)
        except ClientError as error:
            if is_missing(error):
                raise FileNotFoundError(str(digest)) from None
            raise
        raw = BlobReader(self._client, self._bucket, key, response)
        return io.BufferedReader(raw, buffer_size=MiB)

    def delete_blob(self, digest: Digest) -> None:
        self._client.delete_object(Bucket=self._bucket, Key=self._blob_key(digest))

    def delete_blobs(self, digests: Iterable[Digest]) -> int:
        return self.delete_keys(self._blob_key(digest) for digest in digests)

    def list_blobs(self) -> Iterator[Digest]:
        base = f"{self._prefix}blobs/"
        for item in self._list(base):
            algorithm, _, rest = item["Key"][len(base) :].partition("/")
            hex_value = rest.rpartition("/")[2]
            if (
                HEX_LENGTH.get(algorithm) == len(hex_value)
                and rest == f"{hex_value[:2]}/{hex_value}"
            ):
                yield Digest(algorithm, hex_value)

    # commit (called by the writer)

    def _assemble(self, target: str, parts: list[tuple[str, int]], tail: bytes) -> None:
        """Create `target` from staged part objects plus `tail`, atomically."""
        if not parts:
            self._put(target, tail)
            return
        if len(parts) == 1 and not tail:
            self._client.copy_object(
                Bucket=self._bucket,
                Key=target,
                CopySource={"Bucket": self._bucket, "Key": parts[0][0]},
            )
            return
        started = self._client.create_multipart_upload(
            Bucket=self._bucket, Key=target, ContentType="application/octet-stream"
        )
        upload = started["UploadId"]
        try:
            copies = [
                self._pool.submit(self._copy_part, target, upload, number, key)
                for number, (key, _) in enumerate(parts, start=1)
            ]
            completed = [future.result() for future in copies]
            if tail:
                response = self._client.upload_part(
                    Bucket=self._bucket, Key=target, UploadId=upload,
                    PartNumber=len(parts) + 1, Body=tail,
                )  # fmt: skip
                completed.append({"PartNumber": len(parts) + 1, "ETag": response["ETag"]})
            self._client.complete_multipart_upload(
                Bucket=self._bucket, Key=target, UploadId=upload,
                MultipartUpload={"Parts": completed},
            )  # fmt: skip
        except BaseException:
            self._client.abort_multipart_upload(Bucket=self._bucket, Key=target, UploadId=upload)
            raise

    def _copy_part(self, target: str, upload: str, number: int, source: str) -> dict[str, Any]:
        response = self._client.upload_part_copy(
            Bucket=self._bucket, Key=target, UploadId=upload, PartNumber=number,
            CopySource={"Bucket": self._bucket, "Key": source},
        )  # fmt: skip
        return {"PartNumber": number, "ETag": response["CopyPartResult"]["ETag"]}


def _state_first(key: str) -> tuple[bool, str]:
    return (not key.endswith("/state"), key)


@dataclass
class _UploadState:
    size: int
    parts: list[tuple[str, int]]  # (key name within the session, bytes)
    digest: tuple[int, bytes] | None

    def encode(self) -> bytes:
        digest = None
        if self.digest is not None:
            digest = [self.digest[0], base64.b64encode(self.digest[1]).decode()]
        document = {"size": self.size, "parts": self.parts, "digest": digest}
        # A fresh nonce keeps every version's ETag (an MD5 of the body) distinct.
        return json.dumps({**document, "nonce": secrets.token_hex(8)}).encode()

    @classmethod
    def decode(cls, raw: bytes) -> _UploadState:
        document = json.loads(raw)
        digest = document.get("digest")
        return cls(
            size=int(document["size"]),
            parts=[(str(name), int(size)) for name, size in document["parts"]],
            digest=None if digest is None else (int(digest[0]), base64.b64decode(digest[1])),
        )


class S3UploadWriter:
    def __init__(
        self, storage: S3Storage, upload_id: str, lease: Lease, state: _UploadState, etag: str
    ) -> None:
        self._storage = storage
        self.upload_id = upload_id
        self._lease = lease
        self._etag = etag
        self._directory = storage._upload_dir(upload_id)
        self._part_size = storage.options.part_size
        self._parts = list(state.parts)
        self._opened_parts = {name for name, _ in state.parts}
        self._obsolete: list[str] = []
        self.digest_state = state.digest
        self._size = state.size
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._pending: list[Future[None]] = []
        self._changed = False
        self._closed = False
        self.deleted = False  # cancelled by a request of this node while open
        # A short last part goes back into the buffer, so every stored part but the last is
        # exactly part_size (as UploadPartCopy requires).
        if self._parts and self._parts[-1][1] < self._part_size:
            name, size = self._parts.pop()
            found = storage._get(self._directory + name)
            if found is None or len(found[0]) != size:
                raise UploadMissingError(upload_id)
            self._chunks.append(found[0])
            self._buffered = size
            self._obsolete.append(name)

    @property
    def size(self) -> int:
        return self._size

    def write(self, chunk: bytes) -> None:
        # Called on the event loop: only buffering here; full parts go to worker threads.
        if self._lease.lost:
            raise UploadBusyError(self.upload_id)
        self._chunks.append(bytes(chunk))
        self._buffered += len(chunk)
        self._size += len(chunk)
        self._changed = True
        self.digest_state = None
        if self._buffered >= self._part_size:
            data = b"".join(self._chunks)
            offset = self._size - len(data)
            start = 0
            while len(data) - start >= self._part_size:
                self._stage(data[start : start + self._part_size], offset + start)
                start += self._part_size
            rest = data[start:]
            self._chunks = [rest] if rest else []
            self._buffered = len(rest)

    def _stage(self, data: bytes, offset: int) -> None:
        name = f"part-{offset:016x}-{secrets.token_hex(4)}"
        self._parts.append((name, len(data)))
        while len(self._pending) >= self._storage.options.max_parallel // 2:
            self._pending.pop(0).result()
        key = self._directory + name
        self._pending.append(
            self._storage._pool.submit(self._storage._put_unconditional, key, data)
        )

    def _wait(self) -> None:
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def _tail(self) -> bytes:
        return b"".join(self._chunks)

    def read_all(self) -> Iterator[bytes]:
        self._wait()
        for name, _ in self._parts:
            response = self._storage._client.get_object(
                Bucket=self._storage._bucket, Key=self._directory + name
            )
            with response["Body"] as body:
                while chunk := body.read(MiB):
                    yield chunk
        tail = self._tail()
        if tail:
            yield tail

    def _store(self) -> None:
        """Store the buffered bytes and replace the state (only if this writer still owns it)."""
        self._wait()
        tail = self._tail()
        parts = list(self._parts)
        if tail:
            name = f"part-{self._size - len(tail):016x}-{secrets.token_hex(4)}"
            self._storage._put(self._directory + name, tail)
            parts.append((name, len(tail)))
        state = _UploadState(self._size, parts, self.digest_state)
        try:
            self._etag = self._storage._put(
                self._directory + "state", state.encode(), IfMatch=self._etag
            )
        except ClientError as error:
            if not (is_conflict(error) or is_missing(error)):
                raise
            # Not ours any more: our staged parts belong to nobody.
            self._storage.delete_keys(self._directory + name for name in self._new_parts(parts))
            if self._storage._head(self._directory + "state") is None:
                return  # the session was cancelled meanwhile: nothing to keep
            raise UploadBusyError(self.upload_id) from None
        if self._obsolete:
            self._storage.delete_keys(self._directory + name for name in self._obsolete)

    def _new_parts(self, parts: list[tuple[str, int]]) -> list[str]:
        return [name for name, _ in parts if name not in self._opened_parts]

    def commit(self, digest: Digest) -> None:
        self._wait()
        if self._lease.lost:
            raise UploadBusyError(self.upload_id)
        # Fencing: the session must still be the one this writer opened.
        head = self._storage._head(self._directory + "state")
        if head is None or head["ETag"] != self._etag:
            raise UploadBusyError(self.upload_id)
        self._storage._assemble(
            self._storage._blob_key(digest),
            [(self._directory + name, size) for name, size in self._parts],
            self._tail(),
        )
        self._closed = True
        self._lease.release()
        self._storage._forget_writer(self)
        self._storage.delete_upload(self.upload_id)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self.deleted:
                self._discard()
            elif self._changed:
                self._store()
        finally:
            self._lease.release()
            self._storage._forget_writer(self)

    def _discard(self) -> None:
        """Remove the parts this writer staged (the session is gone)."""
        for future in self._pending:
            future.exception()  # wait; a failed upload left nothing to remove
        self._pending = []
        self._storage.delete_keys(self._directory + name for name in self._new_parts(self._parts))

    def abandon(self) -> None:
        """Release without storing anything (the session is being deleted)."""
        self._closed = True
        for future in self._pending:
            future.cancel()
        self._lease.release()
        self._storage._forget_writer(self)
