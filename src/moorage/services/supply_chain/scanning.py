"""The scanning flow: requests, per-project settings, scan on push and database generations.

`ScanService` queues scans in the persistent queue (`scan_jobs`, one row per manifest digest,
so asking twice queues once) and serves the reports (`ReportReader`); `ScanRunner` does the
work in the background. Only container images are scanned, and indexes through their platform
images (see `scan_targets`); asking to scan anything else is refused with the reason.

A report reflects the latest request: asking to scan again makes it Pending until the new scan
is done. Re-matching after a new database generation does not: the report keeps its findings
until the new ones replace them in one write.

Database generations: every process that runs background jobs looks at the current generation
every `vulndb_poll_seconds` (and at once when told an import happened). The generation the
reports were last matched against is kept in the database; the process that moves it forward
(compare-and-set) queues re-matches of just the images whose stored packages changed, so the
work is done once however many processes notice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from moorage.domain import mediatypes as mt
from moorage.domain.events import AccessEvent, Actor, DomainEvent, EventKind, RegistryEvent
from moorage.domain.names import project_of
from moorage.metadata.registry.store import MetadataStore
from moorage.metadata.supply_chain.scan_store import (
    GenerationChange,
    ScanRequest,
    ScanSettingsRecord,
    ScanStore,
)
from moorage.scanning.packages import Inventory
from moorage.scanning.report import BUILTIN_SCANNER, ScannerResolver, ScanReport
from moorage.services.cache import TtlCache
from moorage.services.errors import IdentityError
from moorage.services.events import EventBus
from moorage.services.registry.manifest_kinds import MAX_INDEX_DEPTH
from moorage.services.supply_chain.scan_cache import StoredLayerCache
from moorage.services.supply_chain.scan_reports import scan_report
from moorage.services.supply_chain.scan_runner import (
    ReportPublisher,
    RunnerOptions,
    ScanDependencies,
    ScanRunner,
)
from moorage.services.supply_chain.scan_targets import (
    MAX_INDEX_CHILDREN,
    ImageTarget,
    IndexTarget,
    NotScannableError,
    classify,
)
from moorage.services.threads import Threads
from moorage.storage.base import BlobStore
from moorage.vulnerability.database import VulnerabilityDatabase

log = logging.getLogger("moorage.scanning")

SETTINGS_CACHE_SECONDS: Final = 2.0
_SCAN_ALL_PAGE: Final = 500
# Accesses that change the vulnerability database: look for a new generation at once.
_DATABASE_ACTIONS: Final = frozenset({"vulndb:import", "vulndb:rollback"})


class ScanRequestError(IdentityError):
    """A scan request or report lookup that cannot be served; `status` is the HTTP status."""


@dataclass(frozen=True, slots=True)
class ScanSettingsInput:
    scan_on_push: bool = False
    attach_sbom: bool = False
    scanner: str | None = None  # a registered adapter's name; None: the built-in scanner


@dataclass(frozen=True, slots=True)
class ScanSettingsView:
    project: str
    scan_on_push: bool
    attach_sbom: bool
    scanner: str | None
    updated_by: str | None
    updated_at: datetime | None


@dataclass(frozen=True, slots=True)
class ScanServiceOptions:
    concurrency: int = 1
    lease_seconds: float = 300.0
    max_attempts: int = 3
    vulndb_poll_seconds: float = 30.0


def _view(project: str, record: ScanSettingsRecord) -> ScanSettingsView:
    return ScanSettingsView(
        project,
        record.scan_on_push,
        record.attach_sbom,
        record.scanner,
        record.updated_by,
        record.updated_at,
    )


# What scan on push reacts to: a pushed manifest, and a proxy cache's image once all its
# blobs are cached (its manifest arrives first, the layers as clients pull them).
_SCAN_ON_PUSH: Final = frozenset({EventKind.MANIFEST_PUSHED, EventKind.IMAGE_CACHED})


class ScanService:
    """Queue scans, serve reports and inventories, manage settings; implements ReportReader."""

    def __init__(
        self,
        store: ScanStore,
        metadata: MetadataStore,
        storage: BlobStore,
        threads: Threads,
        events: EventBus,
        database: VulnerabilityDatabase,
        *,
        resolver: ScannerResolver | None = None,
        options: ScanServiceOptions | None = None,
    ) -> None:
        self._store = store
        self._metadata = metadata
        self._threads = threads
        self._events = events
        self._database = database
        self._resolver = resolver
        self._options = options or ScanServiceOptions()
        self.layer_cache = StoredLayerCache(store)
        deps = ScanDependencies(
            store, metadata, storage, database, resolver, threads, events, self.layer_cache
        )
        self._publisher = ReportPublisher(deps)
        self._runner = ScanRunner(
            deps,
            RunnerOptions(
                concurrency=self._options.concurrency,
                lease_seconds=self._options.lease_seconds,
                max_attempts=self._options.max_attempts,
            ),
        )
        self._settings = TtlCache(SETTINGS_CACHE_SECONDS, name="scan-settings")
        self._tasks: set[asyncio.Task[None]] = set()
        # The loop that serves this process, for events published on worker threads.
        self._loop: asyncio.AbstractEventLoop | None = None
        with contextlib.suppress(RuntimeError):  # built outside a loop: learnt on first use
            self._loop = asyncio.get_running_loop()

    # -- ReportReader

    def report(self, digest: str) -> ScanReport | None:
        record = self._store.report(digest)
        return None if record is None else scan_report(record)

    def inventory(self, digest: str) -> Inventory | None:
        text = self._store.inventory(digest)
        if text is None:
            return None
        try:
            return Inventory.from_json(json.loads(text))
        except (ValueError, KeyError):
            log.warning("the stored inventory of %s is unreadable", digest)
            return None

    # -- reading reports through the API

    async def report_for(self, repository: str, digest: str) -> ScanReport:
        """The report of a manifest of `repository`; 404 when it is not there or not scanned."""
        if await self._threads.run(self._metadata.resolve_digest, repository, digest) is None:
            raise ScanRequestError(f"manifest {digest} is not in {repository}", 404)
        report = await self._threads.run(self.report, digest)
        if report is None:
            raise ScanRequestError(f"manifest {digest} has not been scanned", 404)
        return report

    # -- requests

    async def request_scan(self, repository: str, digest: str, actor: Actor) -> ScanReport:
        """Scan (again) a manifest of `repository`; its report, Pending until the scan is done.

        Raises ScanRequestError: 404 when the manifest is not in the repository, 422 when it is
        not something that is scanned (a signature, an SBOM, another artifact).
        """
        if await self._threads.run(self._metadata.resolve_digest, repository, digest) is None:
            raise ScanRequestError(f"manifest {digest} is not in {repository}", 404)
        try:
            await self._queue(repository, digest, rescan=True)
        except NotScannableError as error:
            raise ScanRequestError(
                f"manifest {digest} is not scanned: {error.reason}", 422
            ) from None
        self._events.publish(
            AccessEvent(
                "scan:request",
                actor,
                "success",
                project_of(repository),
                f"{repository}@{digest}",
                {"digest": digest},
            )
        )
        report = await self._threads.run(self.report, digest)
        assert report is not None  # the request created it
        return report

    async def scan_all(self, actor: Actor) -> int:
        """Queue a scan of every image manifest (and index) of every repository; how many
        scan jobs were queued (an image in several repositories is scanned once)."""
        queued = await self._threads.run(self._queue_everything)
        self._runner.wake()
        self._events.publish(AccessEvent("scan:all", actor, "success", details={"queued": queued}))
        return queued

    def _queue_everything(self) -> int:
        queued = 0
        seen: set[str] = set()
        after: tuple[int, str] | None = None
        while True:
            page = self._store.manifests_after(after, _SCAN_ALL_PAGE)
            if not page:
                return queued
            after = (page[-1].repository_id, page[-1].digest)
            requests: list[ScanRequest] = []
            for entry in page:
                if entry.digest in seen or entry.media_type not in mt.MANIFEST_TYPES:
                    continue
                seen.add(entry.digest)
                with contextlib.suppress(NotScannableError):
                    requests.extend(self._plan(entry.repository, entry.digest, rescan=True))
            queued += self._store.request(requests)

    async def _queue(self, repository: str, digest: str, *, rescan: bool) -> None:
        requests = await self._threads.run(self._plan, repository, digest, rescan=rescan)
        await self._threads.run(self._store.request, requests)
        self._runner.wake()
        for request in requests:
            if request.children:
                # The children may be complete already (scanned when they were pushed).
                await self._publisher.refresh_index(request.digest)

    def _plan(self, repository: str, digest: str, *, rescan: bool) -> list[ScanRequest]:
        """The requests that scanning this manifest takes (blocking: reads metadata)."""
        record = self._metadata.resolve_digest(repository, digest)
        body = self._metadata.manifest_body(digest)
        if record is None or body is None:
            raise NotScannableError("the manifest is not stored")
        target = classify(body, record.media_type)
        scanner = self._settings_of(project_of(repository)).scanner or BUILTIN_SCANNER
        if isinstance(target, ImageTarget):
            return [ScanRequest(repository, digest, record.media_type, scanner, rescan)]
        walk = _IndexWalk(self._metadata, repository)
        images = walk.images(digest, target, 0)
        if not images:
            raise NotScannableError("the index reaches no container image")
        # Every index on the way gets its own report (over what it reaches), so that a child
        # completing refreshes its index, and that index its own parents, up to this one.
        indexes = [
            ScanRequest(repository, index, media, scanner, rescan, reached)
            for index, (media, reached) in walk.indexes.items()
            if reached
        ]
        own = ScanRequest(repository, digest, record.media_type, scanner, rescan, images)
        return [
            own,
            *(request for request in indexes if request.digest != digest),
            *(
                ScanRequest(repository, child, media, scanner, rescan)
                for child, media in walk.found.items()
            ),
        ]

    # -- settings

    def settings(self, project: str) -> ScanSettingsView:
        record = self._store.settings_of(project)
        if record is None:
            raise ScanRequestError(f"project {project} not found", 404)
        return _view(project, record)

    def update_settings(
        self, actor: Actor, project: str, new: ScanSettingsInput
    ) -> ScanSettingsView:
        if new.scanner is not None and (
            self._resolver is None or self._resolver.external_for(new.scanner) is None
        ):
            raise ScanRequestError(f"scanner {new.scanner} is not registered", 422)
        changed = self._store.put_settings(
            project,
            ScanSettingsRecord(new.scan_on_push, new.attach_sbom, new.scanner, actor.name),
        )
        if changed is None:
            raise ScanRequestError(f"project {project} not found", 404)
        _, after = changed
        self._settings.clear()
        self._events.publish(
            AccessEvent(
                "scan-settings:update",
                actor,
                "success",
                project,
                f"project:{project}",
                {
                    "scan_on_push": after.scan_on_push,
                    "attach_sbom": after.attach_sbom,
                    "scanner": after.scanner,
                },
            )
        )
        return _view(project, after)

    def _settings_of(self, project: str) -> ScanSettingsRecord:
        return self._settings.get_or_load(
            project, lambda: self._store.settings_of(project) or ScanSettingsRecord()
        )

    # -- events

    def on_event(self, event: DomainEvent) -> None:
        """EventBus subscriber: scan pushed manifests where the project asks for it, and look
        for a new database generation after an import through this process."""
        if isinstance(event, AccessEvent):
            if event.action in _DATABASE_ACTIONS and event.result == "success":
                self._spawn(self.database_changed())
            return
        if event.kind not in _SCAN_ON_PUSH or event.digest is None:
            return
        self._spawn(self._scan_pushed(event))

    def _spawn(self, work: Coroutine[object, object, None]) -> None:
        """Run `work` on the event loop, also when the event was published on a worker thread
        (an import through the API runs on one)."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not None:
            self._loop = running
            self._track(running.create_task(work))
        elif self._loop is not None and not self._loop.is_closed():
            loop = self._loop
            loop.call_soon_threadsafe(lambda: self._track(loop.create_task(work)))
        else:
            log.warning("an event outside the event loop was not acted on")
            work.close()

    def _track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _scan_pushed(self, event: RegistryEvent) -> None:
        assert event.digest is not None
        try:
            settings = await self._threads.run(self._settings_of, project_of(event.repository))
            if settings.scan_on_push:
                await self._queue(event.repository, event.digest, rescan=False)
        except NotScannableError as error:
            log.debug("%s@%s is not scanned: %s", event.repository, event.digest, error.reason)
        except Exception:
            log.exception("queueing the scan of %s@%s failed", event.repository, event.digest)

    # -- database generations

    def check_generation(self) -> GenerationChange | None:
        """Re-match what a new current generation changes (blocking; any process may call it:
        the one whose compare-and-set wins does the work)."""
        current = self._database.current()
        if current is None:
            return None
        previous = self._store.matched_generation()
        if previous == current.generation:
            return None
        changed = self._database.changed_packages(previous, current)
        change = self._store.advance_generation(
            previous, current.generation, changed, BUILTIN_SCANNER
        )
        if change is not None:
            log.info(
                "vulnerability database generation %s (was %s): %d images to re-match,"
                " %d unaffected",
                change.current,
                change.previous,
                len(change.rematch),
                change.confirmed,
            )
        return change

    async def database_changed(self) -> None:
        """Look for a new generation now (after an import or a rollback)."""
        change = await self._threads.run(self.check_generation)
        if change is not None and change.rematch:
            self._runner.wake()

    # -- background work

    async def run(self) -> None:
        """The background jobs of one process: the queue runner and the generation watch."""
        self._loop = asyncio.get_running_loop()
        watch = asyncio.create_task(self._watch_generations())
        try:
            await self._runner.run()
            await watch  # a process that runs no scans still watches generations
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
            for task in list(self._tasks):
                task.cancel()

    async def _watch_generations(self) -> None:
        while True:
            try:
                await self.database_changed()
            except Exception:
                log.exception("checking the vulnerability database generation failed")
            await asyncio.sleep(self._options.vulndb_poll_seconds)


