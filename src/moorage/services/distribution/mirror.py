"""Transparent mirror mode and the routing of repository names onto the projects that serve them.

A Docker daemon with `registry-mirrors`, or containerd with a `hosts.toml` mirror, asks for
`/v2/library/alpine/...`: a name in the upstream's namespace, without a project. The rule
(`NameRouter.pull_target`), applied to pulls only (GET/HEAD of manifests, blobs, tags/list and
referrers):

1. With containerd's `ns=<upstream host>` query parameter (and a host other than this
   registry's own), the name belongs to that upstream: it is served by the proxy-cache project
   whose upstream URL has that host (`docker.io`, `index.docker.io` and `registry-1.docker.io`
   are one host). Several such projects: the default mirror if it is one of them, else the
   first by name. A name that already starts with that project is left as it is. No project
   mirrors the host: 404, so containerd moves on to its next host.
2. Otherwise a name whose first segment is an existing project is that project's, as always:
   local projects win, also over a Docker Hub organization of the same name.
3. Otherwise, when a default mirror is set, the name is served as `<mirror>/<name>`.

The rewrite happens before the one authorization decision, which then judges the caller
against the real repository. Pushes and deletes are never mirrored. Tokens: a client asks the
token service for the name it uses (`repository:library/alpine:pull`); `aliases` tells the
token service which real repositories that name can stand for, and the token carries what
the caller may do on each of them — so the token's claims always name real repositories, and
the access layer checks the rewritten name against them.

Virtual projects route here too: a push into `<virtual>/<rest>` becomes a push into
`<push member>/<rest>` (or is refused), a delete is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Final
from urllib.parse import urlsplit

from moorage.domain.access import Action
from moorage.domain.errors import ErrorCode, RegistryError
from moorage.domain.events import AccessEvent, Actor
from moorage.domain.names import MAX_NAME_LENGTH, project_of, validate_repository_name
from moorage.domain.proxy import DOCKER_HUB_HOSTS
from moorage.metadata.distribution.virtual_store import VirtualStore
from moorage.services.access.identity import IdentityService
from moorage.services.cache import TtlCache
from moorage.services.distribution.proxy import ProxyService
from moorage.services.distribution.virtual import VirtualConfig, VirtualProjectService
from moorage.services.errors import IdentityError
from moorage.services.events import EventBus
from moorage.services.threads import Threads

CACHE_SECONDS: Final = 2.0
# Proxy-cache projects a token names for one prefix-less repository (and `ns` chooses among).
MAX_MIRROR_PROJECTS: Final = 32
_HOST = re.compile(r"^[a-z0-9.-]{1,253}(:[0-9]{1,5})?$|^\[[0-9a-f:.]{2,45}\](:[0-9]{1,5})?$")
_DOCKER_HUB: Final = "docker.io"


def normalize_host(host: str) -> str | None:
    """`host[:port]` in lower case, Docker Hub's names as `docker.io`; None when malformed."""
    host = host.strip().lower()
    if not _HOST.fullmatch(host):
        return None
    if host in DOCKER_HUB_HOSTS or host.removesuffix(":443") in DOCKER_HUB_HOSTS:
        return _DOCKER_HUB
    return host


def upstream_host(url: str) -> str | None:
    return normalize_host(urlsplit(url).netloc)


@dataclass(frozen=True, slots=True)
class MirrorView:
    project: str | None  # the proxy-cache project serving names without a project, if any
    source: str  # api (set through the API) | config (the configuration file) | none
    configured: str | None  # the configuration file's mirror_project
    updated_by: str | None
    updated_at: datetime | None


@dataclass(frozen=True, slots=True)
class Aliases:
    """Real repositories a requested name can stand for (for the token service).

    `members`: a virtual project's member repositories, for every action. `mirrors`: the
    repositories of proxy-cache projects a prefix-less name is mirrored from, for pulls only.
    """

    members: tuple[str, ...] = ()
    mirrors: tuple[str, ...] = ()


