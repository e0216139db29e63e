"""Online garbage collection: what nothing references goes, while the registry serves.

A run goes through its phases in order, each in short batches, each batch re-checking its
conditions in the transaction that acts on them (see `moorage.metadata.lifecycle.gc_store`):

1. leftovers   blobs a dead or stopped run marked 'deleting': delete their bytes, drop rows
2. untagged    (option) manifests no tag names, older than the grace period, that are not a
               child of an index or a referrer of a subject still in their repository; always:
               the SBOMs this registry attached whose subject is gone
3. records     promotion records that record no promotion (left by a crash of old versions)
4. manifests   manifest rows no repository holds any more, with their scan reports; the
               pull times of manifests no longer in their repository
5. links       repository blob links no manifest of the repository needs, older than grace
6. blobs       blobs nothing links or references, untouched for the grace period: marked
               'deleting' (from then on nothing can reference them), deleted from storage in
               parallel bulk requests, then forgotten
7. orphans     objects in storage with no blob row (a crash between a commit and its row in
               versions before blob claims)
8. uploads     upload sessions idle past their expiry

Between batches a run records its phase and cursor and beats its heart: a stopped run can be
resumed where it was, and only one run works at a time in the whole deployment (a run whose
node died stops counting after the lease, and its marked blobs are finished by the next run).
"""

from __future__ import annotations

import logging
import secrets
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, TypeVar

from moorage.domain.digest import Digest
from moorage.domain.events import AccessEvent, Actor, DomainEvent, EventKind, RegistryEvent
from moorage.metadata.lifecycle.gc_runs_store import (
    FAILED,
    FINISHED,
    STOPPED,
    GcRun,
    GcRunsStore,
    NewRun,
    RunLostError,
)
from moorage.metadata.lifecycle.gc_store import GcStore, StoredBlob
from moorage.storage.base import StorageDriver

log = logging.getLogger("moorage.gc")
T = TypeVar("T")

PHASES: Final = (
    "leftovers",
    "untagged",
    "records",
    "manifests",
    "links",
    "blobs",
    "orphans",
    "uploads",
)
_RECORD_SECONDS: Final = 1.0  # progress is written this often; stops are read every batch
_MAX_UNTAGGED_PASSES: Final = 32  # an index, its children, their referrers: a few passes
_SCAN_PAGES_PER_BATCH: Final = 8  # blob rows looked at per page, in deletion batches
Publish = Callable[[DomainEvent], None]
Progress = Callable[[GcRun, str, dict[str, int]], None]
DanglingRecords = Callable[[], list[tuple[str, str]]]
DeleteManifest = Callable[[str, str], bool]


@dataclass(frozen=True, slots=True)
class GcOptions:
    dry_run: bool = False
    delete_untagged: bool = False
    grace: timedelta = timedelta(hours=1)
    batch_size: int = 1000
    delete_workers: int = 4
    upload_expiry: timedelta = timedelta(days=1)


class GcStoppedError(Exception):
    """A stop was requested; the run ends after the batch in hand."""


@dataclass
class _Run:
    """One run in progress: its record, its options, and the counts so far."""

    record: GcRun
    options: GcOptions
    cutoff: datetime
    counts: dict[str, int]
    phase: str
    cursor: str | None
    recorded_phase: str = ""
    recorded_at: float = 0.0