class _IndexWalk:
    """The images an index reaches through its children, nested indexes included (bounded).
    Blocking: reads metadata."""

    def __init__(self, metadata: MetadataStore, repository: str) -> None:
        self._metadata = metadata
        self._repository = repository
        self.found: dict[str, str] = {}  # image digest -> media type
        self.indexes: dict[str, tuple[str, tuple[str, ...]]] = {}  # index -> (media, reached)

    def images(self, digest: str, target: IndexTarget, depth: int) -> tuple[str, ...]:
        reached: dict[str, None] = {}
        for child in target.children:
            if child in self.indexes:  # an index reached twice: its images were collected
                reached.update(dict.fromkeys(self.indexes[child][1]))
                continue
            record = self._metadata.resolve_digest(self._repository, child)
            body = self._metadata.manifest_body(child)
            if record is None or body is None:
                continue
            try:
                found = classify(body, record.media_type)
            except NotScannableError:
                continue
            if isinstance(found, ImageTarget):
                self.found[child] = record.media_type
                reached[child] = None
            elif depth < MAX_INDEX_DEPTH and len(self.found) < MAX_INDEX_CHILDREN:
                self.indexes[child] = (record.media_type, ())
                nested = self.images(child, found, depth + 1)
                self.indexes[child] = (record.media_type, nested)
                reached.update(dict.fromkeys(nested))
        return tuple(reached)[:MAX_INDEX_CHILDREN]
