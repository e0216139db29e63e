"""Virtual projects: one name in front of an ordered list of member projects.

A pull of `<virtual>/<rest>` is answered by the first member, in the configured order, that
holds `<member>/<rest>` (a proxy-cache member counts when it can fetch it). A member the caller
may not pull is skipped as if it did not exist: the virtual project never serves content from a
project the caller cannot read. Pushes go to the push member, when one is configured; the
routing of names (and the refusal of writes) happens before the one authorization decision, in
`moorage.services.mirror.NameRouter`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from moorage.domain.digest import Digest
from moorage.domain.errors import ErrorCode, RegistryError
from moorage.domain.events import AccessEvent, Actor
from moorage.domain.names import Reference, project_of
from moorage.metadata.virtual_store import VirtualRecord, VirtualStore
from moorage.services.cache import TtlCache
from moorage.services.errors import IdentityError
from moorage.services.events import EventBus
from moorage.services.proxy import LiveBlob, MayFetch, ProxyCache, ProxyConfig, ProxyService
from moorage.services.registry import FetchedManifest, RegistryService

MAX_MEMBERS: Final = 16
CONFIG_CACHE_SECONDS: Final = 2.0
# Each member contributes at most this many tags to one page of a merged tags list.
MAX_TAGS_PER_MEMBER: Final = 10_000

# May the caller pull this (member) repository?
MayPull = Callable[[str], Awaitable[bool]]
# The upstream-fetch decision for a proxy-cache member's repository.
FetchDecision = Callable[[str, ProxyConfig], MayFetch]

_NOT_FOUND: Final = frozenset({ErrorCode.MANIFEST_UNKNOWN, ErrorCode.NAME_UNKNOWN})
_BLOB_NOT_FOUND: Final = frozenset({ErrorCode.BLOB_UNKNOWN, ErrorCode.NAME_UNKNOWN})


@dataclass(frozen=True, slots=True)
class VirtualConfig:
    project: str
    members: tuple[str, ...]
    push_member: str | None

    def member_repositories(self, repository: str) -> list[str]:
        """`<member>/<rest>` for each member, in order, of `<virtual>/<rest>`."""
        rest = _below(self.project, repository)
        return [f"{member}/{rest}" for member in self.members]

    def push_target(self, repository: str) -> str | None:
        if self.push_member is None:
            return None
        return f"{self.push_member}/{_below(self.project, repository)}"


@dataclass(frozen=True, slots=True)
class VirtualView:
    project: str
    members: list[str]
    push_member: str | None
    updated_by: str | None
    updated_at: datetime


def _below(project: str, repository: str) -> str:
    if not repository.startswith(project + "/"):
        raise RegistryError(
            ErrorCode.NAME_UNKNOWN,
            f"{repository} is the virtual project itself; pull {project}/<repository>",
        )
    return repository[len(project) + 1 :]


def _view(record: VirtualRecord) -> VirtualView:
    return VirtualView(
        project=record.project,
        members=list(record.members),
        push_member=record.push_member,
        updated_by=record.updated_by,
        updated_at=record.updated_at,
    )


class VirtualProjectService:
    """Create, read, replace and remove virtual project configurations; changes are audited."""

    def __init__(self, store: VirtualStore, proxies: ProxyService, events: EventBus) -> None:
        self._store = store
        self._proxies = proxies
        self._events = events
        self._configs = TtlCache(CONFIG_CACHE_SECONDS)

    def get(self, project: str) -> VirtualView:
        self._project_id(project)
        record = self._store.virtual_of(project)
        if record is None:
            raise IdentityError(f"project {project} is not a virtual project", 404)
        return _view(record)

    def list_all(self, after: str | None, limit: int) -> list[VirtualView]:
        views = []
        for name in self._store.virtual_projects(after, limit):
            record = self._store.virtual_of(name)
            if record is not None:
                views.append(_view(record))
        return views

    def set(
        self, actor: Actor, project: str, members: Sequence[str], push_member: str | None
    ) -> VirtualView:
        project_id = self._project_id(project)
        ids = self._validate(project, project_id, list(members), push_member)
        self._store.set_virtual(
            project_id,
            [ids[member] for member in members],
            ids[push_member] if push_member is not None else None,
            actor.name,
        )
        self._configs.clear()
        self._events.publish(
            AccessEvent(
                "virtual:configure",
                actor,
                "success",
                project,
                f"project:{project}",
                {"members": list(members), "push_member": push_member},
            )
        )
        return self.get(project)

    def remove(self, actor: Actor, project: str) -> None:
        project_id = self._project_id(project)
        if not self._store.delete_virtual(project_id):
            raise IdentityError(f"project {project} is not a virtual project", 404)
        self._configs.clear()
        self._events.publish(
            AccessEvent("virtual:remove", actor, "success", project, f"project:{project}", {})
        )

    def proxy_refusal(self, project: str) -> str | None:
        """Why `project` may not become a proxy-cache project, or None."""
        if self._store.virtual_of(project) is not None:
            return f"project {project} is a virtual project; remove its configuration first"
        return None

    def config_of(self, project: str) -> VirtualConfig | None:
        """The project's virtual configuration (cached 2 s per worker), or None."""

        def load() -> VirtualConfig | None:
            record = self._store.virtual_of(project)
            if record is None:
                return None
            return VirtualConfig(record.project, record.members, record.push_member)

        return self._configs.get_or_load(project, load)

    def cached_config_of(self, project: str) -> tuple[bool, VirtualConfig | None]:
        return self._configs.peek(project)

    def _project_id(self, name: str) -> int:
        found = self._store.project_ids([name]).get(name)
        if found is None:
            raise IdentityError(f"project {name} not found", 404)
        return found

    def _validate(
        self, project: str, project_id: int, members: list[str], push_member: str | None
    ) -> dict[str, int]:
        if not 1 <= len(members) <= MAX_MEMBERS:
            raise IdentityError(f"a virtual project has 1 to {MAX_MEMBERS} members")
        if len(set(members)) != len(members):
            raise IdentityError("members must be distinct")
        if project in members:
            raise IdentityError("a virtual project cannot be its own member")
        if self._proxies.config_of(project) is not None:
            raise IdentityError(
                f"project {project} is a proxy-cache project; remove its upstream first", 409
            )
        if self._store.is_member(project_id):
            raise IdentityError(
                f"project {project} is a member of a virtual project; virtual projects do not nest",
                409,
            )
        if self._store.holds_repositories(project):
            raise IdentityError(
                f"project {project} holds repositories, which a virtual project would hide;"
                " use an empty project",
                409,
            )
        ids = self._store.project_ids(members)
        missing = [member for member in members if member not in ids]
        if missing:
            raise IdentityError(f"no such project: {', '.join(missing)}")
        nested = [member for member in members if self._store.is_virtual(ids[member])]
        if nested:
            raise IdentityError(
                f"virtual projects do not nest: {', '.join(nested)} is a virtual project"
            )
        if push_member is not None:
            if push_member not in ids:
                raise IdentityError("pushMember must be one of the members")
            if self._proxies.config_of(push_member) is not None:
                raise IdentityError(
                    f"pushMember {push_member} is a proxy-cache project, which refuses pushes"
                )
        return ids


