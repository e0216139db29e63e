"""Blob uploads: sessions, chunks, verification and the atomic commit.

A session is its data in storage and nothing else: its id carries the creation time, a nonce
and an HMAC over the repository and the subject that opened it, so any worker can check that a
request names a real session of this repository and this caller without a database row, and
another caller cannot read, append to or cancel it. The bytes a session holds are whatever its
storage file holds, so a chunk cut short by a crash or a dropped connection is simply a shorter
upload the client can resume.

Every step of a session (status, chunk, finish) is a push:blob decision, not only opening it,
and the finishing step decides once more just before it commits: a project that became
promotion-only while a session was open refuses the session's next step, and the session's
bytes are discarded, so nothing that was uploaded before the change lands after it.

After each chunk the digest state of the bytes so far is saved beside the upload, so the next
chunk can continue it on whichever worker receives it; when the state is missing or stale (a
crash between writing a chunk and saving its state), it is rebuilt from the stored bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Final

from moorage.domain.digest import Digest
from moorage.domain.errors import ErrorCode, RegistryError
from moorage.domain.events import Actor, EventKind, RegistryEvent
from moorage.domain.quotas import QuotaExceededError
from moorage.domain.ranges import ByteRange
from moorage.hashing import ResumableHasher, new_resumable, resume
from moorage.metadata.registry.store import MetadataStore
from moorage.services.events import EventBus
from moorage.services.registry.blob_claims import claim_blob, link_blob
from moorage.services.threads import Threads
from moorage.storage.base import StorageDriver, UploadBusyError, UploadMissingError, UploadWriter

log = logging.getLogger("moorage.uploads")

_CHUNK_ALGORITHM: Final = "sha256"  # what a chunked upload is hashed with until its PUT says


@dataclass(frozen=True, slots=True)
class UploadLimits:
    max_blob_bytes: int
    expiry: timedelta


class UploadIds:
    """Self-verifying session ids: 8 hex digits of creation time, 16 of nonce, 32 of HMAC.

    The key is shared by every worker; it is loaded once (at startup) from `load_key`.
    """

    def __init__(self, load_key: Callable[[], bytes]) -> None:
        self._load_key = load_key
        self._key: bytes | None = None

    def load(self) -> None:
        if self._key is None:
            self._key = self._load_key()

    def _mac(self, repository: str, owner: str, prefix: str) -> str:
        self.load()
        assert self._key is not None
        message = f"{repository}\0{owner}\0{prefix}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()[:32]

    def new(self, repository: str, owner: str) -> str:
        prefix = f"{int(time.time()):08x}{secrets.token_hex(8)}"
        return prefix + self._mac(repository, owner, prefix)

    def belongs_to(self, upload_id: str, repository: str, owner: str) -> bool:
        if len(upload_id) != 56:
            return False
        prefix, mac = upload_id[:24], upload_id[24:]
        return hmac.compare_digest(mac, self._mac(repository, owner, prefix))


# The push:blob checks for a repository and caller; raises DENIED when a policy refuses.
Authorize = Callable[[str, Actor], Awaitable[None]]


class UploadService:
    def __init__(
        self,
        storage: StorageDriver,
        metadata: MetadataStore,
        threads: Threads,
        events: EventBus,
        limits: UploadLimits,
        ids: UploadIds,
        *,
        authorize: Authorize | None = None,
    ) -> None:
        self._storage = storage
        self._metadata = metadata
        self._threads = threads
        self._events = events
        self._limits = limits
        self.ids = ids
        self._authorize = authorize

    async def start(self, repository: str, actor: Actor) -> str:
        upload_id = self.ids.new(repository, actor.identity)
        await self._threads.run(self._storage.create_upload, upload_id)
        return upload_id

    def _check_session(self, repository: str, upload_id: str, actor: Actor) -> None:
        if not self.ids.belongs_to(upload_id, repository, actor.identity):
            raise RegistryError(ErrorCode.BLOB_UPLOAD_UNKNOWN, "upload session not found")
        last_activity = self._storage.upload_activity(upload_id)
        if last_activity is None:
            raise RegistryError(ErrorCode.BLOB_UPLOAD_UNKNOWN, "upload session not found")
        if time.time() - last_activity > self._limits.expiry.total_seconds():
            raise RegistryError(ErrorCode.BLOB_UPLOAD_UNKNOWN, "upload session expired")

    async def _decide(self, repository: str, upload_id: str | None, actor: Actor) -> None:
        """The push:blob decision for one step; a refusal discards the caller's session.

        It comes before the session is looked up, so every later step of a discarded session
        is answered with the same refusal rather than "unknown upload".
        """
        if self._authorize is None:
            return
        try:
            await self._authorize(repository, actor)
        except RegistryError as error:
            if (
                error.code is ErrorCode.DENIED
                and upload_id is not None
                and self.ids.belongs_to(upload_id, repository, actor.identity)
            ):
                await self._threads.run(self._storage.delete_upload, upload_id)
            raise

    async def status(self, repository: str, upload_id: str, actor: Actor) -> int:
        await self._decide(repository, upload_id, actor)
        await self._threads.run(self._check_session, repository, upload_id, actor)
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
        actor: Actor,
    ) -> int:
        """Append one chunk; returns the session's new size."""
        await self._decide(repository, upload_id, actor)
        await self._threads.run(self._check_session, repository, upload_id, actor)
        writer = await self._threads.run(self._open, upload_id)
        try:
            self._check_chunk(writer.size, chunk_range, content_length)
            hasher = await self._hasher_for(upload_id, writer, _CHUNK_ALGORITHM)
            await self._stream(writer, hasher, body, content_length)
            state = hasher.state()
            if state is not None:
                await self._threads.run(
                    self._storage.save_digest_state, upload_id, writer.size, state
                )
            return writer.size
        finally:
            # A remote driver stores its buffered bytes here: off the event loop.
            await self._threads.run(writer.close)

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
        await self._decide(repository, upload_id, actor)
        await self._threads.run(self._check_session, repository, upload_id, actor)
        writer = await self._threads.run(self._open, upload_id)
        try:
            if content_length:
                self._check_chunk(writer.size, chunk_range, content_length)
            hasher = await self._hasher_for(upload_id, writer, digest.algorithm)
            await self._stream(writer, hasher, body, content_length)
            # Streaming the last chunk can outlast a change of the project's mode.
            await self._decide(repository, upload_id, actor)
            size = await self._verify_and_commit(writer, hasher, digest)
        except RegistryError as error:
            if error.code is ErrorCode.DIGEST_INVALID:
                # The session's bytes can never become this blob: drop them, keep nothing.
                await self._threads.run(self._storage.delete_upload, upload_id)
            raise
        finally:
            await self._threads.run(writer.close)
        await self._link(repository, digest, size, actor)
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
        """A single-request upload (`POST ?digest=`)."""
        upload_id = self.ids.new(repository, actor.identity)
        await self._threads.run(self._storage.create_upload, upload_id)
        writer = await self._threads.run(self._open, upload_id)
        committed = False
        try:
            hasher = new_resumable(digest.algorithm)
            await self._stream(writer, hasher, body, content_length)
            # As in `finish`: decide again once the body is in (the bytes go when refused).
            await self._decide(repository, None, actor)
            size = await self._verify_and_commit(writer, hasher, digest)
            committed = True
        finally:
            await self._threads.run(writer.close)
            if not committed:
                await self._threads.run(self._storage.delete_upload, upload_id)
        await self._link(repository, digest, size, actor)
        self._events.publish(
            RegistryEvent(EventKind.BLOB_PUSHED, repository, str(digest), size=size, actor=actor)
        )
        return size

    async def cancel(self, repository: str, upload_id: str, actor: Actor) -> None:
        await self._threads.run(self._check_session, repository, upload_id, actor)
        await self._threads.run(self._storage.delete_upload, upload_id)
        self._events.publish(RegistryEvent(EventKind.UPLOAD_CANCELLED, repository, actor=actor))

    async def purge_expired(self) -> int:
        """Remove sessions idle past their expiry (never one a request is writing to)."""
        return await self._threads.run(self._purge_expired_sync)

    def _purge_expired_sync(self) -> int:
        cutoff = time.time() - self._limits.expiry.total_seconds()
        stale = [upload_id for upload_id, mtime in self._storage.list_uploads() if mtime < cutoff]
        removed = sum(1 for upload_id in stale if self._storage.delete_upload_if_idle(upload_id))
        if removed:
            log.info("purged %d expired upload sessions", removed)
        return removed

    # -- internals

    async def _link(self, repository: str, digest: Digest, size: int, actor: Actor) -> None:
        try:
            await link_blob(self._metadata, self._threads, repository, str(digest), size)
        except QuotaExceededError as error:
            # The committed bytes stay unlinked: garbage collection removes them.
            self._events.publish(error.denied_event(actor, repository, "push:blob"))
            raise

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

    async def _hasher_for(
        self, upload_id: str, writer: UploadWriter, algorithm: str
    ) -> ResumableHasher:
        """The digest state of the session's current bytes: saved, or rebuilt from storage."""
        if writer.size == 0:
            return new_resumable(algorithm)
        saved = await self._threads.run(self._storage.load_digest_state, upload_id)
        if saved is not None and saved[0] == writer.size:
            resumed = resume(algorithm, saved[1])
            if resumed is not None:
                return resumed
        hasher = new_resumable(algorithm)

        def rehash() -> None:
            for chunk in writer.read_all():
                hasher.update(chunk)

        await self._threads.run(rehash)
        return hasher

    async def _stream(
        self,
        writer: UploadWriter,
        hasher: ResumableHasher,
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
        self, writer: UploadWriter, hasher: ResumableHasher, digest: Digest
    ) -> int:
        actual = Digest(digest.algorithm, hasher.hexdigest())
        if actual != digest:
            raise RegistryError(
                ErrorCode.DIGEST_INVALID,
                f"uploaded content has digest {actual}, not {digest}",
                detail={"expected": str(digest), "actual": str(actual)},
            )
        size = writer.size
        await claim_blob(self._metadata, self._threads, str(digest), size)
        await self._threads.run(writer.commit, digest)
        return size


def range_header(size: int) -> str:
    return _range_header(size)


def _range_header(size: int) -> str:
    # An empty upload reports "0-0" as Distribution does; clients read it as offset 0.
    return f"0-{max(size - 1, 0)}"
