"""The background side of scanning: claim queued jobs, scan or re-match, store the reports.

A job is claimed through the database with a lease (several processes may run this), renewed
while it runs and given back when the process stops, so a restart picks it up again; a crashed
process's lease simply runs out. The CPU-bound work (reading layers, cataloguing, matching)
runs on a small thread pool of its own, never on the event loop, `concurrency` jobs at a time.

- A **scan** reads the manifest and config from the metadata store and each layer from the
  storage driver, catalogs the layers not already in the layer cache, squashes them, stores
  the image's inventory and lookup keys, and matches it against the current database
  generation. Without any generation the report ends in Error ("no vulnerability database
  imported") while the inventory is kept, so the first import matches it.
- A **re-match** matches the stored inventory against the current generation: no layer, config
  or manifest is read.

Every finished report is published as `scan:completed`, and the reports of indexes listing the
manifest are recomputed (and published when they complete or change).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import secrets
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import BinaryIO, Final, ParamSpec, TypeVar

from moorage.domain import mediatypes as mt
from moorage.domain.digest import Digest
from moorage.domain.errors import RegistryError
from moorage.domain.events import SYSTEM, EventKind, RegistryEvent
from moorage.metadata.registry.store import MetadataStore
from moorage.metadata.supply_chain.scan_store import (
    ERROR,
    REMATCH,
    SUCCESS,
    ClaimedJob,
    ReportRecord,
    ScanStore,
)
from moorage.scanning.catalog import CATALOGER_VERSION
from moorage.scanning.layers import LayerError
from moorage.scanning.packages import Inventory, Note
from moorage.scanning.report import BUILTIN_SCANNER, ScanFailedError, ScannerResolver, ScanTarget
from moorage.scanning.squash import LayerSource, inventory_image
from moorage.services.events import EventBus
from moorage.services.registry.manifest_kinds import MAX_INDEX_DEPTH
from moorage.services.supply_chain.scan_cache import CountingCache, StoredLayerCache
from moorage.services.supply_chain.scan_reports import (
    aggregate_index,
    error_reason,
    findings_json,
    inventory_notes,
)
from moorage.services.supply_chain.scan_targets import ImageTarget, NotScannableError, classify
from moorage.services.threads import Threads
from moorage.storage.base import BlobStore
from moorage.vulnerability.database import VulnerabilityDatabase
from moorage.vulnerability.findings import Finding
from moorage.vulnerability.matcher import lookup_keys, match

log = logging.getLogger("moorage.scanning")

P = ParamSpec("P")
T = TypeVar("T")

NO_DATABASE: Final = (
    "no vulnerability database imported: the image's packages were catalogued and are matched"
    " as soon as a database is imported"
)
MAX_CONFIG_BYTES: Final = 8 * 1024 * 1024
# A generation may switch while a job matches; the job then matches again, this many times.
_CATCH_UP_ROUNDS: Final = 3


@dataclass(frozen=True, slots=True)
class ScanDependencies:
    store: ScanStore
    metadata: MetadataStore
    storage: BlobStore
    database: VulnerabilityDatabase
    resolver: ScannerResolver | None
    threads: Threads
    events: EventBus
    layer_cache: StoredLayerCache


@dataclass(frozen=True, slots=True)
class RunnerOptions:
    concurrency: int = 1
    lease_seconds: float = 300.0
    max_attempts: int = 3
    poll_seconds: float = 1.0  # how often an idle runner looks for jobs other processes queued


@dataclass(frozen=True, slots=True)
class _Outcome:
    status: str
    generation: str | None = None
    findings: tuple[Finding, ...] = ()
    notes: tuple[str, ...] = ()
    error: str | None = None


class ReportPublisher:
    """Publishes finished reports and keeps the reports of indexes over them up to date."""

    def __init__(self, deps: ScanDependencies) -> None:
        self._deps = deps

    def publish(self, record: ReportRecord) -> None:
        self._deps.events.publish(
            RegistryEvent(
                EventKind.SCAN_COMPLETED,
                record.repository,
                record.digest,
                media_type=record.media_type,
                actor=SYSTEM,
            )
        )

    async def completed(self, digest: str) -> None:
        """`digest`'s report was stored complete: announce it, then its indexes."""
        threads = self._deps.threads
        record = await threads.run(self._deps.store.report, digest)
        if record is not None and record.status in (SUCCESS, ERROR):
            self.publish(record)
        for parent in await threads.run(self._deps.store.parents_with_reports, digest):
            await self.refresh_index(parent)

    async def refresh_index(self, digest: str, depth: int = 0) -> None:
        changed = await self._deps.threads.run(
            self._deps.store.update_index, digest, aggregate_index
        )
        if changed is None:
            return
        before, after = changed
        if after.status in (SUCCESS, ERROR) and (
            before.status != after.status
            or before.findings != after.findings
            or before.generation != after.generation
        ):
            self.publish(after)
        # An index's report covers every image it reaches: the indexes above it follow.
        if depth < MAX_INDEX_DEPTH:
            for parent in await self._deps.threads.run(
                self._deps.store.parents_with_reports, digest
            ):
                await self.refresh_index(parent, depth + 1)


