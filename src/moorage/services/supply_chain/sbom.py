"""SBOMs of scanned images: exported on request, and attached to images as referrers.

Export reads the image's stored inventory (and its findings) through the scan service's
`ReportReader` and renders CycloneDX or SPDX (`moorage.scanning.sbom`).

Attaching follows the scan: when a scan of an image manifest completes with Success and the
project has `attach_sbom` on, the CycloneDX document is pushed into the same repository as an
OCI artifact whose `subject` is the image, so referrers-aware clients (`oras discover`) find it.
Blobs go through the upload service and the manifest through the registry service, so the
referrers index, events and audit see a push like any other, by the system actor.

The attached document lists the image's composition only, not its vulnerabilities (those go
stale with every database update and are served by the API), so re-scanning the same image
gives the same content. Each attached SBOM carries the fingerprint of its content (everything
but the creation time) as an annotation; a scan whose SBOM has the fingerprint of one already
attached to the image attaches nothing. When the content changes (a newer cataloger finds more),
the new SBOM is added and earlier ones stay: they are still true of what they say, and a
signature someone made over one keeps its subject. Clients pick the newest by
`org.opencontainers.image.created`.

Signatures, SBOMs and other artifacts never get an SBOM: only what the scanner takes for a
container image does (`moorage.services.supply_chain.scan_targets.classify`).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Protocol

from moorage.domain import mediatypes as mt
from moorage.domain.digest import Digest
from moorage.domain.errors import ErrorCode, RegistryError
from moorage.domain.events import SYSTEM, DomainEvent, EventKind, RegistryEvent
from moorage.domain.names import Reference, project_of
from moorage.scanning.packages import Inventory
from moorage.scanning.report import BUILTIN_SCANNER, ReportReader, ScanReport, ScanStatus
from moorage.scanning.sbom import (
    CYCLONEDX_JSON,
    ImageSubject,
    SbomDocument,
    SbomFormat,
    build_document,
    cyclonedx_document,
)
from moorage.services.registry.registry import FetchedManifest, RegistryService
from moorage.services.registry.uploads import UploadService
from moorage.services.supply_chain.scan_targets import ImageTarget, NotScannableError, classify
from moorage.services.supply_chain.scanning import ScanRequestError, ScanSettingsView
from moorage.services.threads import Threads

log = logging.getLogger("moorage.sbom")

ANNOTATION_CREATED: Final = "org.opencontainers.image.created"
ANNOTATION_GENERATION: Final = "dev.moorage.sbom.generation"
ANNOTATION_FINGERPRINT: Final = "dev.moorage.sbom.fingerprint"
ANNOTATION_TITLE: Final = "org.opencontainers.image.title"
EMPTY_CONFIG: Final = b"{}"
MAX_PENDING: Final = 1000  # images waiting for their SBOM; beyond, the next scan attaches it
MAX_CONCURRENT_RENDERS: Final = 2  # documents built at once by one process
MAX_REFERRER_PAGES: Final = 10  # 1,000 referrers looked through for an earlier SBOM
_REFERRER_PAGE: Final = 100


class SbomUnavailableError(Exception):
    """No SBOM can be made for this image now; `status` is 404 (none) or 409 (not yet)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class ScanResults(ReportReader, Protocol):
    """What SBOMs need of the scan service: reports, inventories and the project settings."""

    def settings(self, project: str) -> ScanSettingsView:
        """The project's scan settings (blocking); ScanRequestError when there is no project."""
        ...


@dataclass(frozen=True, slots=True)
class _Pending:
    repository: str
    digest: str


