"""What handlers can reach: the services, built once per process."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from moorage.http.authn import Authenticator
from moorage.services.audit import AuditService
from moorage.services.events import EventBus
from moorage.services.identity import IdentityService
from moorage.services.immutability import ImmutabilityService
from moorage.services.projects import ProjectService
from moorage.services.proxy import ProxyCache, ProxyService
from moorage.services.registry import RegistryService
from moorage.services.threads import Threads
from moorage.services.tokens import TokenService
from moorage.services.uploads import UploadService


@dataclass(frozen=True, slots=True)
class Services:
    registry: RegistryService
    uploads: UploadService
    max_page_size: int
    proxy: ProxyCache


@dataclass(frozen=True, slots=True)
class IamServices:
    identity: IdentityService
    projects: ProjectService
    immutability: ImmutabilityService
    proxies: ProxyService
    tokens: TokenService
    authenticator: Authenticator
    threads: Threads
    events: EventBus
    audit: AuditService
    v2_basic_auth: bool
    public_url: str | None


SERVICES = web.AppKey("services", Services)
IAM = web.AppKey("iam", IamServices)