class MirrorService:
    """The default mirror setting: the API's stored value, else the configuration file's."""

    def __init__(
        self,
        store: VirtualStore,
        proxies: ProxyService,
        events: EventBus,
        configured: str | None,
    ) -> None:
        self._store = store
        self._proxies = proxies
        self._events = events
        self._configured = configured
        self._cache = TtlCache(CACHE_SECONDS, name="mirror-routes")

    def get(self) -> MirrorView:
        record = self._store.mirror()
        if record is not None:
            return MirrorView(
                record.project,
                "api" if record.project else "none",
                self._configured,
                record.updated_by,
                record.updated_at,
            )
        source = "config" if self._configured else "none"
        return MirrorView(self._configured, source, self._configured, None, None)

    def set(self, actor: Actor, project: str | None) -> MirrorView:
        """Make `project` (a proxy-cache project) the default mirror; None: no mirror at all."""
        previous = self.get().project
        project_id: int | None = None
        if project is not None:
            project_id = self._store.project_ids([project]).get(project)
            if project_id is None:
                raise IdentityError(f"project {project} not found", 404)
            if self._proxies.config_of(project) is None:
                raise IdentityError(
                    f"project {project} is not a proxy-cache project; only a proxy-cache"
                    " project can be the default mirror"
                )
        self._store.set_mirror(project_id, actor.name)
        self._changed(actor, "mirror:configure", project, previous)
        return self.get()

    def reset(self, actor: Actor) -> MirrorView:
        """Forget the API's setting: the configuration file's `mirror_project` applies again."""
        previous = self.get().project
        self._store.clear_mirror()
        self._changed(actor, "mirror:reset", self._configured, previous)
        return self.get()

    def _changed(
        self, actor: Actor, action: str, project: str | None, previous: str | None
    ) -> None:
        self._cache.clear()
        self._events.publish(
            AccessEvent(
                action,
                actor,
                "success",
                project,
                "registry:mirror",
                {"project": project, "previous": previous},
            )
        )

    def default_mirror(self) -> str | None:
        """The default mirror if it is (still) a proxy-cache project (cached 2 s)."""

        def load() -> str | None:
            project = self.get().project
            if project is None or self._proxies.config_of(project) is None:
                return None
            return project

        return self._cache.get_or_load("default", load)

    def proxy_projects(self) -> list[tuple[str, str | None]]:
        """(project, upstream host) of the proxy-cache projects: the default mirror first,
        then by name (cached 2 s)."""

        def load() -> list[tuple[str, str | None]]:
            rows = [
                (name, upstream_host(url))
                for name, url in self._store.proxy_upstreams(MAX_MIRROR_PROJECTS)
            ]
            default = self.default_mirror()
            return sorted(rows, key=lambda row: (row[0] != default, row[0]))

        return self._cache.get_or_load("proxies", load)

    def proxy_for_host(self, host: str) -> str | None:
        for project, upstream in self.proxy_projects():
            if upstream == host:
                return project
        return None

    def peek(self, key: str) -> tuple[bool, object]:
        return self._cache.peek(key)


class NameRouter:
    """Maps a requested repository name onto the repository that serves it (see the module
    docstring for the rule). Cheap on the hot path: every fact is cached per worker."""

    def __init__(
        self,
        identity: IdentityService,
        mirror: MirrorService,
        virtual: VirtualProjectService,
        threads: Threads,
    ) -> None:
        self._identity = identity
        self.mirror = mirror
        self.virtual = virtual
        self._threads = threads

    async def virtual_config(self, project: str) -> VirtualConfig | None:
        hit, config = self.virtual.cached_config_of(project)
        if hit:
            return config
        return await self._threads.run(self.virtual.config_of, project)

    async def _exists(self, project: str) -> bool:
        known = self._identity.project_exists_cached(project)
        if known is not None:
            return known
        return await self._threads.run(self._identity.project_exists, project)

    async def _default_mirror(self) -> str | None:
        hit, value = self.mirror.peek("default")
        if hit:
            return value if isinstance(value, str) else None
        return await self._threads.run(self.mirror.default_mirror)

    async def pull_target(self, name: str, ns: str | None, own_hosts: frozenset[str]) -> str:
        first = project_of(name)
        host = normalize_host(ns) if ns else None
        if host is not None and host not in own_hosts:
            proxy = await self._threads.run(self.mirror.proxy_for_host, host)
            if proxy is None:
                raise RegistryError(
                    ErrorCode.NAME_UNKNOWN,
                    f"no proxy-cache project of this registry mirrors {host}",
                    status=404,
                )
            return name if first == proxy else _joined(proxy, name)
        if await self._exists(first):
            return name
        mirror = await self._default_mirror()
        return _joined(mirror, name) if mirror is not None else name

    async def write_target(self, name: str, action: Action) -> str:
        """Where a push or delete of `name` goes: a virtual project's push member, or the name
        itself. A write a virtual project cannot take raises DENIED."""
        virtual = await self.virtual_config(project_of(name))
        if virtual is None:
            return name
        if action is Action.PUSH:
            target = virtual.push_target(name)
            if target is not None:
                return validate_repository_name(target)
            raise RegistryError(
                ErrorCode.DENIED,
                f"virtual project {virtual.project} has no push member and refuses pushes;"
                f" push to one of its members ({', '.join(virtual.members)})",
            )
        raise RegistryError(
            ErrorCode.DENIED,
            f"virtual project {virtual.project} holds no content of its own; delete in the"
            f" member project that holds it ({', '.join(virtual.members)})",
        )

    def aliases(self, name: str) -> Aliases:
        """What the token service adds for `name` (blocking: runs in a worker thread)."""
        first = project_of(name)
        virtual = self.virtual.config_of(first)
        if virtual is not None:
            if "/" not in name:
                return Aliases()
            return Aliases(members=tuple(virtual.member_repositories(name)))
        proxies = self.mirror.proxy_projects()
        if any(project == first for project, _ in proxies):
            return Aliases()
        mirrors = []
        for project, _ in proxies:
            joined = f"{project}/{name}"
            if len(joined) <= MAX_NAME_LENGTH:
                mirrors.append(joined)
        return Aliases(mirrors=tuple(mirrors))


def _joined(project: str, name: str) -> str:
    return validate_repository_name(f"{project}/{name}")