class VirtualPulls:
    """Resolves pulls of a virtual project's repositories through its members, in order."""

    def __init__(self, registry: RegistryService, cache: ProxyCache) -> None:
        self._registry = registry
        self._cache = cache

    async def _readable(
        self, config: VirtualConfig, repository: str, may_pull: MayPull
    ) -> list[str]:
        return [
            target for target in config.member_repositories(repository) if await may_pull(target)
        ]

    async def manifest(
        self,
        config: VirtualConfig,
        repository: str,
        reference: Reference,
        accepted: frozenset[str] | None,
        actor: Actor,
        may_pull: MayPull,
        fetch_decision: FetchDecision,
        *,
        count_pull: bool,
    ) -> tuple[str, FetchedManifest]:
        """(the member repository that serves it, the manifest)."""
        failure: RegistryError | None = None
        for target in await self._readable(config, repository, may_pull):
            proxy = await self._cache.config_for(project_of(target))
            if proxy is not None:
                try:
                    await self._cache.ensure_manifest(
                        proxy, target, reference, actor, fetch_decision(target, proxy)
                    )
                except RegistryError as error:
                    # Not here, not fetchable by this caller, or the upstream is down: the
                    # next member may have it.
                    if error.code not in _NOT_FOUND and failure is None:
                        failure = error
                    continue
            try:
                fetched = await self._registry.get_manifest(
                    target, reference, accepted, actor, count_pull=count_pull
                )
            except RegistryError as error:
                if error.code in _NOT_FOUND:
                    continue
                raise  # found, but refused (a pull policy): that answer stands
            return target, fetched
        if failure is not None:
            raise failure
        raise RegistryError(
            ErrorCode.MANIFEST_UNKNOWN,
            f"{repository}: no member of {config.project} you may pull has {reference}",
        )

    async def blob(
        self,
        config: VirtualConfig,
        repository: str,
        digest: Digest,
        actor: Actor,
        may_pull: MayPull,
        fetch_decision: FetchDecision,
        *,
        stream: bool,
    ) -> tuple[str, LiveBlob | None]:
        """(the member repository that serves it, a blob being fetched or None when stored).

        A member that holds the blob wins over a proxy-cache member that would fetch it."""
        readable = await self._readable(config, repository, may_pull)
        for target in readable:
            try:
                await self._registry.locate_blob(target, digest)
            except RegistryError as error:
                if error.code in _BLOB_NOT_FOUND:
                    continue
                raise
            return target, None
        failure: RegistryError | None = None
        for target in readable:
            proxy = await self._cache.config_for(project_of(target))
            if proxy is None:
                continue
            try:
                live = await self._cache.ensure_blob(
                    proxy, target, digest, actor, fetch_decision(target, proxy), stream=stream
                )
            except RegistryError as error:
                if error.code not in _BLOB_NOT_FOUND and failure is None:
                    failure = error
                continue
            return target, live
        if failure is not None:
            raise failure
        raise RegistryError(
            ErrorCode.BLOB_UNKNOWN,
            f"{repository}: no member of {config.project} you may pull has blob {digest}",
        )

    async def tags(
        self,
        config: VirtualConfig,
        repository: str,
        may_pull: MayPull,
        last: str | None,
        limit: int,
    ) -> tuple[list[str], bool]:
        """One page of the sorted union of the readable members' tags: (tags, more follow)."""
        merged: set[str] = set()
        found = False
        for target in await self._readable(config, repository, may_pull):
            try:
                tags = await self._registry.list_tags(
                    target, last, min(limit + 1, MAX_TAGS_PER_MEMBER)
                )
            except RegistryError as error:
                if error.code in _NOT_FOUND:
                    continue
                raise
            found = True
            merged.update(tags)
        if not found:
            raise RegistryError(
                ErrorCode.NAME_UNKNOWN,
                f"repository {repository} is in no member of {config.project} you may pull",
            )
        ordered = sorted(merged)
        return ordered[:limit], len(ordered) > limit

    async def referrers_source(
        self,
        config: VirtualConfig,
        repository: str,
        subject: Digest,
        artifact_type: str | None,
        may_pull: MayPull,
    ) -> str | None:
        """The first readable member repository that has referrers of `subject`."""
        for target in await self._readable(config, repository, may_pull):
            if await self._registry.referrers(target, subject, artifact_type, None, 1):
                return target
        return None
