"""The service layer for one-shot management commands (the CLI), without HTTP.

Built the way the server builds it, on the same database, except that audit entries are written
at once instead of in batches: a command may exit right after its change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

from moorage.config import Settings
from moorage.domain.events import DomainEvent
from moorage.metadata.access.iam_store import IamStore
from moorage.metadata.database import make_engine, migrate, startup_lock
from moorage.metadata.lifecycle.gc_runs_store import GcRunsStore
from moorage.metadata.registry.store import MetadataStore
from moorage.services.access.audit import AuditLog, AuditService
from moorage.services.access.identity import IdentityService, policy_from
from moorage.services.access.projects import ProjectService
from moorage.services.access.tokens import TokenService, ensure_signing_key
from moorage.services.distribution.proxy import ProxyService
from moorage.services.events import EventBus
from moorage.services.lifecycle.gc import GarbageCollector


@dataclass(frozen=True, slots=True)
class ManagementServices:
    identity: IdentityService
    projects: ProjectService
    proxies: ProxyService
    tokens: TokenService
    audit: AuditService
    events: EventBus


@contextmanager
def management_services(settings: Settings) -> Iterator[ManagementServices]:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(
        settings.resolved_database_url,
        pool_size=1,
        sqlite_synchronous=settings.sqlite_synchronous,
    )
    try:
        with startup_lock(engine):
            migrate(engine)
            store = IamStore(engine)
            ensure_signing_key(store)
        events = EventBus()
        events.subscribe(AuditLog(store, immediate=True))
        identity = IdentityService(store, events, policy_from(settings))
        tokens = TokenService(
            store, service=settings.auth_service, ttl_seconds=settings.token_ttl_seconds
        )
        yield ManagementServices(
            identity=identity,
            projects=ProjectService(store, identity, events),
            proxies=ProxyService(store, MetadataStore(engine), events),
            tokens=tokens,
            audit=AuditService(store, tokens, events),
            events=events,
        )
    finally:
        engine.dispose()


@contextmanager
def gc_collector(
    settings: Settings,
) -> Iterator[tuple[GarbageCollector, GcRunsStore, Callable[[DomainEvent], None]]]:
    """The garbage collector on the registry's database and storage, with the audit log."""
    from moorage.metadata.lifecycle.gc_store import GcStore
    from moorage.metadata.staging.promotion_store import PromotionStore
    from moorage.services.lifecycle.gc_runner import build_collector
    from moorage.storage.factory import make_storage

    engine = make_engine(
        settings.resolved_database_url, pool_size=2, sqlite_synchronous=settings.sqlite_synchronous
    )
    try:
        with startup_lock(engine):
            migrate(engine)
        events = EventBus()
        events.subscribe(AuditLog(IamStore(engine), immediate=True))
        metadata = MetadataStore(engine)
        runs = GcRunsStore(engine, timedelta(seconds=settings.gc_lease_seconds))
        collector = build_collector(
            GcStore(engine),
            runs,
            make_storage(settings),
            metadata,
            PromotionStore(engine, metadata),
        )
        yield collector, runs, events.publish
    finally:
        engine.dispose()
