"""Builds the aiohttp application: services, middlewares, routes, background jobs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import timedelta

from aiohttp import web
from aiohttp.typedefs import Handler

from moorage.config import Settings
from moorage.domain.errors import ErrorCode, RegistryError
from moorage.domain.policy import PolicySet
from moorage.http.access import AUTHORIZER, Authorizer, OpenAccess, access_middleware
from moorage.http.responses import error_response
from moorage.http.routes import install_routes
from moorage.http.state import SERVICES, Services
from moorage.http.v2 import API_VERSION
from moorage.metadata.database import make_engine
from moorage.metadata.store import MetadataStore
from moorage.services.events import EventBus, log_subscriber
from moorage.services.registry import RegistryService
from moorage.services.threads import Threads
from moorage.services.uploads import UploadIds, UploadLimits, UploadService
from moorage.storage.filesystem import FilesystemStorage

log = logging.getLogger("moorage.http")

# Router-level failures under /v2 are answered in the OCI error format too.
_ROUTER_ERRORS = {
    404: RegistryError(ErrorCode.NAME_UNKNOWN, "no such endpoint or repository", status=404),
    405: RegistryError(ErrorCode.UNSUPPORTED, "method not allowed on this endpoint"),
}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except RegistryError as error:
        return error_response(error)
    except web.HTTPException as exc:
        mapped = _ROUTER_ERRORS.get(exc.status)
        if mapped is not None:
            return error_response(mapped)
        if exc.status == 413:
            return error_response(
                RegistryError(ErrorCode.SIZE_INVALID, "request body too large", status=413)
            )
        raise
    except (ConnectionError, asyncio.CancelledError):
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return web.json_response(
            {"errors": [{"code": "UNKNOWN", "message": "internal server error"}]}, status=500
        )


async def _add_api_version(request: web.Request, response: web.StreamResponse) -> None:
    # The server banner says nothing about the software's version.
    response.headers["Server"] = "moorage"
    if request.path.startswith("/v2"):
        response.headers.update(API_VERSION)


def build_app(
    settings: Settings,
    *,
    authorizer: Authorizer | None = None,
    policies: PolicySet | None = None,
    run_jobs: bool = True,
) -> web.Application:
    app = web.Application(
        middlewares=[error_middleware, access_middleware], client_max_size=1 << 20
    )
    threads = Threads(settings.db_threads)
    engine = make_engine(
        settings.resolved_database_url,
        pool_size=settings.db_threads,
        sqlite_synchronous=settings.sqlite_synchronous,
    )
    metadata = MetadataStore(engine)
    storage = FilesystemStorage(settings.data_dir / "storage")
    events = EventBus()
    events.subscribe(log_subscriber)
    registry = RegistryService(
        storage,
        metadata,
        threads,
        events,
        policies or PolicySet(),
        max_manifest_bytes=settings.max_manifest_bytes,
        manifest_cache_bytes=settings.manifest_cache_bytes,
    )
    uploads = UploadService(
        storage,
        metadata,
        threads,
        events,
        UploadLimits(settings.max_blob_bytes, timedelta(seconds=settings.upload_expiry_seconds)),
        UploadIds(lambda: metadata.server_secret("upload-session-ids")),
    )
    app[SERVICES] = Services(registry, uploads, settings.max_page_size)
    app[AUTHORIZER] = authorizer or OpenAccess()
    install_routes(app)
    app.on_response_prepare.append(_add_api_version)

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        await threads.run(uploads.ids.load)
        purge = None
        if run_jobs:
            purge = asyncio.create_task(
                _every(settings.upload_purge_interval_seconds, uploads.purge_expired)
            )
        yield
        if purge is not None:
            purge.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await purge
        threads.shutdown()
        metadata.close()

    app.cleanup_ctx.append(lifecycle)
    return app


async def _every(seconds: float, job: object) -> None:
    assert callable(job)
    while True:
        try:
            await job()
        except Exception:
            log.exception("background job failed")
        await asyncio.sleep(seconds)
