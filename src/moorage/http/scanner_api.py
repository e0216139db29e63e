"""The built-in scanner behind Harbor's Pluggable Scanner Adapter API v1.2, at /scanner/api/v1/.

Tools built for Harbor (Harbor itself, or another Moorage) can register this registry as a
scanner and scan the images stored **here**: a scan request naming another registry is refused
with 422, because the built-in scanner reads its own storage and never pulls from elsewhere
(`registry.authorization` is therefore not used).

- `GET metadata`: the scanner, what it consumes (image manifests and indexes, OCI and Docker)
  and produces (both vulnerability report types), and the vulnerability database's generation.
- `POST scan`: queues a scan through the scan service; 202 with an opaque id.
- `GET scan/{id}/report`: 302 with `Refresh-After` while the scan is pending or running, 200
  with the report in the type the `Accept` header asks for, 500 when the scan failed.

Callers authenticate as on the management API. The routes are declared AUTHENTICATED in the
route table, because the repository is named in the body or inside the scan id, where the
access middleware cannot see it; each handler then makes exactly one repository decision
through `moorage.http.access.may`: `scan` to request a scan, `read-scan` to read a report.
Errors are Harbor's ErrorResponse documents (`{"error": {"message": …}}`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Protocol

from aiohttp import web
from aiohttp.typedefs import Handler

from moorage import __version__
from moorage.config import Settings
from moorage.domain.access import Action
from moorage.domain.digest import Digest
from moorage.domain.errors import RegistryError
from moorage.domain.events import Actor
from moorage.domain.names import validate_repository_name
from moorage.http.access import ACTOR, AccessDenied, Permission, Scope, may
from moorage.http.state import IAM, SERVICES
from moorage.scanning.harbor import (
    BUILTIN_CONSUMES,
    ERROR,
    METADATA_V1_1,
    PROPERTY_DB_UPDATED_AT,
    PROPERTY_SCANNER_TYPE,
    SCAN_REQUEST_V1_0,
    SCAN_REQUEST_V1_1,
    SCAN_RESPONSE,
    Artifact,
    HarborFormatError,
    Scanner,
    decode_scan_id,
    encode_scan_id,
    error_document,
    metadata_document,
    parse_scan_request,
    report_type_of,
    same_media_type,
    same_registry,
    vulnerability_report,
)
from moorage.scanning.report import BUILTIN_SCANNER, ReportReader, ScanReport, ScanStatus
from moorage.services.errors import IdentityError
from moorage.services.supply_chain.scanner_adapters import registry_url
from moorage.vulnerability.database import VulnerabilityDatabase

log = logging.getLogger("moorage.http")

PREFIX: Final = "/scanner/api/v1"
SCANNER_NAME: Final = "Moorage"
SCANNER_VENDOR: Final = "Moorage"
REFRESH_AFTER_SECONDS: Final = 1
MAX_REQUEST_BYTES: Final = 64 * 1024
PROPERTY_GENERATION: Final = "moorage/vulnerability-database-generation"

REQUEST_SCAN: Final = Permission(Scope.REPOSITORY, Action.SCAN)
READ_SCAN: Final = Permission(Scope.REPOSITORY, Action.READ_SCAN)


class ScanRequester(ReportReader, Protocol):
    """What this API needs of the scan service."""

    async def request_scan(self, repository: str, digest: str, actor: Actor) -> ScanReport: ...


@dataclass(frozen=True, slots=True)
class DatabaseState:
    generation: str
    updated_at: datetime | None  # the newest record's modification time


@dataclass(frozen=True, slots=True)
class BuiltinScannerEndpoint:
    scans: ScanRequester
    version: str
    # This registry's own base URLs (the configured public URL, the listening address):
    # scan requests must name one of them, or the URL the request itself came in on.
    registry_urls: tuple[str, ...]
    database: Callable[[], DatabaseState | None]  # blocking


BUILTIN_SCANNER_ENDPOINT = web.AppKey("builtin_scanner_endpoint", BuiltinScannerEndpoint)


class ScannerApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(error_document(message)).encode(),
        headers={"Content-Type": ERROR, **(headers or {})},
    )


def _document(status: int, document: dict[str, Any], content_type: str) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(document, separators=(",", ":")).encode(),
        headers={"Content-Type": content_type},
    )


async def scanner_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure under /scanner/ leaves as Harbor's ErrorResponse (the application's error
    middleware hands those requests here)."""
    try:
        return await handler(request)
    except ScannerApiError as error:
        return error_response(error.status, error.message)
    except AccessDenied as denied:
        if denied.challenge:
            return error_response(401, str(denied), {"WWW-Authenticate": 'Basic realm="moorage"'})
        return error_response(403, str(denied))
    except RegistryError as error:
        return error_response(error.status, error.message, error.headers)
    except IdentityError as error:
        return error_response(error.status, str(error))
    except web.HTTPException as exc:
        if exc.status >= 400:
            allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            return error_response(exc.status, exc.reason, allow)
        raise
    except (ConnectionError, asyncio.CancelledError):
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal server error")


def _endpoint(request: web.Request) -> BuiltinScannerEndpoint:
    try:
        return request.app[BUILTIN_SCANNER_ENDPOINT]
    except KeyError:
        raise ScannerApiError(501, "the built-in scanner is not available") from None


async def metadata(request: web.Request) -> web.Response:
    endpoint = _endpoint(request)
    state = await request.app[IAM].threads.run(endpoint.database)
    properties = {PROPERTY_SCANNER_TYPE: "os-package-vulnerability"}
    if state is not None:
        properties[PROPERTY_GENERATION] = state.generation
        if state.updated_at is not None:
            properties[PROPERTY_DB_UPDATED_AT] = state.updated_at.isoformat()
    document = metadata_document(_scanner(endpoint), BUILTIN_CONSUMES, properties)
    return _document(200, document, METADATA_V1_1)


