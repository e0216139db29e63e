"""Projects, their members, per-repository grants, custom roles and run-time settings."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from moorage.domain.access import (
    ROLE_ACTIONS,
    Action,
    PatternError,
    Role,
    decide,
    validate_pattern,
)
from moorage.domain.errors import RegistryError
from moorage.domain.events import AccessEvent, Actor
from moorage.domain.names import validate_repository_name
from moorage.metadata.access.iam_models import Project
from moorage.metadata.access.iam_store import ConflictError, IamStore, LastMemberError
from moorage.services.access.identity import IdentityService, Subject
from moorage.services.errors import IdentityError
from moorage.services.events import EventBus

_ROLE_NAME_RE: Final = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")

# Settings the API may change at run time, with their allowed values.
RUNTIME_SETTINGS: Final[dict[str, tuple[object, ...]]] = {
    "project_creation": ("admins", "authenticated"),
}
DEFAULT_SETTINGS: Final[dict[str, object]] = {"project_creation": "admins"}


@dataclass(frozen=True, slots=True)
class ProjectView:
    name: str
    public: bool
    created_by: str | None


class ProjectService:
    def __init__(self, store: IamStore, identity: IdentityService, events: EventBus) -> None:
        self._store = store
        self._identity = identity
        self._events = events

    def _emit(
        self,
        action: str,
        actor: Actor,
        project: str | None,
        resource: str | None,
        **details: object,
    ) -> None:
        self._events.publish(
            AccessEvent(action, actor, "success", project, resource, details or None)
        )
        self._identity.forget_cached()

    def project(self, name: str) -> Project:
        row = self._store.project_by_name(name)
        if row is None:
            raise IdentityError(f"project {name} not found", 404)
        return row

    # -- projects

    def create(self, actor: Actor, name: str, public: bool, owner_id: int | None) -> ProjectView:
        try:
            validate_repository_name(name)
        except RegistryError:
            raise IdentityError("project names are lowercase names without '/'") from None
        if "/" in name:
            raise IdentityError("project names have no '/'")
        try:
            row = self._store.create_project(name, public, actor.name)
        except ConflictError as error:
            raise IdentityError(str(error), 409) from None
        if owner_id is not None:
            self._store.set_member(row.id, "user", owner_id, "project-admin")
        self._emit("project:create", actor, name, f"project:{name}", public=public)
        return ProjectView(row.name, row.public, row.created_by)

    def list_projects(
        self, names: Sequence[str] | None, after: str | None, limit: int
    ) -> list[ProjectView]:
        return [
            ProjectView(p.name, p.public, p.created_by)
            for p in self._store.list_projects(names, after, limit)
        ]

    def view(self, name: str) -> ProjectView:
        row = self.project(name)
        return ProjectView(row.name, row.public, row.created_by)

    def readable_projects(
        self, subject: Subject, after: str | None, limit: int
    ) -> list[ProjectView]:
        """Projects `subject` may read (`read-project`), and every public project."""
        access = self._identity.access_of(subject)
        if access.is_admin and access.limit is None:
            return self.list_projects(None, after, limit)
        public = self._identity.public_projects()
        # Only an administrator can read a project without a role in it (scoped tokens aside).
        candidates = self._store.project_names() if access.is_admin else access.project_actions
        readable = {
            name for name in candidates if decide(access, Action.READ_PROJECT, name, None, public)
        }
        return self.list_projects(sorted(readable | public), after, limit)

    def update(self, actor: Actor, name: str, public: bool | None) -> ProjectView:
        row = self.project(name)
        if public is not None:
            row = self._store.update_project(row.id, public=public) or row
        self._emit("project:update", actor, name, f"project:{name}", public=public)
        return ProjectView(row.name, row.public, row.created_by)

    def delete(self, actor: Actor, name: str) -> None:
        row = self.project(name)
        self._store.delete_project(row.id)
        self._emit("project:delete", actor, name, f"project:{name}")

    # -- members

    def _principal(self, kind: str, name: str) -> int:
        if kind == "user":
            user = self._store.user_by_name(name)
            if user is None:
                raise IdentityError(f"user {name} not found", 404)
            return user.id
        if kind == "group":
            group = self._store.group_by_name(name)
            if group is None:
                raise IdentityError(f"group {name} not found", 404)
            return group.id
        if kind == "robot":
            robot = self._store.robot_by_name(name)
            if robot is None:
                raise IdentityError(f"robot {name} not found", 404)
            return robot.id
        raise IdentityError("principal kind is user, group or robot")

    def set_member(
        self,
        actor: Actor,
        project: str,
        kind: str,
        name: str,
        role: str,
        *,
        grantor: Subject | None = None,
    ) -> None:
        if kind not in ("user", "group"):
            raise IdentityError("members are users or groups (robots get explicit permissions)")
        roles = self._identity.role_table()
        if role not in roles:
            raise IdentityError(f"unknown role {role}")
        self._change_member(project, kind, name, role, roles, grantor)
        self._emit(
            "member:set", actor, project, f"project:{project}", kind=kind, member=name, role=role
        )

    def remove_member(
        self,
        actor: Actor,
        project: str,
        kind: str,
        name: str,
        *,
        grantor: Subject | None = None,
    ) -> None:
        self._change_member(project, kind, name, None, self._identity.role_table(), grantor)
        self._emit("member:remove", actor, project, f"project:{project}", kind=kind, member=name)

    def _change_member(
        self,
        project: str,
        kind: str,
        name: str,
        role: str | None,
        roles: dict[str, frozenset[Action]],
        grantor: Subject | None,
    ) -> None:
        """Change a membership when the grantor holds both what the member held and what it
        will hold, and never leave the project without a project admin."""
        row = self.project(project)

        def check(previous: str | None) -> None:
            held = set(roles.get(previous, frozenset()) if previous else ())
            held |= roles.get(role, frozenset()) if role else frozenset()
            self._identity.assert_may_grant(grantor, project, (a.value for a in held))

        try:
            self._store.set_member(
                row.id,
                kind,
                self._principal(kind, name),
                role,
                check=check,
                keep_role=Role.PROJECT_ADMIN.value,
            )
        except LastMemberError:
            raise IdentityError(
                f"{name} is the last project admin of {project}: make someone else project"
                " admin first",
                409,
            ) from None
        self._identity.forget_cached()

    def members(self, project: str) -> list[tuple[str, str, str]]:
        return self._store.list_members(self.project(project).id)

    # -- per-repository grants

    def add_grant(
        self,
        actor: Actor,
        project: str,
        kind: str,
        name: str,
        pattern: str,
        actions: Sequence[str],
        *,
        grantor: Subject | None = None,
    ) -> int:
        row = self.project(project)
        try:
            validate_pattern(pattern)
            parsed = sorted({Action(a).value for a in actions})
        except (PatternError, ValueError) as error:
            raise IdentityError(str(error)) from None
        if not parsed:
            raise IdentityError("a grant needs at least one action")
        self._identity.assert_may_grant(grantor, project, parsed)
        grant = self._store.add_grant(row.id, kind, self._principal(kind, name), pattern, parsed)
        self._emit(
            "grant:add",
            actor,
            project,
            f"project:{project}",
            kind=kind,
            principal=name,
            pattern=pattern,
            actions=parsed,
        )
        return grant.id

    def grants(self, project: str) -> list[dict[str, Any]]:
        row = self.project(project)
        return [
            {
                "id": grant.id,
                "kind": grant.principal_kind,
                "principalId": grant.principal_id,
                "name": self._principal_name(grant.principal_kind, grant.principal_id),
                "pattern": grant.pattern,
                "actions": list(grant.actions),
            }
            for grant in self._store.list_grants(row.id)
        ]

    def _principal_name(self, kind: str, principal_id: int) -> str | None:
        if kind == "user":
            user = self._store.user_by_id(principal_id)
            return user.username if user else None
        if kind == "robot":
            robot = self._store.robot_by_id(principal_id)
            return robot.name if robot else None
        groups = {group.id: group.name for group, _ in self._store.list_groups()}
        return groups.get(principal_id)

    def delete_grant(
        self, actor: Actor, project: str, grant_id: int, *, grantor: Subject | None = None
    ) -> None:
        row = self.project(project)
        for grant in self._store.list_grants(row.id):
            if grant.id == grant_id:
                self._identity.assert_may_grant(grantor, project, grant.actions)
        if not self._store.delete_grant(row.id, grant_id):
            raise IdentityError(f"grant {grant_id} not found", 404)
        self._emit("grant:delete", actor, project, f"project:{project}", grant=grant_id)

    # -- custom roles

    def roles(self) -> dict[str, list[str]]:
        return {
            name: sorted(a.value for a in actions)
            for name, actions in self._identity.role_table().items()
        }

    def role_descriptions(self) -> dict[str, str | None]:
        return self._store.custom_role_descriptions()

    def upsert_role(
        self, actor: Actor, name: str, actions: Sequence[str], description: str | None
    ) -> None:
        if name in ROLE_ACTIONS or not _ROLE_NAME_RE.fullmatch(name):
            raise IdentityError("custom role names are lowercase and differ from built-in roles")
        try:
            parsed = sorted({Action(a).value for a in actions})
        except ValueError as error:
            raise IdentityError(str(error)) from None
        self._store.upsert_role(name, parsed, description)
        self._emit("role:upsert", actor, None, f"role:{name}", actions=parsed)

    def delete_role(self, actor: Actor, name: str) -> None:
        if name in ROLE_ACTIONS:
            raise IdentityError(f"{name} is a built-in role and cannot be deleted", 409)
        try:
            if not self._store.delete_role(name):
                raise IdentityError(f"role {name} not found", 404)
        except ConflictError as error:
            raise IdentityError(str(error), 409) from None
        self._emit("role:delete", actor, None, f"role:{name}")

    # -- run-time settings

    def settings(self) -> dict[str, object]:
        return {**DEFAULT_SETTINGS, **self._store.settings()}

    def update_setting(self, actor: Actor, key: str, value: object) -> None:
        allowed = RUNTIME_SETTINGS.get(key)
        if allowed is None:
            raise IdentityError(f"unknown setting {key}")
        if value not in allowed:
            raise IdentityError(f"{key} must be one of {', '.join(map(str, allowed))}")
        self._store.set_setting(key, value)
        self._emit("settings:update", actor, None, f"setting:{key}", key=key, value=value)