class GarbageCollector:
    def __init__(
        self,
        store: GcStore,
        runs: GcRunsStore,
        storage: StorageDriver,
        *,
        dangling_records: DanglingRecords,
        delete_manifest: DeleteManifest,
        node: str | None = None,
    ) -> None:
        self._store = store
        self._runs = runs
        self._storage = storage
        self._publish: Publish = _nowhere
        self._dangling_records = dangling_records
        self._delete_manifest = delete_manifest
        self.node = node or socket.gethostname()

    # -- starting, stopping, resuming

    def start(
        self,
        options: GcOptions,
        actor: Actor,
        trigger: str,
        resume: GcRun | None = None,
    ) -> GcRun:
        """Record a new run as running (RunBusyError if one is); `run` then does the work."""
        new = NewRun(
            id=f"gc-{datetime.now(UTC):%Y%m%d%H%M%S}-{secrets.token_hex(4)}",
            dry_run=options.dry_run,
            delete_untagged=options.delete_untagged,
            grace_seconds=int(options.grace.total_seconds()),
            trigger=trigger,
            requested_by=actor.name,
            node=self.node,
            resumed_from=resume.id if resume else None,
            phase=resume.phase if resume else PHASES[0],
            cursor=resume.cursor if resume else None,
            counts=dict(resume.counts) if resume else {},
        )
        return self._runs.start(new)

    def run(
        self,
        record: GcRun,
        options: GcOptions,
        actor: Actor,
        publish: Publish,
        on_progress: Progress | None = None,
    ) -> GcRun:
        """Do the work of a started run, phase after phase (blocking: call it on a thread).
        Events go to `publish`, which must be safe to call from this thread."""
        self._publish = publish
        cutoff = record.started_at - options.grace
        state = _Run(record, options, cutoff, dict(record.counts), record.phase, record.cursor)
        status, error = FINISHED, None
        try:
            for phase in PHASES[PHASES.index(state.phase) :]:
                if phase != state.phase:
                    state.phase, state.cursor = phase, None
                self._beat(state, on_progress)
                getattr(self, f"_phase_{phase}")(state, on_progress)
        except GcStoppedError:
            status = STOPPED
        except RunLostError:
            log.error("garbage collection %s lost its lease; another run took over", record.id)
            return self._runs.run(record.id) or record
        except Exception as failure:
            log.exception("garbage collection %s failed", record.id)
            status, error = FAILED, f"{type(failure).__name__}: {failure}"
        self._runs.finish(record.id, status, state.counts, error)
        finished = self._runs.run(record.id) or record
        self._publish(
            AccessEvent(
                "gc:run",
                actor,
                "success" if status in (FINISHED, STOPPED) else "failure",
                resource=f"gc:{record.id}",
                details={
                    "run": record.id,
                    "status": status,
                    "dry_run": options.dry_run,
                    "delete_untagged": options.delete_untagged,
                    "counts": dict(state.counts),
                },
            )
        )
        log.info("garbage collection %s %s: %s", record.id, status, state.counts)
        return finished

    def _beat(self, state: _Run, on_progress: Progress | None) -> None:
        """Between batches: record progress (a write, at most once a second, or at a new
        phase), else only read whether a stop was requested and the run is still ours."""
        now = time.monotonic()
        if state.phase != state.recorded_phase or now - state.recorded_at >= _RECORD_SECONDS:
            stop = self._runs.progress(state.record.id, state.phase, state.cursor, state.counts)
            state.recorded_phase, state.recorded_at = state.phase, now
        else:
            stop = self._runs.check(state.record.id)
        if on_progress is not None:
            on_progress(state.record, state.phase, dict(state.counts))
        if stop:
            raise GcStoppedError

    @staticmethod
    def _add(state: _Run, key: str, amount: int) -> None:
        state.counts[key] = state.counts.get(key, 0) + amount

    # -- the phases

    def _phase_leftovers(self, state: _Run, on_progress: Progress | None) -> None:
        if state.options.dry_run:
            return
        alive = [run for run in self._runs.alive() if run != state.record.id]
        while batch := self._store.blobs_in_deletion(alive, state.options.batch_size):
            self._delete_and_forget(state, batch, "leftover_blobs", "leftover_bytes")
            self._beat(state, on_progress)

    def _phase_untagged(self, state: _Run, on_progress: Progress | None) -> None:
        only_sboms = not state.options.delete_untagged
        for _ in range(_MAX_UNTAGGED_PASSES):
            removed = 0
            for repository_id, repository in self._repositories(state, on_progress):
                candidates = self._store.untagged_manifests(
                    repository_id, state.cutoff, state.options.batch_size, only_sboms=only_sboms
                )
                if state.options.dry_run:
                    self._add(state, "untagged_manifests", len(candidates))
                    continue
                gone = self._store.remove_untagged(
                    repository_id, repository, candidates, state.cutoff, only_sboms=only_sboms
                )
                for manifest in gone:
                    self._publish(
                        RegistryEvent(
                            EventKind.MANIFEST_DELETED,
                            manifest.repository,
                            manifest.digest,
                            media_type=manifest.media_type,
                            size=manifest.size,
                            actor=_GC_ACTOR,
                        )
                    )
                self._add(state, "untagged_manifests", len(gone))
                removed += len(gone)
            state.cursor = None
            if state.options.dry_run or removed == 0:
                return

    def _phase_records(self, state: _Run, on_progress: Progress | None) -> None:
        for repository, digest in self._dangling_records():
            if state.options.dry_run or self._delete_manifest(repository, digest):
                self._add(state, "promotion_records", 1)
        self._beat(state, on_progress)

    def _phase_manifests(self, state: _Run, on_progress: Progress | None) -> None:
        while batch := self._store.manifests_in_no_repository(state.options.batch_size):
            if state.options.dry_run:
                self._add(state, "manifest_rows", len(batch))
                return
            forgotten = self._store.forget_manifests(batch)
            self._add(state, "manifest_rows", len(forgotten))
            self._beat(state, on_progress)
            if not forgotten:
                return  # each was taken back by a push meanwhile
        if not state.options.dry_run:
            while pulls := self._store.forget_stale_pulls(state.options.batch_size):
                self._add(state, "pull_rows", pulls)
        while stale := self._store.scan_rows_without_manifest(state.options.batch_size):
            if state.options.dry_run:
                self._add(state, "scan_rows", len(stale))
                return
            removed = self._store.forget_scan_rows(stale)
            self._add(state, "scan_rows", removed)
            if not removed:
                return

    def _phase_links(self, state: _Run, on_progress: Progress | None) -> None:
        for repository_id, repository in self._repositories(state, on_progress):
            while links := self._store.unneeded_links(
                repository_id, state.cutoff, state.options.batch_size
            ):
                if state.options.dry_run:
                    self._add(state, "links", len(links))
                    break
                removed = self._store.unlink(repository_id, repository, links, state.cutoff)
                self._add(state, "links", len(removed))
                if not removed:
                    break

    def _phase_blobs(self, state: _Run, on_progress: Progress | None) -> None:
        """Scan the blob table in pages; mark the garbage of each page at once (short write
        transactions), and delete what is marked from storage once a full batch gathered, so
        sparse garbage still goes in large bulk requests."""
        after = state.cursor or ""
        scan = state.options.batch_size * _SCAN_PAGES_PER_BATCH
        pending: list[StoredBlob] = []
        try:
            while True:
                garbage, last = self._store.garbage_blobs(after, scan, state.cutoff)
                if not last:
                    return
                if state.options.dry_run:
                    self._add(state, "blobs", len(garbage))
                    self._add(state, "bytes", sum(blob.size for blob in garbage))
                for batch in _pages(iter(garbage), state.options.batch_size):
                    if not state.options.dry_run:
                        pending += self._store.mark_deleting(
                            state.record.id, [blob.digest for blob in batch], state.cutoff
                        )
                    if len(pending) >= state.options.batch_size:
                        self._delete_and_forget(state, pending, "blobs", "bytes")
                        pending = []
                after = state.cursor = last
                self._beat(state, on_progress)
        finally:
            # Stopped, failed or done: what this run marked does not wait for the next run.
            if pending:
                self._delete_and_forget(state, pending, "blobs", "bytes")

    def _phase_orphans(self, state: _Run, on_progress: Progress | None) -> None:
        for page in _pages(self._storage.list_blobs(), state.options.batch_size):
            known = self._store.known_blobs([str(digest) for digest in page])
            unknown = [digest for digest in page if str(digest) not in known]
            found = []
            for digest in unknown:
                size = self._storage.blob_size(digest)
                if size is not None:
                    found.append(StoredBlob(str(digest), size))
            if state.options.dry_run:
                self._add(state, "orphans", len(found))
                self._add(state, "orphan_bytes", sum(blob.size for blob in found))
            elif found:
                claimed = self._store.claim_orphans(state.record.id, found)
                self._delete_and_forget(state, claimed, "orphans", "orphan_bytes")
            self._beat(state, on_progress)

    def _phase_uploads(self, state: _Run, on_progress: Progress | None) -> None:
        cutoff = time.time() - state.options.upload_expiry.total_seconds()
        stale = [upload for upload, changed in self._storage.list_uploads() if changed < cutoff]
        if state.options.dry_run:
            self._add(state, "uploads", len(stale))
            return
        removed = sum(1 for upload in stale if self._storage.delete_upload_if_idle(upload))
        self._add(state, "uploads", removed)

    # -- helpers

    def _repositories(self, state: _Run, on_progress: Progress | None) -> Iterator[tuple[int, str]]:
        """Every repository by name, from the run's cursor on; the cursor follows."""
        after = state.cursor or ""
        while page := self._store.repositories_after(after, state.options.batch_size):
            yield from page
            after = state.cursor = page[-1][1]
            self._beat(state, on_progress)

    def _delete_and_forget(
        self, state: _Run, blobs: Sequence[StoredBlob], count: str, size: str
    ) -> None:
        """Delete marked blobs from storage (bulk requests, in parallel), then their rows.

        The run's standing is read first: a run that lost its lease (another took over)
        deletes nothing.
        """
        if not blobs:
            return
        self._runs.check(state.record.id)
        digests = [Digest.parse(blob.digest) for blob in blobs]
        chunks = list(_pages(iter(digests), max(1, len(digests) // state.options.delete_workers)))
        with ThreadPoolExecutor(max_workers=state.options.delete_workers) as pool:
            list(pool.map(self._storage.delete_blobs, chunks))
        self._store.drop_deleted([blob.digest for blob in blobs])
        self._add(state, count, len(blobs))
        self._add(state, size, sum(blob.size for blob in blobs))


_GC_ACTOR: Final = Actor(name="gc", kind="system")


def _nowhere(_event: DomainEvent) -> None:
    return None


def _pages(items: Iterator[T], size: int) -> Iterator[list[T]]:
    page: list[T] = []
    for item in items:
        page.append(item)
        if len(page) >= size:
            yield page
            page = []
    if page:
        yield page
