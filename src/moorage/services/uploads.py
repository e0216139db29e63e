"""Blob uploads: sessions, chunks, verification and the atomic commit.

The bytes a session holds are whatever its storage file holds, so a chunk cut short by a crash
or a dropped connection is simply a shorter upload the client can resume. A sha256 state is
kept per session in this process; when a request lands on a worker that does not have the state
for the session's current size (another worker appended, or the server restarted), the state is
rebuilt from the stored bytes.
"""

from __future__ import annotations

import logging
import secrets
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from time import time

from moorage.domain.digest import Digest, Hasher, new_hasher
from moorage.domain.errors import ErrorCode, RegistryError
from moorage.domain.events import Actor, EventKind, RegistryEvent
from moorage.domain.ranges import ByteRange
from moorage.metadata.store import MetadataStore, UploadRecord
from moorage.services.events import EventBus
from moorage.services.threads import Threads
from moorage.storage.base import StorageDriver, UploadBusyError, UploadMissingError, UploadWriter

log = logging.getLogger("moorage.uploads")

_MAX_HASH_STATES = 1024


@dataclass(frozen=True, slots=True)
class UploadLimits:
    max_blob_bytes: int
    expiry: timedelta


class _HashStates:
    """Per-process digest states of open sessions, valid only at the exact size recorded."""

    def __init__(self) -> None:
        self._states: OrderedDict[str, tuple[int, str, Hasher]] = OrderedDict()

    def take(self, upload_id: str, size: int, algorithm: str) -> Hasher | None:
        state = self._states.pop(upload_id, None)
        if state is None or state[0] != size or state[1] != algorithm:
            return None
        return state[2]

    def keep(self, upload_id: str, size: int, algorithm: str, hasher: Hasher) -> None:
        self._states[upload_id] = (size, algorithm, hasher)
        while len(self._states) > _MAX_HASH_STATES:
            self._states.popitem(last=False)

    def drop(self, upload_id: str) -> None:
        self._states.pop(upload_id, None)


