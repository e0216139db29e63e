"""Virtual projects: one name in front of an ordered list of member projects.

A pull of `<virtual>/<rest>` is answered by the first member, in the configured order, that
holds `<member>/<rest>` (a proxy-cache member counts when it can fetch it); that resolution is
part of the one pull path, `moorage.services.registry.pulls`. A member the caller may not pull
is skipped as if it did not exist: the virtual project never serves content from a project the
caller cannot read. Pushes go to the push member, when one is configured; the routing of names
(and the refusal of writes) happens before the one authorization decision, in
`moorage.services.distribution.mirror.NameRouter`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from moorage.domain.errors import ErrorCode, RegistryError
from moorage.domain.events import AccessEvent, Actor
from moorage.metadata.distribution.virtual_store import VirtualRecord, VirtualStore
from moorage.services.cache import TtlCache
from moorage.services.distribution.proxy import ProxyService
from moorage.services.errors import IdentityError
from moorage.services.events import EventBus

MAX_MEMBERS: Final = 16
CONFIG_CACHE_SECONDS: Final = 2.0


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
        self._configs = TtlCache(CONFIG_CACHE_SECONDS, name="virtual-projects")

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