def _scanner(endpoint: BuiltinScannerEndpoint) -> Scanner:
    return Scanner(name=SCANNER_NAME, vendor=SCANNER_VENDOR, version=endpoint.version)


async def scan(request: web.Request) -> web.Response:
    endpoint = _endpoint(request)
    content_type = request.headers.get("Content-Type", "")
    if not (
        same_media_type(content_type, SCAN_REQUEST_V1_1)
        or same_media_type(content_type, SCAN_REQUEST_V1_0)
        or content_type.split(";", 1)[0].strip().lower() == "application/json"
    ):
        raise ScannerApiError(400, f"send the scan request as {SCAN_REQUEST_V1_1}")
    try:
        scan_request = parse_scan_request(await _read_capped(request))
    except HarborFormatError as error:
        raise ScannerApiError(400, str(error)) from None
    own = (*endpoint.registry_urls, f"{request.scheme}://{request.host}")
    if not same_registry(scan_request.registry.url, own):
        raise ScannerApiError(
            422,
            f"registry.url {scan_request.registry.url[:200]!r} is not this registry: the built-in"
            " scanner scans only artifacts stored here",
        )
    if not scan_request.asks_for_vulnerabilities():
        raise ScannerApiError(501, "this scanner produces vulnerability reports only")
    artifact = scan_request.artifact
    repository, digest = _artifact(artifact.repository, artifact.digest)
    if artifact.mime_type and not any(
        same_media_type(artifact.mime_type, consumed) for consumed in BUILTIN_CONSUMES
    ):
        raise ScannerApiError(
            501, f"artifacts of type {artifact.mime_type[:200]!r} are not scanned"
        )
    if not await may(request, REQUEST_SCAN, repository):
        raise ScannerApiError(403, f"you may not request scans in {repository}")
    await _stored_media_type(request, repository, digest)
    await endpoint.scans.request_scan(repository, digest, request[ACTOR])
    return _document(202, {"id": encode_scan_id(repository, digest)}, SCAN_RESPONSE)


def _artifact(repository: str, digest: str) -> tuple[str, str]:
    try:
        validate_repository_name(repository)
        parsed = Digest.parse(digest)
    except RegistryError as error:
        raise ScannerApiError(422, f"artifact: {error.message}") from None
    return repository, str(parsed)


async def _stored_media_type(request: web.Request, repository: str, digest: str) -> str:
    registry = request.app[SERVICES].registry
    try:
        fetched = await registry.read_manifest(repository, Digest.parse(digest))
    except RegistryError:
        raise ScannerApiError(
            422, f"{repository}@{digest} is not stored in this registry"
        ) from None
    return fetched.record.media_type


async def _read_capped(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > MAX_REQUEST_BYTES:
        raise ScannerApiError(400, f"scan requests are limited to {MAX_REQUEST_BYTES} bytes")
    data = bytearray()
    while chunk := await request.content.readany():
        data += chunk
        if len(data) > MAX_REQUEST_BYTES:
            raise ScannerApiError(400, f"scan requests are limited to {MAX_REQUEST_BYTES} bytes")
    return bytes(data)


async def report(request: web.Request) -> web.Response:
    endpoint = _endpoint(request)
    try:
        repository, digest = decode_scan_id(request.match_info["scan_id"])
        validate_repository_name(repository)
    except (HarborFormatError, RegistryError):
        raise ScannerApiError(404, "unknown scan id") from None
    if not await may(request, READ_SCAN, repository):
        raise ScannerApiError(403, f"you may not read scan reports in {repository}")
    report_type = report_type_of(", ".join(request.headers.getall("Accept", [])))
    if report_type is None:
        raise ScannerApiError(
            400, "this scanner serves vulnerability reports only: accept one of their media types"
        )
    try:
        media_type = await _stored_media_type(request, repository, digest)
    except ScannerApiError:
        raise ScannerApiError(404, "unknown scan id: the artifact is no longer stored") from None
    found = await request.app[IAM].threads.run(endpoint.scans.report, digest)
    if found is None:
        raise ScannerApiError(404, "no scan was requested for this artifact")
    if found.status in (ScanStatus.PENDING, ScanStatus.RUNNING):
        return web.Response(status=302, headers={"Refresh-After": str(REFRESH_AFTER_SECONDS)})
    if found.status is ScanStatus.ERROR:
        raise ScannerApiError(500, f"the scan failed: {found.error or 'no reason given'}")
    scanner = _scanner(endpoint)
    if found.scanner != BUILTIN_SCANNER:
        scanner = Scanner(name=found.scanner, vendor="external scanner adapter", version="")
    artifact = Artifact(repository=repository, digest=digest, mime_type=media_type)
    return _document(200, vulnerability_report(found, artifact, scanner), report_type)


def database_state(database: VulnerabilityDatabase) -> Callable[[], DatabaseState | None]:
    def current() -> DatabaseState | None:
        generation = database.current()
        if generation is None:
            return None
        return DatabaseState(generation.generation, generation.info.newest_modified)

    return current


def builtin_scanner_endpoint(
    settings: Settings, scans: ScanRequester, database: VulnerabilityDatabase
) -> BuiltinScannerEndpoint:
    listening = registry_url(None, settings.listen, tls=settings.tls_cert is not None)
    urls = (settings.public_url, listening) if settings.public_url else (listening,)
    return BuiltinScannerEndpoint(scans, __version__, urls, database_state(database))
