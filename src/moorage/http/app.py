"""Builds the aiohttp application: services, middlewares, routes, background jobs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

from aiohttp import web
from aiohttp.typedefs import Handler

from moorage.config import Settings
from moorage.coordination import Coordination, make_coordination
from moorage.domain.errors import ErrorCode, RegistryError
from moorage.domain.events import SYSTEM
from moorage.domain.policy import PolicySet
from moorage.domain.quotas import QuotaLimits, from_setting
from moorage.domain.replication import Backoff
from moorage.http.access import AccessDenied, access_middleware
from moorage.http.api.quotas import QUOTAS
from moorage.http.authn import Authenticator
from moorage.http.errors import ApiProblem, problem_response, render_denied
from moorage.http.forwarded import forwarded_middleware
from moorage.http.readiness import CHECK_TIMEOUT_SECONDS, READINESS, readiness_checks
from moorage.http.remote_blobs import REMOTE_BLOBS, RemoteBlobs
from moorage.http.replication_client import HttpRemoteRegistries
from moorage.http.responses import error_response
from moorage.http.routes import install_routes
from moorage.http.scanner_api import (
    BUILTIN_SCANNER_ENDPOINT,
    builtin_scanner_endpoint,
    scanner_errors,
)
from moorage.http.scanner_client import scanner_adapters
from moorage.http.state import (
    COORDINATION,
    IAM,
    LIFECYCLE,
    REPLICATION,
    RETENTION,
    ROUTING,
    SCANNER_ADAPTERS,
    SERVICES,
    IamServices,
    Lifecycle,
    Routing,
    Services,
)
from moorage.http.upstream import HttpUpstreamClients
from moorage.http.v2 import API_VERSION
from moorage.metadata.access.iam_store import IamStore
from moorage.metadata.database import make_engine
from moorage.metadata.distribution.replication_store import ReplicationStore
from moorage.metadata.distribution.virtual_store import VirtualStore
from moorage.metadata.health import ping_database
from moorage.metadata.lifecycle.deletion_store import DeletionStore
from moorage.metadata.lifecycle.gc_runs_store import GcRunsStore
from moorage.metadata.lifecycle.gc_store import GcStore
from moorage.metadata.lifecycle.pull_store import PullStore
from moorage.metadata.lifecycle.quota_store import QuotaStore
from moorage.metadata.lifecycle.retention_store import RetentionStore
from moorage.metadata.registry.store import MetadataStore
from moorage.metadata.staging.promotion_store import PromotionStore
from moorage.metadata.supply_chain.scan_store import ScanStore
from moorage.metadata.supply_chain.scanner_store import ScannerStore
from moorage.metadata.supply_chain.trust_store import TrustStore
from moorage.metadata.supply_chain.vulndb_store import VulndbStore
from moorage.metadata.supply_chain.vulnerability_policy_store import VulnerabilityPolicyStore
from moorage.services.access.audit import AuditLog, AuditService
from moorage.services.access.identity import IdentityService, policy_from
from moorage.services.access.projects import ProjectService
from moorage.services.access.refresh_tokens import RefreshTokenService
from moorage.services.access.tokens import TokenService
from moorage.services.cache import announce_invalidations, invalidated
from moorage.services.distribution.mirror import MirrorService, NameRouter
from moorage.services.distribution.proxy import ProxyCache, ProxyService
from moorage.services.distribution.replication import ReplicationOptions, ReplicationService
from moorage.services.distribution.virtual import VirtualProjectService
from moorage.services.errors import IdentityError, ThrottledError
from moorage.services.events import EventBus, log_subscriber
from moorage.services.lifecycle.deletion import DeletionService
from moorage.services.lifecycle.gc_runner import GcRunner, build_collector, gc_options_from
from moorage.services.lifecycle.proxy_eviction import ProxyEviction
from moorage.services.lifecycle.pull_tracking import PullTracker
from moorage.services.lifecycle.quotas import QuotaService
from moorage.services.lifecycle.retention import RetentionService
from moorage.services.registry.immutability import ImmutabilityService, ImmutableTagPolicy
from moorage.services.registry.pulls import PullService
from moorage.services.registry.registry import RegistryService
from moorage.services.registry.uploads import UploadIds, UploadLimits, UploadService
from moorage.services.staging.promotion import PromotionOnlyPolicy, PromotionService, StageService
from moorage.services.staging.promotion_gates import GateEvaluator
from moorage.services.supply_chain.sbom import SbomService
from moorage.services.supply_chain.scanning import ScanService, ScanServiceOptions
from moorage.services.supply_chain.signature_policy import SignaturePolicy
from moorage.services.supply_chain.trust import TrustService
from moorage.services.supply_chain.vulndb import VulnerabilityDatabaseService, shared_database
from moorage.services.supply_chain.vulnerability_policy import (
    VulnerabilityPolicyCheck,
    VulnerabilityPolicyService,
)
from moorage.services.threads import Threads
from moorage.storage.factory import make_storage

log = logging.getLogger("moorage.http")

_AUDIT_PRUNE_SECONDS = 6 * 3600

# Router-level failures under /v2 are answered in the OCI error format too.
_ROUTER_ERRORS = {
    404: RegistryError(ErrorCode.NAME_UNKNOWN, "no such endpoint or repository", status=404),
    405: RegistryError(ErrorCode.UNSUPPORTED, "method not allowed on this endpoint"),
}


def _is_api(request: web.Request) -> bool:
    return request.path.startswith("/api/")


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure leaves in its area's format: OCI error JSON on /v2, problem JSON on /api,
    Harbor's ErrorResponse on /scanner."""
    if request.path.startswith("/scanner/"):
        return await scanner_errors(request, handler)
    try:
        return await handler(request)
    except AccessDenied as denied:
        return render_denied(request, denied)
    except ApiProblem as problem:
        return problem_response(problem.status, problem.detail, errors=problem.errors)
    except RegistryError as error:
        if _is_api(request):
            return problem_response(
                error.status, error.message, code=str(error.code), headers=error.headers
            )
        return error_response(error)
    except IdentityError as error:
        return problem_response(error.status, str(error))
    except ThrottledError as error:
        retry = {"Retry-After": str(error.retry_after)}
        if _is_api(request):
            return problem_response(429, str(error), headers=retry)
        return error_response(RegistryError(ErrorCode.TOOMANYREQUESTS, str(error), headers=retry))
    except web.HTTPException as exc:
        if _is_api(request):
            allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            return problem_response(exc.status, exc.reason, headers=allow)
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
        if _is_api(request):
            return problem_response(500, "internal server error")
        return web.json_response(
            {"errors": [{"code": "UNKNOWN", "message": "internal server error"}]}, status=500
        )