class ScanRunner:
    def __init__(self, deps: ScanDependencies, options: RunnerOptions) -> None:
        self._deps = deps
        self._options = options
        self._publisher = ReportPublisher(deps)
        self._owner = f"{socket.gethostname()[:64]}:{os.getpid()}:{secrets.token_hex(4)}"
        self._wake = asyncio.Event()
        self._cpu: ThreadPoolExecutor | None = None

    def wake(self) -> None:
        """Jobs were queued by this process: look now instead of at the next poll."""
        self._wake.set()

    async def run(self) -> None:
        if self._options.concurrency < 1:
            return
        self._cpu = ThreadPoolExecutor(
            max_workers=self._options.concurrency, thread_name_prefix="moorage-scan"
        )
        slots = asyncio.Semaphore(self._options.concurrency)
        running: set[asyncio.Task[None]] = set()

        def done(task: asyncio.Task[None]) -> None:
            running.discard(task)
            slots.release()

        try:
            while True:
                await slots.acquire()
                self._wake.clear()
                job = await self._claim()
                if job is None:
                    slots.release()
                    # asyncio.timeout, not wait_for, which on Python 3.11 can swallow a cancel.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self._options.poll_seconds):
                            await self._wake.wait()
                    continue
                task = asyncio.create_task(self._process(job))
                running.add(task)
                task.add_done_callback(done)
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            self._cpu.shutdown(wait=False, cancel_futures=True)

    async def _claim(self) -> ClaimedJob | None:
        store, threads = self._deps.store, self._deps.threads
        try:
            if not await threads.run(store.has_available_job):
                return None
            claim = await threads.run(
                store.claim, self._owner, self._options.lease_seconds, self._options.max_attempts
            )
        except Exception:
            log.exception("claiming a scan job failed")
            return None
        if claim.abandoned:
            reason = (
                f"the scan was abandoned after {self._options.max_attempts} attempts: the"
                " process running it stopped each time"
            )
            await threads.run(store.fail_abandoned, claim.abandoned, reason)
            for abandoned in claim.abandoned:
                await self._publisher.completed(abandoned.digest)
        return claim.job

    async def _process(self, job: ClaimedJob) -> None:
        heartbeat = asyncio.create_task(self._renew(job.digest))
        try:
            report = await self._deps.threads.run(self._deps.store.report, job.digest)
            if job.kind == REMATCH and report is not None and report.status in (SUCCESS, ERROR):
                await self._rematch(job)
            else:
                # A scan, or a re-match overtaken by a request to scan again.
                await self._scan(job, report)
        except asyncio.CancelledError:
            await self._deps.threads.run(self._deps.store.release, job.digest, self._owner)
            raise
        except Exception:
            log.exception("scan job for %s failed", job.digest)
        finally:
            heartbeat.cancel()

    async def _renew(self, digest: str) -> None:
        interval = self._options.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            try:
                if not await self._deps.threads.run(
                    self._deps.store.renew, digest, self._owner, self._options.lease_seconds
                ):
                    log.warning("the lease on the scan of %s was lost", digest)
                    return
            except Exception:
                log.exception("renewing the lease on the scan of %s failed", digest)

    async def _in_cpu(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run CPU-bound work on the scan threads (never on the event loop)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._cpu, functools.partial(fn, *args, **kwargs))

    # -- scan

    async def _scan(self, job: ClaimedJob, report: ReportRecord | None) -> None:
        store, threads = self._deps.store, self._deps.threads
        scanner = report.scanner if report is not None else BUILTIN_SCANNER
        media_type = report.media_type if report is not None else mt.OCI_MANIFEST
        await threads.run(store.start, job.digest, scanner)
        try:
            if scanner != BUILTIN_SCANNER:
                outcome = await self._external(scanner, job, media_type)
            else:
                inventory = await self._in_cpu(self._catalog, job, media_type)
                outcome = await self._in_cpu(self._match, inventory)
        except (LayerError, ScanFailedError, NotScannableError) as error:
            outcome = _Outcome(ERROR, error=error_reason(error.reason))
        except OSError as error:
            outcome = _Outcome(ERROR, error=error_reason(f"a blob could not be read: {error}"))
        except Exception as error:
            log.exception("scanning %s failed", job.digest)
            outcome = _Outcome(ERROR, error=error_reason(f"the scan failed: {error}"))
        stored = await self._store(job.digest, self._owner, outcome, scanned=True)
        if not stored:
            return
        await self._publisher.completed(job.digest)
        if scanner == BUILTIN_SCANNER and (
            outcome.status == SUCCESS or outcome.error == NO_DATABASE
        ):
            await self._catch_up(job.digest, outcome.generation)

    async def _external(self, name: str, job: ClaimedJob, media_type: str) -> _Outcome:
        resolver = self._deps.resolver
        scanner = resolver.external_for(name) if resolver is not None else None
        if scanner is None:
            raise ScanFailedError(f"scanner {name} is not registered")
        findings = await scanner.scan(ScanTarget(job.repository, job.digest, media_type))
        return _Outcome(SUCCESS, findings=tuple(findings))

    def _catalog(self, job: ClaimedJob, media_type: str) -> Inventory:
        """Read the image and catalog it (blocking, CPU-bound); stores the inventory."""
        metadata, storage = self._deps.metadata, self._deps.storage
        body = metadata.manifest_body(job.digest)
        if body is None:
            raise ScanFailedError("the manifest is no longer stored")
        target = classify(body, media_type)
        if not isinstance(target, ImageTarget):
            raise ScanFailedError("an index is scanned through its platform images")
        diff_ids = self._diff_ids(target.config_digest)
        if len(diff_ids) != len(target.layers):
            raise ScanFailedError(
                f"the image config lists {len(diff_ids)} diff_ids for {len(target.layers)} layers"
            )
        sources: list[LayerSource] = []
        skipped: list[Note] = []
        for (layer_type, digest), diff_id in zip(target.layers, diff_ids, strict=True):
            parsed = _digest(digest)
            if mt.is_non_distributable(layer_type) and storage.blob_size(parsed) is None:
                skipped.append(Note(digest, "non-distributable layer not in the registry; skipped"))
                continue
            sources.append(LayerSource(diff_id, functools.partial(_open_blob, storage, parsed)))
        cache = CountingCache(self._deps.layer_cache)
        inventory = inventory_image(sources, cache)
        log.info(
            "catalogued %s: %d packages, %d layers read, %d from the layer cache",
            job.digest,
            len(inventory.packages),
            cache.misses,
            cache.hits,
        )
        if skipped:
            inventory = replace(inventory, notes=(*inventory.notes, *skipped))
        keys = {
            key for package in inventory.packages for key in lookup_keys(package, inventory.distro)
        }
        self._deps.store.save_inventory(
            job.digest,
            CATALOGER_VERSION,
            json.dumps(inventory.to_json(), separators=(",", ":")),
            keys,
        )
        return inventory

    def _diff_ids(self, config_digest: str) -> list[str]:
        with _open_blob(self._deps.storage, _digest(config_digest)) as blob:
            data = blob.read(MAX_CONFIG_BYTES + 1)
        if len(data) > MAX_CONFIG_BYTES:
            raise ScanFailedError(f"the image config is larger than {MAX_CONFIG_BYTES} bytes")
        try:
            config = json.loads(data)
        except (ValueError, RecursionError):
            raise ScanFailedError("the image config is not valid JSON") from None
        rootfs = config.get("rootfs") if isinstance(config, dict) else None
        diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
        if not isinstance(diff_ids, list) or not all(isinstance(d, str) for d in diff_ids):
            raise ScanFailedError("the image config has no rootfs.diff_ids list")
        return diff_ids

    def _match(self, inventory: Inventory) -> _Outcome:
        """Match an inventory against the current generation (blocking, CPU-bound)."""
        generation = self._deps.database.current()
        if generation is None:
            return _Outcome(ERROR, notes=inventory_notes(inventory), error=NO_DATABASE)
        result = match(inventory, generation)
        return _Outcome(
            SUCCESS,
            generation.generation,
            tuple(result.findings),
            inventory_notes(inventory, [str(note) for note in result.notes]),
        )

    # -- re-match

    async def _rematch(self, job: ClaimedJob) -> None:
        outcome = await self._rematched(job.digest)
        if outcome is None:  # no stored inventory (scanned by an older version): scan again
            await self._scan(job, await self._deps.threads.run(self._deps.store.report, job.digest))
            return
        if await self._store(job.digest, self._owner, outcome, scanned=False):
            await self._publisher.completed(job.digest)
            await self._catch_up(job.digest, outcome.generation)

    async def _rematched(self, digest: str) -> _Outcome | None:
        text = await self._deps.threads.run(self._deps.store.inventory, digest)
        if text is None:
            return None
        try:
            inventory = Inventory.from_json(json.loads(text))
        except (ValueError, KeyError):
            log.warning("the stored inventory of %s is unreadable; scanning again", digest)
            return None
        try:
            outcome = await self._in_cpu(self._match, inventory)
        except Exception as error:
            log.exception("matching %s failed", digest)
            outcome = _Outcome(ERROR, error=error_reason(f"matching failed: {error}"))
        return outcome

    async def _catch_up(self, digest: str, matched: str | None) -> None:
        """Match again if the current generation changed while the job ran."""
        for _ in range(_CATCH_UP_ROUNDS):
            current = await self._deps.threads.run(self._deps.database.current)
            if current is None or current.generation == matched:
                return
            outcome = await self._rematched(digest)
            if outcome is None or not await self._store(digest, None, outcome, scanned=False):
                return
            await self._publisher.completed(digest)
            matched = outcome.generation

    async def _store(
        self, digest: str, owner: str | None, outcome: _Outcome, *, scanned: bool
    ) -> bool:
        return await self._deps.threads.run(
            functools.partial(
                self._deps.store.finish,
                digest,
                owner,
                status=outcome.status,
                generation=outcome.generation,
                findings=findings_json(outcome.findings),
                error=outcome.error,
                notes=outcome.notes,
                scanned=scanned,
            )
        )


def _digest(text: str) -> Digest:
    try:
        return Digest.parse(text)
    except RegistryError:
        raise ScanFailedError(f"invalid digest {text[:100]!r}") from None


def _open_blob(storage: BlobStore, digest: Digest) -> BinaryIO:
    return storage.open_blob(digest)
