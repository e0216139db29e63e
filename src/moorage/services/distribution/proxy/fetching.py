"""What the manifest and blob halves of a proxy cache share.

`FetchContext` holds the collaborators both need (upstream clients, metadata, threads, events,
the single flight of this worker and the locks across workers and nodes, the counters) and the steps
both take before going upstream: naming the upstream repository, the `upstream-fetch`
permission, the cross-node lock and turning an upstream failure into a registry error. It
lives apart so `manifests` and `blobs` depend on it rather than on each other.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from moorage.coordination.base import Coordination, HeldLock
from moorage.domain.errors import ErrorCode, RegistryError
from moorage.domain.events import AccessEvent, Actor
from moorage.domain.names import project_of
from moorage.domain.proxy import upstream_repository
from moorage.metadata.registry.store import MetadataStore
from moorage.services.distribution.proxy.config import ProxyConfig
from moorage.services.distribution.proxy.flight import SingleFlight
from moorage.services.distribution.proxy.upstream import (
    UpstreamClients,
    UpstreamError,
    upstream_failure,
)
from moorage.services.events import EventBus
from moorage.services.threads import Threads

T = TypeVar("T")


@dataclass
class ProxyStats:
    """Counters of the proxy's work in this worker (logged; exported with metrics later)."""

    counts: Counter[str] = field(default_factory=Counter)

    def count(self, what: str) -> None:
        self.counts[what] += 1


# Whether the caller may bring new content in. Called with True when the pull fails without
# it (the HTTP side may then ask an anonymous client to sign in), False when a cached copy
# will be served anyway.
MayFetch = Callable[[bool], Awaitable[bool]]


class FetchContext:
    """The collaborators and upstream steps the manifest and blob halves share (one per
    `ProxyCache`, so both use the same single flight and counters)."""

    def __init__(
        self,
        clients: UpstreamClients,
        metadata: MetadataStore,
        threads: Threads,
        events: EventBus,
        coordination: Coordination,
    ) -> None:
        self.clients = clients
        self.metadata = metadata
        self.threads = threads
        self.events = events
        self.coordination = coordination
        self.flights = SingleFlight()
        self.stats = ProxyStats()

    def upstream_name(self, config: ProxyConfig, repository: str) -> str:
        name = upstream_repository(config.endpoint.project, repository, config.endpoint.flavor)
        if name is None:
            raise RegistryError(
                ErrorCode.NAME_UNKNOWN,
                f"{repository} is the proxy-cache project itself; pull"
                f" {config.endpoint.project}/<upstream repository>",
            )
        return name

    async def require_fetch(
        self, may_fetch: MayFetch, repository: str, what: str, actor: Actor
    ) -> None:
        if await may_fetch(True):
            return
        self.stats.count("fetch-refused")
        message = (
            f"{repository} {what} is not cached, and bringing new content in from the upstream"
            " needs the upstream-fetch permission"
        )
        self.events.publish(
            AccessEvent(
                "access:denied",
                actor,
                "denied",
                project_of(repository),
                f"{repository}:{what}"[:500],
                {"action": "upstream-fetch", "reason": message},
            )
        )
        raise RegistryError(ErrorCode.DENIED, message)

    async def cross_process_lock(self, key: str) -> HeldLock:
        """Held by one request in the whole deployment (the in-process single flight stands
        in front, so one request per process waits here)."""
        return await self.coordination.lock(f"proxy:{key}")

    async def upstream(self, call: Awaitable[T], what: str, missing: ErrorCode) -> T:
        """Await an upstream call; its failure becomes a clear registry error."""
        try:
            return await call
        except UpstreamError as error:
            raise upstream_failure(error, what, missing) from None