async def _add_headers(request: web.Request, response: web.StreamResponse) -> None:
    # The server banner says nothing about the software's version.
    response.headers["Server"] = "moorage"
    if request.path.startswith("/v2"):
        response.headers.update(API_VERSION)


async def _has_proxy_config(proxy_cache: ProxyCache, project: str) -> bool:
    return await proxy_cache.config_for(project) is not None


def build_app(
    settings: Settings,
    *,
    policies: PolicySet | None = None,
    run_jobs: bool = True,
) -> web.Application:
    # Without trusted proxies the forwarded middleware would only pass requests on: every
    # middleware costs each request a call, so it is left out then.
    forwarded = [forwarded_middleware(settings.trusted_proxies)] if settings.trusted_proxies else []
    app = web.Application(
        middlewares=[*forwarded, error_middleware, access_middleware],
        client_max_size=1 << 20,
    )
    threads = Threads(settings.db_threads)
    engine = make_engine(
        settings.resolved_database_url,
        pool_size=settings.db_threads,
        sqlite_synchronous=settings.sqlite_synchronous,
    )
    quota_defaults = QuotaLimits(
        from_setting(settings.quota_default_bytes), from_setting(settings.quota_default_artifacts)
    )
    metadata = MetadataStore(engine, quota_defaults=quota_defaults)
    iam_store = IamStore(engine)
    storage = make_storage(settings)
    events = EventBus()
    events.subscribe(log_subscriber)
    coordination = make_coordination(settings)
    app[COORDINATION] = coordination
    audit = AuditLog(iam_store)
    events.subscribe(audit)
    # Last-pull times, buffered per process and written in batches (never once per pull).
    pull_store = PullStore(engine)
    pull_tracker = PullTracker(pull_store, threads, settings.pull_flush_seconds)
    events.subscribe(pull_tracker.on_event)
    identity = IdentityService(iam_store, events, policy_from(settings))
    tokens = TokenService(
        iam_store, service=settings.auth_service, ttl_seconds=settings.token_ttl_seconds
    )
    # Registered external scanner adapters; `scanner_resolver` is what the scan service asks.
    adapters, scanner_resolver = scanner_adapters(
        settings, ScannerStore(engine), metadata.server_secret, events, threads, tokens
    )
    app[SCANNER_ADAPTERS] = adapters
    # The registry's own policies join any the caller passes in.
    policies = policies if policies is not None else PolicySet()
    immutability = ImmutabilityService(iam_store, events)
    ImmutableTagPolicy(immutability, metadata, threads).register(policies)
    # The scan service reads the vulnerability database and serves reports (ReportReader).
    vulnerability_database = shared_database(settings, VulndbStore(engine), storage)
    scans = ScanService(
        ScanStore(engine),
        metadata,
        storage,
        threads,
        events,
        vulnerability_database,
        resolver=scanner_resolver,
        options=ScanServiceOptions(
            concurrency=settings.scan_concurrency,
            lease_seconds=settings.scan_lease_seconds,
            max_attempts=settings.scan_max_attempts,
            vulndb_poll_seconds=settings.vulndb_poll_seconds,
        ),
    )
    events.subscribe(scans.on_event)
    vulnerability_policy = VulnerabilityPolicyService(VulnerabilityPolicyStore(engine), events)
    vulnerability_gate = VulnerabilityPolicyCheck(vulnerability_policy, scans, metadata, threads)
    vulnerability_gate.register(policies)
    trust_store = TrustStore(engine)
    trust = TrustService(trust_store, iam_store, events)
    signatures = SignaturePolicy(trust, trust_store, metadata, storage, threads, events)
    signatures.register(policies)
    # Stages: promotion-only projects refuse direct pushes (a push:manifest and push:blob check).
    promotion_store = PromotionStore(engine, metadata)
    stages = StageService(promotion_store, identity, events)
    PromotionOnlyPolicy(
        stages, identity, threads, events, break_glass=settings.promotion_break_glass
    ).register(policies)
    registry = RegistryService(
        storage,
        metadata,
        threads,
        events,
        policies,
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
        # Every upload step is a push:blob decision (a project may become promotion-only).
        authorize=registry.authorize_upload,
    )
    # SBOMs of scanned images; attached as referrers when a scan completes (attach_sbom).
    sboms = SbomService(scans, registry, uploads, threads, public_url=settings.public_url)
    events.subscribe(sboms.on_event)
    proxies = ProxyService(iam_store, metadata, events)
    upstreams = HttpUpstreamClients()
    proxy_cache = ProxyCache(
        proxies,
        upstreams,
        storage,
        metadata,
        threads,
        events,
        coordination,
        max_manifest_bytes=settings.max_manifest_bytes,
        max_blob_bytes=settings.max_blob_bytes,
    )
    # Quotas: refused in the metadata store; announced, shown and set here.
    quota_store = QuotaStore(engine)
    quotas = QuotaService(
        quota_store,
        threads,
        events,
        defaults=quota_defaults,
        warning_percent=settings.quota_warning_percent,
        is_proxy=lambda project: _has_proxy_config(proxy_cache, project),
        evict=ProxyEviction(metadata, quota_store, threads, coordination).evict,
    )
    events.subscribe(quotas.on_event)
    app[QUOTAS] = quotas
    app[SERVICES] = Services(
        registry, uploads, settings.max_page_size, proxy_cache, settings.unpaged_listing_size
    )
    remote_blobs = RemoteBlobs(storage, settings.s3_redirect, settings.s3_presign_seconds)
    app[REMOTE_BLOBS] = remote_blobs
    app.on_cleanup.append(remote_blobs.close)

    async def is_proxy(project: str) -> bool:
        return await proxy_cache.config_for(project) is not None

    promotions = PromotionService(
        stages=stages,
        gates=GateEvaluator(
            stage_order=settings.stages,
            vulnerability_gate=vulnerability_gate,
            vulnerability_policies=vulnerability_policy,
            signatures=signatures,
            identity=identity,
            store=promotion_store,
            metadata=metadata,
            storage=storage,
            threads=threads,
        ),
        store=promotion_store,
        registry=registry,
        uploads=uploads,
        metadata=metadata,
        tokens=tokens,
        threads=threads,
        events=events,
        is_proxy=is_proxy,
    )
    remotes = HttpRemoteRegistries(
        chunk_bytes=settings.replication_chunk_bytes,
        monolithic_bytes=settings.replication_chunk_bytes,
    )
    replication = ReplicationService(
        ReplicationStore(engine),
        metadata,
        registry,
        uploads,
        storage,
        threads,
        events,
        remotes,
        ReplicationOptions(
            concurrency=settings.replication_concurrency,
            lease_seconds=settings.replication_lease_seconds,
            backoff=Backoff(
                settings.replication_retry_base_seconds,
                settings.replication_retry_max_seconds,
                settings.replication_max_attempts,
            ),
            max_manifest_bytes=settings.max_manifest_bytes,
            max_blob_bytes=settings.max_blob_bytes,
            coordination=coordination,
        ),
    )
    events.subscribe(replication.on_event)
    app[REPLICATION] = replication
    retention_service = RetentionService(
        RetentionStore(engine),
        pull_store,
        metadata,
        registry,
        immutability,
        policies,
        threads,
        events,
    )
    app[RETENTION] = retention_service
    # Names without a project (mirror mode) and virtual projects, routed before authorization.
    virtual_store = VirtualStore(engine)
    virtual_projects = VirtualProjectService(virtual_store, proxies, events)
    proxies.refuse_configuration = virtual_projects.proxy_refusal
    app[ROUTING] = Routing(
        names=NameRouter(
            identity,
            MirrorService(virtual_store, proxies, events, settings.mirror_project),
            virtual_projects,
            threads,
        ),
        pulls=PullService(registry, proxy_cache),
    )
    projects = ProjectService(iam_store, identity, events)
    app[IAM] = IamServices(
        identity=identity,
        projects=projects,
        immutability=immutability,
        vulnerability_policy=vulnerability_policy,
        vulnerability_gate=vulnerability_gate,
        trust=trust,
        signatures=signatures,
        scans=scans,
        sboms=sboms,
        vulndb=VulnerabilityDatabaseService.from_settings(settings, events, vulnerability_database),
        proxies=proxies,
        tokens=tokens,
        refresh_tokens=RefreshTokenService(
            iam_store,
            identity,
            events,
            lifetime_days=settings.refresh_token_days,
            rotation=settings.refresh_token_rotation,
        ),
        authenticator=Authenticator(
            identity, tokens, threads, certificate_identity=settings.tls_client_identity
        ),
        threads=threads,
        events=events,
        audit=AuditService(iam_store, tokens, events),
        v2_basic_auth=settings.v2_basic_auth,
        public_url=settings.public_url,
        stages=stages,
        promotions=promotions,
        stage_order=list(settings.stages),
        deletion=DeletionService(
            DeletionStore(engine),
            projects,
            stages,
            identity,
            immutability,
            events,
            break_glass=settings.promotion_break_glass,
        ),
    )
    gc_runs = GcRunsStore(engine, timedelta(seconds=settings.gc_lease_seconds))
    gc = GcRunner(
        build_collector(GcStore(engine), gc_runs, storage, metadata, promotion_store),
        gc_runs,
        gc_options_from(settings),
        threads,
        events,
    )
    app[LIFECYCLE] = Lifecycle(gc=gc)
    app[BUILTIN_SCANNER_ENDPOINT] = builtin_scanner_endpoint(
        settings, scans, vulnerability_database
    )
    app[READINESS] = readiness_checks(
        lambda: ping_database(engine),
        storage,
        redis_ping=(
            (lambda: coordination.ping(CHECK_TIMEOUT_SECONDS))
            if settings.redis_url is not None
            else None
        ),
    )
    install_routes(app)
    app.on_response_prepare.append(_add_headers)

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        await threads.run(uploads.ids.load)
        await coordination.start(invalidated)
        announce_invalidations(coordination.invalidate)
        tasks = [
            asyncio.create_task(audit.run(threads.run)),
            asyncio.create_task(pull_tracker.run()),
        ]
        if run_jobs:
            tasks.append(
                asyncio.create_task(
                    _every(
                        settings.upload_purge_interval_seconds,
                        uploads.purge_expired,
                        coordination,
                        "upload-purge",
                    )
                )
            )
            if settings.audit_retention_days:
                retention = timedelta(days=settings.audit_retention_days)

                async def prune_audit() -> None:
                    cutoff = datetime.now(UTC) - retention
                    await threads.run(app[IAM].audit.prune, SYSTEM, cutoff)

                tasks.append(
                    asyncio.create_task(
                        _every(_AUDIT_PRUNE_SECONDS, prune_audit, coordination, "audit-prune")
                    )
                )
            tasks.append(
                asyncio.create_task(
                    _every(
                        settings.retention_check_seconds,
                        retention_service.run_due,
                        coordination,
                        "retention-schedule",
                    )
                )
            )
            tasks.append(asyncio.create_task(scans.run()))
            tasks.append(asyncio.create_task(sboms.run()))
            if settings.gc_schedule:
                tasks.append(asyncio.create_task(gc.scheduled(settings.gc_schedule, coordination)))
        # Every process records push events for replication; one runs the queue.
        tasks.append(asyncio.create_task(replication.run(engine=run_jobs)))
        yield
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await gc.close()
        announce_invalidations(None)
        await coordination.close()
        await upstreams.close()
        await remotes.close()
        threads.shutdown()
        metadata.close()

    app.cleanup_ctx.append(lifecycle)
    return app


async def _every(
    seconds: float, job: Callable[[], Awaitable[object]], coordination: Coordination, name: str
) -> None:
    """Run `job` every `seconds`: in one worker of each node, and with Redis in one node of the
    deployment per interval (whichever node's turn comes first)."""
    while True:
        try:
            if await coordination.run_once(name, seconds):
                await job()
            else:
                log.info("periodic job %s: not this node's turn", name)
        except Exception:
            log.exception("background job failed")
        await asyncio.sleep(seconds)
