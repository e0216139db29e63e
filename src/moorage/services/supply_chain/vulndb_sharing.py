"""The vulnerability database shared by every node of a deployment.

Nodes share the metadata database and the blob storage, nothing else, so:

- a generation's SQLite file is stored through the storage driver as a content-addressed blob
  (sha256 of the file), never by a path of the shared store;
- the pointer (current generation, history for rollback, a version that changes with every
  move) and each kept generation's digest and metadata are rows in the metadata database
  (`vulndb_pointer`, `vulndb_generations`); `status` needs no file;
- the import/rollback lock is a lease in the pointer row (renewed while held), so it works
  across nodes; the pointer only moves while its owner still holds the lease;
- each node keeps a cache directory of generation files: fetched from storage on first use
  (the digest verified while streaming), and verified again whenever a process opens one, so
  a damaged cached file is fetched again rather than read.

Re-matching reports after a change is not done here: the scan service's compare-and-set of
the matched generation (scan_state) makes exactly one process queue the re-matches.

The generation blobs are linked to no repository: garbage collection (issue 13) must treat the
digests in `vulndb_generations` as referenced. Blobs of generations that leave the history are
deleted here, unless the registry's blob table names the same digest.

Data directories of earlier versions kept the generations and a `CURRENT` file under
`<data_dir>/vulndb`; the first process to start on one adopts them (uploads the current and
history generations, fills the tables) and renames `CURRENT` to `CURRENT.adopted`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from moorage.domain.digest import Digest
from moorage.metadata.supply_chain.vulndb_store import (
    LockLostError,
    StoredGeneration,
    VulndbStore,
)
from moorage.storage.base import StorageDriver
from moorage.vulnerability.generation import (
    GenerationInfo,
    info_from_meta,
    open_readonly,
    read_meta,
)
from moorage.vulnerability.local_store import (
    GENERATIONS,
    LOCK,
    POINTER,
    fsync_directory,
    read_pointer_file,
)
from moorage.vulnerability.store import DatabaseBusyError, Pointer, VulnerabilityDatabaseError

log = logging.getLogger("moorage.vulndb")

LEASE_SECONDS: Final = 60.0
ADOPTED: Final = f"{POINTER}.adopted"
_LOCK_POLL_SECONDS: Final = 0.2
_CHUNK: Final = 1 << 20
_ADOPT_WAIT_SECONDS: Final = 120.0
# A garbage collection deletes a batch of blobs in seconds: a re-import of the same file waits.
_CLAIM_WAIT_SECONDS: Final = 30.0


def file_digest(path: Path) -> tuple[str, int]:
    """(sha256 digest, size) of a file."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return f"sha256:{digest.hexdigest()}", size


