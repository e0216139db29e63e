"""The vulnerability database (administrators only): status, upload-and-import, rollback.

An upload is the bundle, tar or OSV zip file itself as the raw request body. It is
streamed to a file under the data directory (capped by `vulndb_max_upload_bytes`), then
imported on a worker thread; the event loop only moves bytes. The reply comes when the new
generation is current.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from pydantic import Field

from moorage.domain.events import Actor
from moorage.http.access import ADMIN
from moorage.http.api.framework import ApiModel, ApiRoute, Call, UtcDateTime
from moorage.http.errors import ApiProblem
from moorage.services.supply_chain.vulndb import VulnerabilityDatabaseService
from moorage.vulnerability.bundle import BundleError
from moorage.vulnerability.database import (
    DatabaseBusyError,
    DatabaseStatus,
    GenerationInfo,
    ImportResult,
    VulnerabilityDatabaseError,
)

TAG: Final = "vulnerability-database"
PATH: Final = "/api/v1/vulnerability-database"
UPLOAD_TYPES: Final = (
    "application/octet-stream",
    "application/gzip",
    "application/x-tar",
    "application/zip",
)
_CHUNK_BYTES: Final = 1 << 20


class Generation(ApiModel):
    id: str
    created_at: UtcDateTime
    records: int
    skipped: int
    ecosystems: dict[str, int]
    source_kind: str
    source_name: str
    source_checksum: str
    signed: bool
    bundle_created: str | None
    newest_modified: UtcDateTime | None
    cve_records: int = Field(description="CVE ids rated by severity-only CVE JSON 5 sources")
    current: bool


class DatabaseStatusView(ApiModel):
    current: Generation | None
    history: list[Generation]


class SkippedRecordView(ApiModel):
    origin: str
    record_id: str | None
    reason: str


class ImportReport(ApiModel):
    generation: str
    records: int
    skipped: int
    skipped_records: list[SkippedRecordView]
    ecosystems: dict[str, int]
    elapsed_seconds: float
    source_checksum: str
    signed: bool


def _generation(info: GenerationInfo, current: str | None) -> Generation:
    return Generation(
        id=info.id,
        created_at=info.created_at,
        records=info.records,
        skipped=info.skipped,
        ecosystems=dict(info.ecosystems),
        source_kind=info.source_kind,
        source_name=info.source_name,
        source_checksum=info.source_checksum,
        signed=info.signed,
        bundle_created=info.bundle_created,
        newest_modified=info.newest_modified,
        cve_records=info.cve_records,
        current=info.id == current,
    )


def status_view(status: DatabaseStatus) -> DatabaseStatusView:
    current = status.current.id if status.current is not None else None
    return DatabaseStatusView(
        current=_generation(status.current, current) if status.current is not None else None,
        history=[_generation(info, current) for info in status.history],
    )


def import_report(result: ImportResult) -> ImportReport:
    return ImportReport(
        generation=result.generation,
        records=result.records,
        skipped=result.skipped,
        skipped_records=[
            SkippedRecordView(origin=item.origin, record_id=item.record_id, reason=item.reason)
            for item in result.skipped_records
        ],
        ecosystems=dict(_counts(result.ecosystems)),
        elapsed_seconds=round(result.elapsed_seconds, 3),
        source_checksum=result.source_checksum,
        signed=result.signed,
    )


def _counts(counts: Mapping[str, int]) -> dict[str, int]:
    return {str(key): int(value) for key, value in counts.items()}


async def get_vulnerability_database(call: Call) -> DatabaseStatusView:
    return status_view(await call.run(call.iam.vulndb.status))


async def import_vulnerability_database(call: Call) -> ImportReport:
    service = call.iam.vulndb
    upload = await call.run(_upload_path, service.upload_directory)
    try:
        await _receive(call, upload, service.max_upload_bytes)
    except BaseException:
        await call.run(_remove, upload)
        raise
    try:
        # An import outlives a client that hangs up: the thread finishes it and cleans up.
        result = await asyncio.to_thread(_import_then_remove, service, call.actor, upload)
    except DatabaseBusyError as error:
        raise ApiProblem(409, str(error)) from None
    except (BundleError, VulnerabilityDatabaseError) as error:
        raise ApiProblem(422, str(error)) from None
    return import_report(result)


def _import_then_remove(
    service: VulnerabilityDatabaseService, actor: Actor, upload: Path
) -> ImportResult:
    try:
        return service.import_file(actor, upload)
    finally:
        _remove(upload)


def _upload_path(directory: Path) -> Path:
    # A directory of its own, so the file can carry a plain name that messages may show.
    own = directory / secrets.token_hex(8)
    own.mkdir(mode=0o700)
    path = own / "upload"
    path.touch(mode=0o600, exist_ok=False)
    return path


def _remove(path: Path) -> None:
    shutil.rmtree(path.parent, ignore_errors=True)


async def _receive(call: Call, target: Path, limit: int) -> None:
    """Stream the request body into `target`; 413 beyond `limit`, 400 when empty."""
    request = call.request
    too_large = ApiProblem(413, f"vulnerability database uploads are limited to {limit} bytes")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    received = 0
    file = await call.run(target.open, "wb")
    try:
        async for chunk in request.content.iter_chunked(_CHUNK_BYTES):
            received += len(chunk)
            if received > limit:
                raise too_large
            await call.run(file.write, chunk)
        await call.run(file.flush)
    finally:
        await call.run(file.close)
    if received == 0:
        raise ApiProblem(400, "send the bundle, tar or zip file as the request body")


async def rollback_vulnerability_database(call: Call) -> Generation:
    try:
        info = await asyncio.to_thread(call.iam.vulndb.rollback, call.actor)
    except VulnerabilityDatabaseError as error:  # nothing to go back to, or busy
        raise ApiProblem(409, str(error)) from None
    return _generation(info, info.id)


ROUTES: tuple[ApiRoute, ...] = (
    ApiRoute(
        "GET",
        PATH,
        get_vulnerability_database,
        ADMIN,
        "The vulnerability database: the current generation and the ones kept for rollback",
        TAG,
        response=DatabaseStatusView,
    ),
    ApiRoute(
        "POST",
        PATH,
        import_vulnerability_database,
        ADMIN,
        "Import a vulnerability database bundle, tar of OSV zips or single OSV zip (the raw"
        " request body) as a new generation, and make it current",
        TAG,
        response=ImportReport,
        status=201,
        errors=(409, 413, 422),
        consumes=UPLOAD_TYPES,
    ),
    ApiRoute(
        "POST",
        f"{PATH}/rollback",
        rollback_vulnerability_database,
        ADMIN,
        "Make the previous generation current again (the current one is dropped)",
        TAG,
        response=Generation,
        errors=(409,),
    ),
)