class UploadService:
    def __init__(
        self,
        storage: StorageDriver,
        metadata: MetadataStore,
        threads: Threads,
        events: EventBus,
        limits: UploadLimits,
    ) -> None:
        self._storage = storage
        self._metadata = metadata
        self._threads = threads
        self._events = events
        self._limits = limits
        self._hashes = _HashStates()

    async def start(self, repository: str, actor: Actor) -> str:
        upload_id = _new_upload_id()
        await self._threads.run(self._storage.create_upload, upload_id)
        await self._threads.run(self._metadata.create_upload, upload_id, repository, actor.name)
        return upload_id

    async def session(self, repository: str, upload_id: str) -> UploadRecord:
        record = await self._threads.run(self._metadata.get_upload, upload_id)
        if record is None or record.repository != repository:
            raise RegistryError(ErrorCode.BLOB_UPLOAD_UNKNOWN, "upload session not found")
        if datetime.now(UTC) - _aware(record.created_at) > self._limits.expiry:
            raise RegistryError(ErrorCode.BLOB_UPLOAD_UNKNOWN, "upload session expired")
        return record

    async def status(self, repository: str, upload_id: str) -> int:
        await self.session(repository, upload_id)
        size = await self._threads.run(self._storage.upload_size, upload_id)
        if size is None:
            raise RegistryError(ErrorCode.BLOB_UPLOAD_UNKNOWN, "upload session has no data")
        return size

    async def append(
        self,
        repository: str,
        upload_id: str,
        chunk_range: ByteRange | None,
        content_length: int | None,
        body: AsyncIterator[bytes],
    ) -> int:
        """Append one chunk; returns the session's new size."""
        await self.session(repository, upload_id)
        writer = self._open(upload_id)
        try:
            self._check_chunk(writer.size, chunk_range, content_length)
            hasher = await self._hasher_for(upload_id, writer, "sha256")
            await self._stream(writer, hasher, body, content_length)
            self._hashes.keep(upload_id, writer.size, "sha256", hasher)
            return writer.size
        finally:
            writer.close()

    async def finish(
        self,
        repository: str,
        upload_id: str,
        digest: Digest,
        chunk_range: ByteRange | None,
        content_length: int | None,
        body: AsyncIterator[bytes],
        actor: Actor,
    ) -> int:
        """Append the optional last chunk, verify the whole blob and commit it; its size."""
        await self.session(repository, upload_id)
        writer = self._open(upload_id)
        try:
            if content_length:
                self._check_chunk(writer.size, chunk_range, content_length)
            hasher = await self._hasher_for(upload_id, writer, digest.algorithm)
            await self._stream(writer, hasher, body, content_length)
            size = await self._verify_and_commit(writer, hasher, digest, upload_id)
        except RegistryError as error:
            if error.code is ErrorCode.DIGEST_INVALID:
                # The session's bytes can never become this blob: drop them, keep nothing.
                await self._threads.run(self._storage.delete_upload, upload_id)
                await self._threads.run(self._metadata.delete_upload, upload_id)
            raise
        finally:
            writer.close()
        await self._threads.run(
            self._metadata.finish_upload, upload_id, repository, str(digest), size
        )
        self._events.publish(
            RegistryEvent(EventKind.BLOB_PUSHED, repository, str(digest), size=size, actor=actor)
        )
        return size

    async def monolithic(
        self,
        repository: str,
        digest: Digest,
        content_length: int | None,
        body: AsyncIterator[bytes],
        actor: Actor,
    ) -> int:
        """A single-request upload (`POST ?digest=`): no session row is ever written."""
        upload_id = _new_upload_id()
        await self._threads.run(self._storage.create_upload, upload_id)
        writer = self._open(upload_id)
        committed = False
        try:
            hasher = digest.hasher()
            await self._stream(writer, hasher, body, content_length)
            size = await self._verify_and_commit(writer, hasher, digest, upload_id)
            committed = True
        finally:
            writer.close()
            if not committed:
                await self._threads.run(self._storage.delete_upload, upload_id)
        await self._threads.run(self._metadata.link_blob, repository, str(digest), size)
        self._events.publish(
            RegistryEvent(EventKind.BLOB_PUSHED, repository, str(digest), size=size, actor=actor)
        )
        return size

    async def cancel(self, repository: str, upload_id: str, actor: Actor) -> None:
        await self.session(repository, upload_id)
        self._hashes.drop(upload_id)
        await self._threads.run(self._storage.delete_upload, upload_id)
        await self._threads.run(self._metadata.delete_upload, upload_id)
        self._events.publish(RegistryEvent(EventKind.UPLOAD_CANCELLED, repository, actor=actor))

    async def purge_expired(self) -> int:
        """Remove sessions past their expiry, and upload files no session owns (crash leftovers)."""
        return await self._threads.run(self._purge_expired_sync)

    def _purge_expired_sync(self) -> int:
        cutoff = datetime.now(UTC) - self._limits.expiry
        removed = 0
        for upload_id in self._metadata.uploads_created_before(cutoff):
            self._storage.delete_upload(upload_id)
            self._metadata.delete_upload(upload_id)
            removed += 1
        stale_files = [
            upload_id
            for upload_id, mtime in self._storage.list_uploads()
            if mtime < time() - self._limits.expiry.total_seconds()
        ]
        owned = self._metadata.upload_ids(stale_files)
        for upload_id in stale_files:
            if upload_id not in owned:
                self._storage.delete_upload(upload_id)
                removed += 1
        if removed:
            log.info("purged %d expired upload sessions", removed)
        return removed

    # -- internals

    def _open(self, upload_id: str) -> UploadWriter:
        try:
            return self._storage.open_upload(upload_id)
        except UploadMissingError:
            raise RegistryError(
                ErrorCode.BLOB_UPLOAD_UNKNOWN, "upload session has no data"
            ) from None
        except UploadBusyError:
            raise RegistryError(
                ErrorCode.BLOB_UPLOAD_INVALID,
                "another request is writing to this upload session",
                status=416,
            ) from None

    def _check_chunk(
        self, size: int, chunk_range: ByteRange | None, content_length: int | None
    ) -> None:
        if chunk_range is None:
            return
        if chunk_range.start != size:
            raise RegistryError(
                ErrorCode.BLOB_UPLOAD_INVALID,
                f"chunk starts at {chunk_range.start} but the upload has {size} bytes",
                status=416,
                headers={"Range": _range_header(size)},
            )
        if content_length is not None and content_length != chunk_range.length:
            raise RegistryError(
                ErrorCode.BLOB_UPLOAD_INVALID,
                f"Content-Range covers {chunk_range.length} bytes but Content-Length is"
                f" {content_length}",
                status=416,
                headers={"Range": _range_header(size)},
            )

    async def _hasher_for(self, upload_id: str, writer: UploadWriter, algorithm: str) -> Hasher:
        hasher = self._hashes.take(upload_id, writer.size, algorithm)
        if hasher is not None:
            return hasher
        hasher = new_hasher(algorithm)
        if writer.size:

            def rehash() -> None:
                for chunk in writer.read_all():
                    hasher.update(chunk)

            await self._threads.run(rehash)
        return hasher

    async def _stream(
        self,
        writer: UploadWriter,
        hasher: Hasher,
        body: AsyncIterator[bytes],
        content_length: int | None,
    ) -> None:
        limit = self._limits.max_blob_bytes
        if content_length is not None and writer.size + content_length > limit:
            raise RegistryError(
                ErrorCode.SIZE_INVALID, f"blobs are limited to {limit} bytes", status=413
            )
        # Hashing and writing inline on the event loop measured faster than a thread hop:
        # both are bounded by the chunk size the HTTP layer hands us.
        async for chunk in body:
            if writer.size + len(chunk) > limit:
                raise RegistryError(
                    ErrorCode.SIZE_INVALID, f"blobs are limited to {limit} bytes", status=413
                )
            writer.write(chunk)
            hasher.update(chunk)

    async def _verify_and_commit(
        self, writer: UploadWriter, hasher: Hasher, digest: Digest, upload_id: str
    ) -> int:
        self._hashes.drop(upload_id)
        actual = Digest(digest.algorithm, hasher.hexdigest())
        if actual != digest:
            raise RegistryError(
                ErrorCode.DIGEST_INVALID,
                f"uploaded content has digest {actual}, not {digest}",
                detail={"expected": str(digest), "actual": str(actual)},
            )
        size = writer.size
        await self._threads.run(writer.commit, digest)
        return size


def range_header(size: int) -> str:
    return _range_header(size)


def _range_header(size: int) -> str:
    # An empty upload reports "0-0" as Distribution does; clients read it as offset 0.
    return f"0-{max(size - 1, 0)}"


def _new_upload_id() -> str:
    return secrets.token_urlsafe(24)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