class SharedGenerationStore:
    """A `GenerationStore` on the registry's storage and metadata database."""

    def __init__(
        self,
        catalog: VulndbStore,
        storage: StorageDriver,
        cache: Path,
        *,
        legacy: Path | None = None,
        lease_seconds: float = LEASE_SECONDS,
    ) -> None:
        self._catalog = catalog
        self._storage = storage
        self.cache = cache
        self._legacy = legacy
        self._lease_seconds = lease_seconds
        self._owner: str | None = None  # while this process holds the lock
        self._lost = threading.Event()
        self._adopted = legacy is None
        self._verified: dict[str, tuple[int, int, int]] = {}  # id -> stat of a checked file
        self._verify_lock = threading.Lock()
        self._pruned_version = -1
        self._prune_lock = threading.Lock()

    # -- the pointer

    def stamp(self) -> object:
        self._adopt_once()
        return self._catalog.version()

    def pointer(self) -> Pointer:
        self._adopt_once()
        stored = self._catalog.pointer()
        with self._prune_lock:
            # Another node may have moved the pointer: drop what this node cached for
            # generations that are no longer kept (never on an older pointer than last time).
            if stored.version > self._pruned_version:
                self.prune_cache(stored.history)
                self._pruned_version = stored.version
        return Pointer(stored.current, stored.history)

    def has(self, generation_id: str) -> bool:
        return self._catalog.generation(generation_id) is not None

    def info(self, generation_id: str) -> GenerationInfo | None:
        stored = self._catalog.generation(generation_id)
        if stored is None:
            return None
        try:
            return info_from_meta(json.loads(stored.info))
        except (KeyError, ValueError, TypeError):
            return None

    # -- files

    def _cached(self, generation_id: str) -> Path:
        return self.cache / f"{generation_id}.sqlite"

    def file(self, generation_id: str) -> Path:
        stored = self._catalog.generation(generation_id)
        if stored is None:
            raise VulnerabilityDatabaseError(f"generation {generation_id} is no longer kept")
        path = self._cached(generation_id)
        with self._verify_lock:
            try:
                stat = path.stat()
            except FileNotFoundError:
                stat = None
            if stat is not None:
                stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
                if self._verified.get(generation_id) == stamp:
                    return path
                if file_digest(path)[0] == stored.digest:
                    self._verified[generation_id] = stamp
                    return path
                log.warning(
                    "cached vulnerability database generation %s does not match its digest:"
                    " fetching it again",
                    generation_id,
                )
            self._fetch(stored, path)
            stat = path.stat()
            self._verified[generation_id] = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
            return path

    def _fetch(self, stored: StoredGeneration, target: Path) -> None:
        """Copy the generation's blob into the cache, verifying its digest as it streams."""
        self.cache.mkdir(parents=True, exist_ok=True)
        temporary = self.cache / f".fetch-{secrets.token_hex(8)}"
        digest = hashlib.sha256()
        try:
            with (
                self._storage.open_blob(Digest.parse(stored.digest)) as source,
                temporary.open("wb") as file,
            ):
                while chunk := source.read(_CHUNK):
                    digest.update(chunk)
                    file.write(chunk)
                file.flush()
                os.fsync(file.fileno())
            if f"sha256:{digest.hexdigest()}" != stored.digest:
                raise VulnerabilityDatabaseError(
                    f"generation {stored.id} in storage does not match its digest"
                )
            os.replace(temporary, target)
        except VulnerabilityDatabaseError:
            raise
        except Exception as error:  # any driver's "missing" or I/O error: no database now
            raise VulnerabilityDatabaseError(
                f"generation {stored.id} cannot be fetched from storage: {error}"
            ) from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
        log.info("fetched vulnerability database generation %s into the cache", stored.id)

    def _upload(self, path: Path, digest: str) -> None:
        self._claim(digest, path.stat().st_size)
        upload_id = f"vulndb-{secrets.token_hex(16)}"
        self._storage.create_upload(upload_id)
        try:
            writer = self._storage.open_upload(upload_id)
            try:
                with path.open("rb") as file:
                    while chunk := file.read(_CHUNK):
                        writer.write(chunk)
                writer.commit(Digest.parse(digest))
            finally:
                writer.close()
        except BaseException:
            self._storage.delete_upload(upload_id)
            raise

    def _claim(self, digest: str, size: int) -> None:
        """Keep garbage collection off the generation's blob; wait out a deletion of it."""
        deadline = time.monotonic() + _CLAIM_WAIT_SECONDS
        while not self._catalog.claim_blob(digest, size):
            if time.monotonic() >= deadline:
                raise VulnerabilityDatabaseError(
                    f"blob {digest} is being garbage-collected; import again shortly"
                )
            time.sleep(0.2)

    def _stored(self, path: Path, generation_id: str) -> StoredGeneration:
        """Upload a finished generation file; its row, to be inserted."""
        digest, size = file_digest(path)
        connection = open_readonly(path)
        try:
            meta = read_meta(connection)
        finally:
            connection.close()
        self._upload(path, digest)
        return StoredGeneration(generation_id, digest, size, json.dumps(meta, sort_keys=True))

    # -- changing (under the lock)

    def publish(self, built: Path, generation_id: str, keep: int) -> None:
        added = self._stored(built, generation_id)
        history = (generation_id, *self._catalog.pointer().history)[:keep]
        try:
            dropped = self._move(generation_id, history, (added,))
        except BaseException:
            self._forget([added], None)  # never became current: its blob is nobody's
            raise
        # The built file is the stored one: it becomes this node's cached copy.
        self.cache.mkdir(parents=True, exist_ok=True)
        os.replace(built, self._cached(generation_id))
        self._forget(dropped, history)

    def set_pointer(self, pointer: Pointer) -> None:
        assert pointer.current is not None
        dropped = self._move(pointer.current, pointer.history, ())
        self._forget(dropped, pointer.history)

    def _move(
        self, current: str, history: tuple[str, ...], added: tuple[StoredGeneration, ...]
    ) -> list[StoredGeneration]:
        if self._owner is None or self._lost.is_set():
            raise VulnerabilityDatabaseError("the vulnerability database lock was lost")
        try:
            return self._catalog.move(self._owner, current, history, added)
        except LockLostError as error:
            raise VulnerabilityDatabaseError(str(error)) from None

    def _forget(self, dropped: list[StoredGeneration], kept: tuple[str, ...] | None) -> None:
        """Unless `kept` is None, delete the cached files of generations outside `kept`. The
        blobs of `dropped` stay in storage until garbage collection finds nothing referencing
        them (a generation being published may reference the same file again meanwhile)."""
        if dropped:
            log.info("generations %s left to garbage collection", [g.id for g in dropped])
        if kept is not None:
            self.prune_cache(kept)

    def prune_cache(self, kept: tuple[str, ...]) -> None:
        """Delete cached files of generations that are no longer kept. Readers that still have
        one open keep reading it (the inode lives until they close it)."""
        keep = {f"{item}.sqlite" for item in kept}
        for path in self.cache.glob("*.sqlite") if self.cache.is_dir() else ():
            if path.name not in keep:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    # -- the lock

    @contextlib.contextmanager
    def locked(self, timeout_seconds: float) -> Iterator[None]:
        with self._held(timeout_seconds):
            if not self._adopted:
                self._adopt_held()
            yield

    @contextlib.contextmanager
    def _held(self, timeout_seconds: float) -> Iterator[None]:
        owner = f"{socket.gethostname()[:100]}:{os.getpid()}:{secrets.token_hex(6)}"
        deadline = time.monotonic() + timeout_seconds
        while not self._catalog.claim_lock(owner, self._lease_seconds):
            if time.monotonic() >= deadline:
                raise DatabaseBusyError(
                    "another vulnerability database import or rollback is running"
                )
            time.sleep(_LOCK_POLL_SECONDS)
        self._owner = owner
        self._lost.clear()
        done = threading.Event()
        renewing = threading.Thread(
            target=self._renew, args=(owner, done), name="vulndb-lock", daemon=True
        )
        renewing.start()
        try:
            yield
        finally:
            done.set()
            renewing.join()
            self._owner = None
            self._catalog.release_lock(owner)

    def _renew(self, owner: str, done: threading.Event) -> None:
        """Keep the lease while an import runs (minutes for a large bundle)."""
        while not done.wait(self._lease_seconds / 3):
            try:
                if not self._catalog.renew_lock(owner, self._lease_seconds):
                    log.error("the vulnerability database lock was lost while held")
                    self._lost.set()
                    return
            except Exception:
                log.exception("renewing the vulnerability database lock failed")

    # -- adopting the layout of earlier versions

    def _adopt_once(self) -> None:
        # Not while this process holds the lock: `locked` adopts before it yields.
        if self._adopted or self._owner is not None:
            return
        assert self._legacy is not None
        if not (self._legacy / POINTER).is_file():
            self._adopted = True
            return
        try:
            with self._held(_ADOPT_WAIT_SECONDS):
                self._adopt_held()
        except DatabaseBusyError:
            log.warning("the vulnerability database lock is busy: adopting %s later", self._legacy)

    def _adopt_held(self) -> None:
        if self._legacy is not None and (self._legacy / POINTER).is_file():
            self._adopt(self._legacy)  # not adopted by another process meanwhile
        self._adopted = True

    def _adopt(self, legacy: Path) -> None:
        old = read_pointer_file(legacy / POINTER)
        adopted = False
        if self._catalog.pointer().current is not None or old.current is None:
            log.warning(
                "%s is not adopted: the shared vulnerability database already has a generation",
                legacy / POINTER,
            )
        else:
            added: list[StoredGeneration] = []
            for generation_id in old.history:
                path = legacy / GENERATIONS / f"{generation_id}.sqlite"
                try:
                    added.append(self._stored(path, generation_id))
                except (OSError, sqlite3.Error, ValueError) as error:
                    log.error("generation %s cannot be adopted: %s", generation_id, error)
            history = tuple(item.id for item in added)
            if history:
                current = old.current if old.current in history else history[0]
                # The current one first: a rollback goes to the next in line, as before.
                ordered = (current, *(item for item in history if item != current))
                self._move(current, ordered, tuple(added))
                self.cache.mkdir(parents=True, exist_ok=True)
                for generation_id in ordered:
                    with contextlib.suppress(OSError):  # else fetched from storage when used
                        os.replace(
                            legacy / GENERATIONS / f"{generation_id}.sqlite",
                            self._cached(generation_id),
                        )
                log.info(
                    "adopted vulnerability database generations %s from %s",
                    ", ".join(ordered),
                    legacy,
                )
            adopted = len(added) == len(old.history)
        os.replace(legacy / POINTER, legacy / ADOPTED)
        fsync_directory(legacy)
        with contextlib.suppress(OSError):
            (legacy / LOCK).unlink()
        if adopted:  # everything is in storage now; otherwise the files stay for a person
            shutil.rmtree(legacy / GENERATIONS, ignore_errors=True)