class SbomService:
    def __init__(
        self,
        scans: ScanResults,
        registry: RegistryService,
        uploads: UploadService,
        threads: Threads,
        *,
        public_url: str | None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._reports = scans
        self._registry = registry
        self._uploads = uploads
        self._threads = threads
        self.public_url = public_url
        self._clock = clock
        self._queue: asyncio.Queue[_Pending] | None = None
        self._queued: set[_Pending] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._rendering = asyncio.Semaphore(MAX_CONCURRENT_RENDERS)

    # -- export

    async def export(
        self,
        repository: str,
        digest: Digest,
        sbom_format: SbomFormat,
        *,
        vulnerabilities: bool = True,
    ) -> tuple[ImageSubject, SbomDocument]:
        """The image's SBOM; raises SbomUnavailableError (or MANIFEST_UNKNOWN when the
        repository does not hold the digest)."""
        # Reports are kept per digest; the repository must hold it, or a reader of one
        # repository could read the SBOM of any image anywhere by naming its digest.
        await self._registry.read_manifest(repository, digest)
        report, inventory = await self._scanned(str(digest))
        subject = ImageSubject(repository, str(digest), self.public_url)
        document = await self._render(
            functools.partial(
                build_document,
                sbom_format,
                subject,
                inventory,
                created=report.matched_at or report.finished_at or self._clock(),
                findings=report.findings if vulnerabilities else None,
                generation=report.generation,
            )
        )
        return subject, document

    async def _render(self, build: Callable[[], SbomDocument]) -> SbomDocument:
        """Build a document off the event loop and off the database threads (it is CPU work:
        a second or two per thousand packages), a few at a time."""
        async with self._rendering:
            return await asyncio.to_thread(build)

    async def _scanned(self, digest: str) -> tuple[ScanReport, Inventory]:
        report = await self._threads.run(self._reports.report, digest)
        if report is None:
            raise SbomUnavailableError(f"{digest} has not been scanned", 404)
        if not report.status.completed:
            raise SbomUnavailableError(
                f"the scan of {digest} is {report.status.value.lower()}; try again when it"
                " completes",
                409,
            )
        if report.children:
            raise SbomUnavailableError(
                f"{digest} is an index; each of its {len(report.children)} platform manifests"
                " has its own SBOM",
                404,
            )
        # A scan that failed after cataloguing (no vulnerability database yet) kept the
        # inventory, and the inventory is all an SBOM needs.
        inventory = await self._threads.run(self._reports.inventory, digest)
        if inventory is None:
            if report.status is ScanStatus.ERROR:
                reason = (report.error or "no reason given")[:300]
                raise SbomUnavailableError(
                    f"the scan of {digest} failed ({reason}) before it took an inventory", 404
                )
            if report.scanner != BUILTIN_SCANNER:
                raise SbomUnavailableError(
                    f"{digest} was scanned by {report.scanner[:64]}, which reports findings but"
                    " no package inventory",
                    404,
                )
            raise SbomUnavailableError(f"no inventory is stored for {digest}", 404)
        return report, inventory

    # -- attach

    def on_event(self, event: DomainEvent) -> None:
        """EventBus subscriber: queue an attach for each image scan that completed."""
        if not (
            isinstance(event, RegistryEvent)
            and event.kind is EventKind.SCAN_COMPLETED
            and event.digest is not None
            and event.media_type in mt.IMAGE_MANIFESTS
        ):
            return
        loop = self._loop
        if loop is None:
            return  # not running (a command-line process): nothing attaches there
        pending = _Pending(event.repository, event.digest)
        loop.call_soon_threadsafe(self._enqueue, pending)

    def _enqueue(self, pending: _Pending) -> None:
        if self._queue is None or pending in self._queued:
            return
        if self._queue.full():
            log.warning("SBOM queue full; %s gets its SBOM at its next scan", pending.digest)
            return
        self._queued.add(pending)
        self._queue.put_nowait(pending)

    async def run(self) -> None:
        """Attach SBOMs as scans complete, one at a time, until cancelled."""
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue(MAX_PENDING)
        try:
            while True:
                pending = await self._queue.get()
                self._queued.discard(pending)
                try:
                    await self.attach(pending.repository, Digest.parse(pending.digest))
                except RegistryError as error:  # refused by a policy, or the image went away
                    log.warning("the SBOM of %s was not attached: %s", pending.digest, error)
                except Exception:
                    log.exception("attaching the SBOM of %s failed", pending.digest)
        finally:
            self._loop = None
            self._queue = None
            self._queued.clear()

    async def attach(self, repository: str, digest: Digest) -> str | None:
        """Attach the image's CycloneDX SBOM if the project wants it and it is not attached yet.

        Returns the SBOM manifest's digest, or None when nothing was pushed.
        """
        try:
            settings = await self._threads.run(self._reports.settings, project_of(repository))
        except ScanRequestError:
            return None  # the project is gone
        if not settings.attach_sbom:
            return None
        try:
            image = await self._registry.read_manifest(repository, digest)
        except RegistryError as error:
            if error.code is ErrorCode.MANIFEST_UNKNOWN:
                return None  # deleted since it was scanned
            raise
        if not is_image(image):
            return None
        report = await self._threads.run(self._reports.report, str(digest))
        if report is None or report.status is not ScanStatus.SUCCESS:
            return None
        inventory = await self._threads.run(self._reports.inventory, str(digest))
        if inventory is None:
            return None
        subject = ImageSubject(repository, str(digest), self.public_url)
        created = self._clock()
        document = await self._render(
            functools.partial(cyclonedx_document, subject, inventory, created=created)
        )
        if document.fingerprint in await self._attached_fingerprints(repository, digest):
            log.info("%s@%s has this SBOM attached already", repository, digest)
            return None
        return await self._push(repository, image, document, created, report.generation)

    async def _attached_fingerprints(self, repository: str, subject: Digest) -> set[str]:
        fingerprints: set[str] = set()
        after: str | None = None
        for _ in range(MAX_REFERRER_PAGES):
            page = await self._registry.referrers(
                repository, subject, CYCLONEDX_JSON, after, _REFERRER_PAGE
            )
            for record in page:
                fingerprint = (record.annotations or {}).get(ANNOTATION_FINGERPRINT)
                if fingerprint:
                    fingerprints.add(fingerprint)
            if len(page) < _REFERRER_PAGE:
                break
            after = page[-1].digest
        return fingerprints

    async def _push(
        self,
        repository: str,
        image: FetchedManifest,
        document: SbomDocument,
        created: datetime,
        generation: str | None,
    ) -> str:
        config = await self._store_blob(repository, EMPTY_CONFIG)
        layer = await self._store_blob(repository, document.body)
        annotations = {
            ANNOTATION_CREATED: created.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            ANNOTATION_FINGERPRINT: document.fingerprint,
        }
        if generation:
            annotations[ANNOTATION_GENERATION] = generation
        manifest = {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "artifactType": CYCLONEDX_JSON,
            "config": {
                "mediaType": mt.OCI_EMPTY,
                "digest": str(config),
                "size": len(EMPTY_CONFIG),
                "data": "e30=",
            },
            "layers": [
                {
                    "mediaType": CYCLONEDX_JSON,
                    "digest": str(layer),
                    "size": len(document.body),
                    "annotations": {ANNOTATION_TITLE: "sbom" + SbomFormat.CYCLONEDX.file_suffix},
                }
            ],
            "subject": {
                "mediaType": image.record.media_type,
                "digest": image.record.digest,
                "size": image.record.size,
            },
            "annotations": annotations,
        }
        body = json.dumps(manifest, indent=2).encode()
        pushed = await self._registry.put_manifest(
            repository, Reference(digest=Digest.of(body)), mt.OCI_MANIFEST, body, SYSTEM
        )
        log.info("attached SBOM %s to %s@%s", pushed.digest, repository, image.record.digest)
        return str(pushed.digest)

    async def _store_blob(self, repository: str, data: bytes) -> Digest:
        digest = Digest.of(data)
        try:
            await self._registry.locate_blob(repository, digest)
            return digest
        except RegistryError as error:
            if error.code is not ErrorCode.BLOB_UNKNOWN:
                raise
        await self._uploads.monolithic(repository, digest, len(data), _once(data), SYSTEM)
        return digest


def is_image(manifest: FetchedManifest) -> bool:
    """A container image's manifest: not an index, a signature, an SBOM or another artifact."""
    try:
        return isinstance(classify(manifest.body, manifest.record.media_type), ImageTarget)
    except NotScannableError:
        return False


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data
