"""What handlers can reach: the services, built once per process."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from moorage.coordination.base import Coordination
from moorage.http.authn import Authenticator
from moorage.services.access.audit import AuditService
from moorage.services.access.identity import IdentityService
from moorage.services.access.projects import ProjectService
from moorage.services.access.refresh_tokens import RefreshTokenService
from moorage.services.access.tokens import TokenService
from moorage.services.distribution.mirror import NameRouter
from moorage.services.distribution.proxy import ProxyCache, ProxyService
from moorage.services.distribution.replication import ReplicationService
from moorage.services.events import EventBus
from moorage.services.lifecycle.gc_runner import GcRunner
from moorage.services.registry.immutability import ImmutabilityService
from moorage.services.registry.pulls import PullService
from moorage.services.registry.registry import RegistryService
from moorage.services.registry.uploads import UploadService
from moorage.services.staging.promotion import PromotionService, StageService
from moorage.services.supply_chain.sbom import SbomService
from moorage.services.supply_chain.scanner_adapters import ScannerAdapterService
from moorage.services.supply_chain.scanning import ScanService
from moorage.services.supply_chain.signature_policy import SignaturePolicy
from moorage.services.supply_chain.trust import TrustService
from moorage.services.supply_chain.vulndb import VulnerabilityDatabaseService
from moorage.services.supply_chain.vulnerability_policy import (
    VulnerabilityPolicyCheck,
    VulnerabilityPolicyService,
)
from moorage.services.threads import Threads


@dataclass(frozen=True, slots=True)
class Services:
    registry: RegistryService
    uploads: UploadService
    max_page_size: int
    proxy: ProxyCache
    unpaged_listing_size: int = 10_000


@dataclass(frozen=True, slots=True)
class IamServices:
    identity: IdentityService
    projects: ProjectService
    immutability: ImmutabilityService
    vulnerability_policy: VulnerabilityPolicyService
    vulnerability_gate: VulnerabilityPolicyCheck  # the pull check; `evaluate` for other gates
    trust: TrustService
    signatures: SignaturePolicy  # the pull check; `evaluate` for the promotion gate
    scans: ScanService
    sboms: SbomService
    vulndb: VulnerabilityDatabaseService
    proxies: ProxyService
    tokens: TokenService
    refresh_tokens: RefreshTokenService
    authenticator: Authenticator
    threads: Threads
    events: EventBus
    audit: AuditService
    v2_basic_auth: bool
    public_url: str | None
    stages: StageService  # stage labels, promotion-only flags, gates, approvals
    promotions: PromotionService
    stage_order: list[str]


@dataclass(frozen=True, slots=True)
class Routing:
    """Name routing (the default mirror, virtual projects) and the one path of every pull."""

    names: NameRouter
    pulls: PullService


@dataclass(frozen=True, slots=True)
class Lifecycle:
    """What keeps the registry's storage in bounds: garbage collection."""

    gc: GcRunner


SERVICES = web.AppKey("services", Services)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
IAM = web.AppKey("iam", IamServices)
SCANNER_ADAPTERS = web.AppKey("scanner_adapters", ScannerAdapterService)
REPLICATION = web.AppKey("replication", ReplicationService)
ROUTING = web.AppKey("routing", Routing)
# Cross-node coordination; `await app[COORDINATION].ping(within=seconds)` is its readiness.
COORDINATION = web.AppKey("coordination", Coordination)
