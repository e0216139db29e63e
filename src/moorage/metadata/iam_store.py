"""SQL access for identity, access and audit. Synchronous; returns plain records."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Engine, Result, Table, delete, func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from moorage.metadata.database import write_session, write_transaction
from moorage.metadata.iam_models import (
    AuditCheckpoint,
    AuditEntry,
    CustomRole,
    Group,
    GroupMember,
    ImmutableTagRuleRow,
    LoginThrottle,
    PersonalAccessToken,
    Project,
    ProjectMember,
    ProxyUpstreamRow,
    RepositoryGrantRow,
    Robot,
    Setting,
    SigningKey,
    User,
)
from moorage.metadata.models import Base, utcnow
from moorage.metadata.promotion_models import ProjectStageRow
from moorage.metadata.refresh_token_store import RefreshTokenStore

T = TypeVar("T")
M = TypeVar("M", bound=Base)

GENESIS_HASH = "0" * 64


class ConflictError(Exception):
    """The object already exists (unique name)."""


class PromotionOnlyConflictError(Exception):
    """The project accepts only promotions, so it cannot become a proxy cache."""


class LastMemberError(Exception):
    """The change would leave a project without anyone holding a role it must keep."""


class LimitExceededError(Exception):
    """Adding the object would exceed a cap (e.g. rules per project)."""


@dataclass(frozen=True, slots=True)
class NewImmutableTagRule:
    repositories: str
    tags: str
    mode: str


@dataclass(frozen=True, slots=True)
class AuditRecord:
    id: int
    at: datetime
    actor_kind: str
    actor: str
    client_ip: str | None
    certificate: str | None
    action: str
    project: str | None
    resource: str | None
    result: str
    details: dict[str, Any] | None
    prev_hash: str
    hash: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            **_content(self),
            "at": self.at.isoformat(),
            "prevHash": self.prev_hash,
            "hash": self.hash,
        }


@dataclass(frozen=True, slots=True)
class NewAuditEntry:
    at: datetime
    actor_kind: str
    actor: str
    client_ip: str | None
    certificate: str | None
    action: str
    project: str | None
    resource: str | None
    result: str
    details: dict[str, Any] | None


def _content(entry: NewAuditEntry | AuditRecord) -> dict[str, Any]:
    """What an entry says, as the export and the hash both name it (time left to the caller)."""
    return {
        "actorKind": entry.actor_kind,
        "actor": entry.actor,
        "clientIp": entry.client_ip,
        "certificate": entry.certificate,
        "action": entry.action,
        "project": entry.project,
        "resource": entry.resource,
        "result": entry.result,
        "details": entry.details,
    }


def entry_hash(prev_hash: str, entry: NewAuditEntry | AuditRecord) -> str:
    """sha256 over the previous hash and the entry's canonical JSON form."""
    body = {"at": _aware_iso(entry.at), **_content(entry)}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256((prev_hash + canonical).encode()).hexdigest()


def _aware_iso(moment: datetime) -> str:
    # SQLite hands back naive UTC, PostgreSQL aware times in the session zone: normalise both.
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat()


class IamStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self.refresh_tokens = RefreshTokenStore(engine)

    def _read(self) -> Session:
        return self._sessions()

    def _run_write(self, work: Any) -> Any:
        """Run `work(session)` in one write transaction that takes the write lock up front."""
        with write_session(self._engine) as session:
            return work(session)

    def _insert_unique(self, row: M, same: ColumnElement[bool], what: str) -> M:
        """Insert `row` unless a row matching `same` exists (ConflictError naming `what`)."""

        def work(session: Session) -> M:
            if session.scalar(select(type(row)).where(same).limit(1)) is not None:
                raise ConflictError(f"{what} already exists")
            session.add(row)
            session.flush()
            return row

        return self._run_write(work)  # type: ignore[no-any-return]

    def _update(self, model: type[M], row_id: int, changes: dict[str, Any]) -> M | None:
        """Set `changes` on one row in one write transaction; None when there is no such row."""

        def work(session: Session) -> M | None:
            row = session.get(model, row_id)
            if row is None:
                return None
            for key, value in changes.items():
                setattr(row, key, value)
            return row

        return self._run_write(work)  # type: ignore[no-any-return]

    # -- users

    def create_user(
        self, username: str, email: str | None, password_hash: str, is_admin: bool
    ) -> User:
        def work(session: Session) -> User:
            if session.scalar(select(User.id).where(User.username == username)) is not None:
                raise ConflictError(f"user {username} already exists")
            user = User(
                username=username, email=email, password_hash=password_hash, is_admin=is_admin
            )
            session.add(user)
            session.flush()
            return user

        return self._run_write(work)  # type: ignore[no-any-return]

    def user_by_name(self, username: str) -> User | None:
        with self._read() as session:
            return session.scalar(select(User).where(User.username == username))

    def user_by_id(self, user_id: int) -> User | None:
        with self._read() as session:
            return session.get(User, user_id)

    def list_users(self, after: str | None, limit: int) -> list[User]:
        query = select(User).order_by(User.username).limit(limit)
        if after:
            query = query.where(User.username > after)
        with self._read() as session:
            return list(session.scalars(query))

    def update_user(self, user_id: int, **changes: Any) -> User | None:
        return self._update(User, user_id, changes)

    def delete_user(self, user_id: int) -> bool:
        def work(session: Session) -> bool:
            session.execute(
                delete(ProjectMember).where(
                    ProjectMember.principal_kind == "user", ProjectMember.principal_id == user_id
                )
            )
            session.execute(
                delete(RepositoryGrantRow).where(
                    RepositoryGrantRow.principal_kind == "user",
                    RepositoryGrantRow.principal_id == user_id,
                )
            )
            return _rowcount(session.execute(delete(User).where(User.id == user_id))) > 0

        return self._run_write(work)  # type: ignore[no-any-return]

    def count_users(self) -> int:
        with self._read() as session:
            return int(session.scalar(select(func.count()).select_from(User)) or 0)

    # -- groups

    def create_group(self, name: str) -> Group:
        return self._insert_unique(Group(name=name), Group.name == name, f"group {name}")

    def group_by_name(self, name: str) -> Group | None:
        with self._read() as session:
            return session.scalar(select(Group).where(Group.name == name))

    def list_groups(self) -> list[tuple[Group, list[str]]]:
        with self._read() as session:
            groups = list(session.scalars(select(Group).order_by(Group.name)))
            rows = session.execute(
                select(GroupMember.group_id, User.username).join(
                    User, User.id == GroupMember.user_id
                )
            ).all()
        members: dict[int, list[str]] = {}
        for group_id, username in rows:
            members.setdefault(group_id, []).append(username)
        return [(group, sorted(members.get(group.id, []))) for group in groups]

    def delete_group(self, group_id: int) -> bool:
        def work(session: Session) -> bool:
            for model in (ProjectMember, RepositoryGrantRow):
                session.execute(
                    delete(model).where(
                        model.principal_kind == "group", model.principal_id == group_id
                    )
                )
            return _rowcount(session.execute(delete(Group).where(Group.id == group_id))) > 0

        return self._run_write(work)  # type: ignore[no-any-return]

    def set_group_member(self, group_id: int, user_id: int, member: bool) -> None:
        def work(session: Session) -> None:
            session.execute(
                delete(GroupMember).where(
                    GroupMember.group_id == group_id, GroupMember.user_id == user_id
                )
            )
            if member:
                session.add(GroupMember(group_id=group_id, user_id=user_id))

        self._run_write(work)

    def group_ids_of(self, user_id: int) -> list[int]:
        with self._read() as session:
            return list(
                session.scalars(select(GroupMember.group_id).where(GroupMember.user_id == user_id))
            )

    # -- projects

    def create_project(self, name: str, public: bool, created_by: str | None) -> Project:
        row = Project(name=name, public=public, created_by=created_by)
        return self._insert_unique(row, Project.name == name, f"project {name}")

    def create_project_with_admin(
        self, name: str, creator_kind: str, creator_id: int | None, creator_name: str
    ) -> bool:
        """Create a private project owned by its creator; False when it already existed."""

        def work(session: Session) -> bool:
            if session.scalar(select(Project.id).where(Project.name == name)) is not None:
                return False
            project = Project(name=name, public=False, created_by=creator_name)
            session.add(project)
            session.flush()
            if creator_kind in ("user", "group") and creator_id is not None:
                session.add(
                    ProjectMember(
                        project_id=project.id,
                        principal_kind=creator_kind,
                        principal_id=creator_id,
                        role="project-admin",
                    )
                )
            return True

        return self._run_write(work)  # type: ignore[no-any-return]

    def project_by_name(self, name: str) -> Project | None:
        with self._read() as session:
            return session.scalar(select(Project).where(Project.name == name))

    def list_projects(
        self, names: Sequence[str] | None, after: str | None, limit: int
    ) -> list[Project]:
        query = select(Project).order_by(Project.name).limit(limit)
        if names is not None:
            query = query.where(Project.name.in_(list(names)))
        if after:
            query = query.where(Project.name > after)
        with self._read() as session:
            return list(session.scalars(query))

    def update_project(self, project_id: int, **changes: Any) -> Project | None:
        return self._update(Project, project_id, changes)

    def delete_project(self, project_id: int) -> bool:
        def work(session: Session) -> bool:
            return _rowcount(session.execute(delete(Project).where(Project.id == project_id))) > 0

        return self._run_write(work)  # type: ignore[no-any-return]

    def public_projects(self) -> list[str]:
        with self._read() as session:
            return list(session.scalars(select(Project.name).where(Project.public.is_(True))))

    def project_names(self) -> list[str]:
        with self._read() as session:
            return list(session.scalars(select(Project.name)))

    # -- members and grants

    def set_member(
        self,
        project_id: int,
        kind: str,
        principal_id: int,
        role: str | None,
        *,
        check: Callable[[str | None], None] | None = None,
        keep_role: str | None = None,
    ) -> None:
        """Give the principal `role` (None: remove it) in one write transaction.

        `check(previous role)` runs inside that transaction, so what it judges cannot change
        before the write; `keep_role`: refuse (LastMemberError) a change that would leave the
        project without any member holding that role.
        """

        def work(session: Session) -> None:
            same = (
                (ProjectMember.project_id == project_id)
                & (ProjectMember.principal_kind == kind)
                & (ProjectMember.principal_id == principal_id)
            )
            previous = session.scalar(select(ProjectMember.role).where(same))
            if check is not None:
                check(previous)
            if keep_role is not None and previous == keep_role and role != keep_role:
                others = session.scalar(
                    select(func.count())
                    .select_from(ProjectMember)
                    .where(
                        ProjectMember.project_id == project_id,
                        ProjectMember.role == keep_role,
                        ~same,
                    )
                )
                if not others:
                    raise LastMemberError(f"the project would have no {keep_role} left")
            session.execute(delete(ProjectMember).where(same))
            if role is not None:
                session.add(
                    ProjectMember(
                        project_id=project_id,
                        principal_kind=kind,
                        principal_id=principal_id,
                        role=role,
                    )
                )

        self._run_write(work)

    def list_members(self, project_id: int) -> list[tuple[str, str, str]]:
        """(kind, name, role) of every member of a project."""
        with self._read() as session:
            users = session.execute(
                select(ProjectMember.principal_kind, User.username, ProjectMember.role)
                .join(User, User.id == ProjectMember.principal_id)
                .where(
                    ProjectMember.project_id == project_id, ProjectMember.principal_kind == "user"
                )
            ).all()
            groups = session.execute(
                select(ProjectMember.principal_kind, Group.name, ProjectMember.role)
                .join(Group, Group.id == ProjectMember.principal_id)
                .where(
                    ProjectMember.project_id == project_id, ProjectMember.principal_kind == "group"
                )
            ).all()
        return sorted((k, n, r) for k, n, r in [*users, *groups])

    def memberships(self, principals: Sequence[tuple[str, int]]) -> list[tuple[str, str]]:
        """(project name, role) for every membership of the given principals."""
        if not principals:
            return []
        condition = or_(
            *[
                (ProjectMember.principal_kind == kind) & (ProjectMember.principal_id == pid)
                for kind, pid in principals
            ]
        )
        with self._read() as session:
            rows = session.execute(
                select(Project.name, ProjectMember.role)
                .join(Project, Project.id == ProjectMember.project_id)
                .where(condition)
            ).all()
        return [(name, role) for name, role in rows]

    def add_grant(
        self, project_id: int, kind: str, principal_id: int, pattern: str, actions: list[str]
    ) -> RepositoryGrantRow:
        def work(session: Session) -> RepositoryGrantRow:
            grant = RepositoryGrantRow(
                project_id=project_id,
                principal_kind=kind,
                principal_id=principal_id,
                pattern=pattern,
                actions=actions,
            )
            session.add(grant)
            session.flush()
            return grant

        return self._run_write(work)  # type: ignore[no-any-return]

    def list_grants(self, project_id: int) -> list[RepositoryGrantRow]:
        with self._read() as session:
            return list(
                session.scalars(
                    select(RepositoryGrantRow)
                    .where(RepositoryGrantRow.project_id == project_id)
                    .order_by(RepositoryGrantRow.id)
                )
            )

    def delete_grant(self, project_id: int, grant_id: int) -> bool:
        def work(session: Session) -> bool:
            return (
                _rowcount(
                    session.execute(
                        delete(RepositoryGrantRow).where(
                            RepositoryGrantRow.id == grant_id,
                            RepositoryGrantRow.project_id == project_id,
                        )
                    )
                )
                > 0
            )

        return self._run_write(work)  # type: ignore[no-any-return]

    def grants_of(self, principals: Sequence[tuple[str, int]]) -> list[tuple[str, str, list[str]]]:
        """(project name, pattern, actions) of every grant to the given principals."""
        if not principals:
            return []
        condition = or_(
            *[
                (RepositoryGrantRow.principal_kind == kind)
                & (RepositoryGrantRow.principal_id == pid)
                for kind, pid in principals
            ]
        )
        with self._read() as session:
            rows = session.execute(
                select(Project.name, RepositoryGrantRow.pattern, RepositoryGrantRow.actions)
                .join(Project, Project.id == RepositoryGrantRow.project_id)
                .where(condition)
            ).all()
        return [(name, pattern, list(actions)) for name, pattern, actions in rows]

    # -- proxy-cache upstreams

    def proxy_upstream_of(self, project: str) -> ProxyUpstreamRow | None:
        """The upstream of the project named `project`, if it is a proxy-cache project."""
        with self._read() as session:
            return session.scalar(
                select(ProxyUpstreamRow)
                .join(Project, Project.id == ProxyUpstreamRow.project_id)
                .where(Project.name == project)
            )

    def set_proxy_upstream(self, project_id: int, values: dict[str, Any]) -> ProxyUpstreamRow:
        """Create or replace the project's upstream configuration.

        Raises PromotionOnlyConflictError when the project accepts only promotions.
        """

        def work(session: Session) -> ProxyUpstreamRow:
            # Read inside the write transaction, after locking the project row (PostgreSQL;
            # SQLite runs one write transaction at a time): `PromotionStore.set_stage` does
            # the same the other way round, so the two modes can never both be committed.
            session.execute(select(Project.id).where(Project.id == project_id).with_for_update())
            promotion_only = session.scalar(
                select(ProjectStageRow.promotion_only).where(
                    ProjectStageRow.project_id == project_id
                )
            )
            if promotion_only:
                raise PromotionOnlyConflictError(project_id)
            row = session.get(ProxyUpstreamRow, project_id)
            if row is None:
                row = ProxyUpstreamRow(project_id=project_id)
                session.add(row)
            for key, value in values.items():
                setattr(row, key, value)
            row.updated_at = utcnow()
            session.flush()
            return row

        return self._run_write(work)  # type: ignore[no-any-return]

    def delete_proxy_upstream(self, project_id: int) -> bool:
        def work(session: Session) -> bool:
            result = session.execute(
                delete(ProxyUpstreamRow).where(ProxyUpstreamRow.project_id == project_id)
            )
            return _rowcount(result) > 0

        return self._run_write(work)  # type: ignore[no-any-return]

    # -- immutable tag rules

    def immutable_tag_rules(self, project_id: int) -> list[ImmutableTagRuleRow]:
        with self._read() as session:
            return list(
                session.scalars(
                    select(ImmutableTagRuleRow)
                    .where(ImmutableTagRuleRow.project_id == project_id)
                    .order_by(ImmutableTagRuleRow.id)
                )
            )

    def immutable_tag_rules_of(self, project: str) -> list[ImmutableTagRuleRow]:
        """The rules of the project named `project` (none when there is no such project)."""
        with self._read() as session:
            return list(
                session.scalars(
                    select(ImmutableTagRuleRow)
                    .join(Project, Project.id == ImmutableTagRuleRow.project_id)
                    .where(Project.name == project)
                    .order_by(ImmutableTagRuleRow.id)
                )
            )

    def add_immutable_tag_rule(
        self, project_id: int, rule: NewImmutableTagRule, created_by: str | None, max_rules: int
    ) -> ImmutableTagRuleRow:
        """Add a rule; refused when the project already has `max_rules` or the same rule."""

        def work(session: Session) -> ImmutableTagRuleRow:
            existing = list(
                session.scalars(
                    select(ImmutableTagRuleRow).where(ImmutableTagRuleRow.project_id == project_id)
                )
            )
            for row in existing:
                if (row.repositories, row.tags, row.mode) == (
                    rule.repositories,
                    rule.tags,
                    rule.mode,
                ):
                    raise ConflictError(f"the same rule already exists (rule {row.id})")
            if len(existing) >= max_rules:
                raise LimitExceededError(f"a project has at most {max_rules} immutable tag rules")
            row = ImmutableTagRuleRow(
                project_id=project_id,
                repositories=rule.repositories,
                tags=rule.tags,
                mode=rule.mode,
                created_by=created_by,
            )
            session.add(row)
            session.flush()
            return row

        return self._run_write(work)  # type: ignore[no-any-return]

    def replace_immutable_tag_rules(
        self, project_id: int, rules: Sequence[NewImmutableTagRule], created_by: str | None
    ) -> tuple[list[ImmutableTagRuleRow], list[ImmutableTagRuleRow]]:
        """Replace every rule of the project in one transaction; (removed, added)."""

        def work(session: Session) -> tuple[list[ImmutableTagRuleRow], list[ImmutableTagRuleRow]]:
            removed = list(
                session.scalars(
                    select(ImmutableTagRuleRow)
                    .where(ImmutableTagRuleRow.project_id == project_id)
                    .order_by(ImmutableTagRuleRow.id)
                )
            )
            session.execute(
                delete(ImmutableTagRuleRow).where(ImmutableTagRuleRow.project_id == project_id)
            )
            added = [
                ImmutableTagRuleRow(
                    project_id=project_id,
                    repositories=rule.repositories,
                    tags=rule.tags,
                    mode=rule.mode,
                    created_by=created_by,
                )
                for rule in rules
            ]
            session.add_all(added)
            session.flush()
            return removed, added

        return self._run_write(work)  # type: ignore[no-any-return]

    def delete_immutable_tag_rule(
        self, project_id: int, rule_id: int
    ) -> ImmutableTagRuleRow | None:
        """Remove one rule of the project; the removed rule, or None."""

        def work(session: Session) -> ImmutableTagRuleRow | None:
            row = session.scalar(
                select(ImmutableTagRuleRow).where(
                    ImmutableTagRuleRow.id == rule_id, ImmutableTagRuleRow.project_id == project_id
                )
            )
            if row is not None:
                session.delete(row)
            return row

        return self._run_write(work)  # type: ignore[no-any-return]

    # -- custom roles

    def custom_roles(self) -> dict[str, list[str]]:
        with self._read() as session:
            return {role.name: list(role.actions) for role in session.scalars(select(CustomRole))}

    def custom_role_descriptions(self) -> dict[str, str | None]:
        with self._read() as session:
            return {role.name: role.description for role in session.scalars(select(CustomRole))}

    def upsert_role(self, name: str, actions: list[str], description: str | None) -> None:
        def work(session: Session) -> None:
            role = session.get(CustomRole, name)
            if role is None:
                session.add(CustomRole(name=name, actions=actions, description=description))
            else:
                role.actions = actions
                role.description = description

        self._run_write(work)

    def delete_role(self, name: str) -> bool:
        def work(session: Session) -> bool:
            in_use = session.scalar(
                select(func.count()).select_from(ProjectMember).where(ProjectMember.role == name)
            )
            if in_use:
                raise ConflictError(f"role {name} is held by {in_use} member(s)")
            return _rowcount(session.execute(delete(CustomRole).where(CustomRole.name == name))) > 0

        return self._run_write(work)  # type: ignore[no-any-return]

    # -- robots

    def create_robot(self, robot: Robot) -> Robot:
        return self._insert_unique(robot, Robot.name == robot.name, f"robot {robot.name}")

    def robot_by_name(self, name: str) -> Robot | None:
        with self._read() as session:
            return session.scalar(select(Robot).where(Robot.name == name))

    def robot_by_id(self, robot_id: int) -> Robot | None:
        with self._read() as session:
            return session.get(Robot, robot_id)

    def list_robots(self, project_id: int | None) -> list[Robot]:
        query = select(Robot).order_by(Robot.name)
        query = query.where(
            Robot.project_id.is_(None) if project_id is None else Robot.project_id == project_id
        )
        with self._read() as session:
            return list(session.scalars(query))

    def update_robot(self, robot_id: int, **changes: Any) -> Robot | None:
        return self._update(Robot, robot_id, changes)

    def delete_robot(self, robot_id: int) -> bool:
        def work(session: Session) -> bool:
            session.execute(
                delete(RepositoryGrantRow).where(
                    RepositoryGrantRow.principal_kind == "robot",
                    RepositoryGrantRow.principal_id == robot_id,
                )
            )
            return _rowcount(session.execute(delete(Robot).where(Robot.id == robot_id))) > 0

        return self._run_write(work)  # type: ignore[no-any-return]

    # -- personal access tokens

    def create_pat(self, token: PersonalAccessToken) -> PersonalAccessToken:
        same_name = (PersonalAccessToken.user_id == token.user_id) & (
            PersonalAccessToken.name == token.name
        )
        return self._insert_unique(token, same_name, f"a token named {token.name}")

    def pat_by_public_id(self, public_id: str) -> PersonalAccessToken | None:
        with self._read() as session:
            return session.scalar(
                select(PersonalAccessToken).where(PersonalAccessToken.public_id == public_id)
            )

    def pat_by_id(self, token_id: int) -> PersonalAccessToken | None:
        with self._read() as session:
            return session.get(PersonalAccessToken, token_id)

    def list_pats(self, user_id: int) -> list[PersonalAccessToken]:
        with self._read() as session:
            return list(
                session.scalars(
                    select(PersonalAccessToken)
                    .where(PersonalAccessToken.user_id == user_id)
                    .order_by(PersonalAccessToken.name)
                )
            )

    def update_pat(self, token_id: int, **changes: Any) -> PersonalAccessToken | None:
        return self._update(PersonalAccessToken, token_id, changes)

    def touch(self, model: str, row_id: int) -> None:
        """Record last use of a robot or token (best effort, one short write)."""

        def work(session: Session) -> None:
            row: Robot | PersonalAccessToken | None = (
                session.get(Robot, row_id)
                if model == "robot"
                else session.get(PersonalAccessToken, row_id)
            )
            if row is not None:
                row.last_used_at = utcnow()

        self._run_write(work)

    # -- signing keys

    def signing_keys(self) -> list[SigningKey]:
        with self._read() as session:
            return list(session.scalars(select(SigningKey).order_by(SigningKey.created_at)))

    def add_signing_key(self, key: SigningKey, retire_others: bool) -> None:
        def work(session: Session) -> None:
            if retire_others:
                for other in session.scalars(
                    select(SigningKey).where(SigningKey.retired_at.is_(None))
                ):
                    other.retired_at = utcnow()
            session.add(key)

        self._run_write(work)

    # -- sign-in throttling

    def throttle(self, key: str) -> LoginThrottle | None:
        with self._read() as session:
            return session.get(LoginThrottle, key)

    def record_failure(
        self,
        key: str,
        now: datetime,
        window_seconds: float,
        max_failures: int,
        base_lock_seconds: float,
        max_lock_seconds: float,
    ) -> None:
        from datetime import timedelta

        def work(session: Session) -> None:
            row = session.get(LoginThrottle, key)
            if row is None:
                row = LoginThrottle(key=key, failures=0, window_started_at=now)
                session.add(row)
            started = row.window_started_at
            if started.tzinfo is None:
                started = started.replace(tzinfo=now.tzinfo)
            if (now - started).total_seconds() > window_seconds and (
                row.locked_until is None or _aware(row.locked_until, now) < now
            ):
                row.failures = 0
                row.window_started_at = now
            row.failures += 1
            if row.failures >= max_failures:
                exponent = row.failures - max_failures
                lock = min(base_lock_seconds * (2**exponent), max_lock_seconds)
                row.locked_until = now + timedelta(seconds=lock)

        self._run_write(work)

    def record_seen(self, key: str, now: datetime) -> None:
        """Remember a successful sign-in (`window_started_at` holds when)."""

        def work(session: Session) -> None:
            row = session.get(LoginThrottle, key)
            if row is None:
                session.add(LoginThrottle(key=key, failures=0, window_started_at=now))
            else:
                row.window_started_at = now

        self._run_write(work)

    def clear_failures(self, key: str) -> None:
        def work(session: Session) -> None:
            session.execute(delete(LoginThrottle).where(LoginThrottle.key == key))

        self._run_write(work)

    # -- run-time settings

    def settings(self) -> dict[str, Any]:
        with self._read() as session:
            return {row.key: row.value for row in session.scalars(select(Setting))}

    def set_setting(self, key: str, value: Any) -> None:
        def work(session: Session) -> None:
            row = session.get(Setting, key)
            if row is None:
                session.add(Setting(key=key, value=value))
            else:
                row.value = value

        self._run_write(work)

    # -- audit log

    def append_audit(self, entries: Sequence[NewAuditEntry]) -> None:
        """Append entries to the chain in one write transaction (the lock orders writers)."""
        if not entries:
            return
        with write_transaction(self._engine) as connection:
            table: Table = AuditEntry.__table__  # type: ignore[assignment]
            last = connection.execute(
                select(table.c.hash).order_by(table.c.id.desc()).limit(1)
            ).scalar()
            if last is None:
                checkpoint = connection.execute(
                    select(AuditCheckpoint.__table__.c.last_pruned_hash)
                    .order_by(AuditCheckpoint.__table__.c.id.desc())
                    .limit(1)
                ).scalar()
                last = checkpoint or GENESIS_HASH
            rows = []
            for entry in entries:
                digest = entry_hash(last, entry)
                rows.append(
                    {
                        "at": entry.at,
                        "actor_kind": entry.actor_kind,
                        "actor": entry.actor,
                        "client_ip": entry.client_ip,
                        "certificate": entry.certificate,
                        "action": entry.action,
                        "project": entry.project,
                        "resource": entry.resource,
                        "result": entry.result,
                        "details": _canonical(entry.details),
                        "prev_hash": last,
                        "hash": digest,
                    }
                )
                last = digest
            connection.execute(table.insert(), rows)

    def query_audit(
        self,
        *,
        project: str | None = None,
        actor: str | None = None,
        action: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        before_id: int | None = None,
        limit: int = 100,
    ) -> list[AuditRecord]:
        query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
        if project is not None:
            query = query.where(AuditEntry.project == project)
        if actor is not None:
            query = query.where(AuditEntry.actor == actor)
        if action is not None:
            query = query.where(AuditEntry.action == action)
        if since is not None:
            query = query.where(AuditEntry.at >= since)
        if until is not None:
            query = query.where(AuditEntry.at < until)
        if before_id is not None:
            query = query.where(AuditEntry.id < before_id)
        with self._read() as session:
            return [_audit_record(row) for row in session.scalars(query)]

    def iter_audit(self, batch: int = 1000) -> Iterator[AuditRecord]:
        last_id = 0
        while True:
            with self._read() as session:
                rows = list(
                    session.scalars(
                        select(AuditEntry)
                        .where(AuditEntry.id > last_id)
                        .order_by(AuditEntry.id)
                        .limit(batch)
                    )
                )
            if not rows:
                return
            for row in rows:
                yield _audit_record(row)
            last_id = rows[-1].id

    def latest_checkpoint(self) -> AuditCheckpoint | None:
        with self._read() as session:
            return session.scalar(
                select(AuditCheckpoint).order_by(AuditCheckpoint.id.desc()).limit(1)
            )

    def prune_audit(self, before: datetime, sign: Any) -> int:
        """Delete entries older than `before`, recording a signed checkpoint of the cut."""

        def work(session: Session) -> int:
            last = session.scalar(
                select(AuditEntry)
                .where(AuditEntry.at < before)
                .order_by(AuditEntry.id.desc())
                .limit(1)
            )
            if last is None:
                return 0
            kid, signature = sign(f"{last.id}:{last.hash}".encode())
            session.add(
                AuditCheckpoint(
                    last_pruned_id=last.id, last_pruned_hash=last.hash, kid=kid, signature=signature
                )
            )
            return _rowcount(session.execute(delete(AuditEntry).where(AuditEntry.id <= last.id)))

        return self._run_write(work)  # type: ignore[no-any-return]


def _rowcount(result: Result[Any]) -> int:
    return int(getattr(result, "rowcount", 0))


def _canonical(details: dict[str, Any] | None) -> str | None:
    if details is None:
        return None
    return json.dumps(details, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _audit_record(row: AuditEntry) -> AuditRecord:
    return AuditRecord(
        row.id,
        row.at,
        row.actor_kind,
        row.actor,
        row.client_ip,
        row.certificate,
        row.action,
        row.project,
        row.resource,
        row.result,
        json.loads(row.details) if row.details else None,
        row.prev_hash,
        row.hash,
    )


def _aware(moment: datetime, like: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=like.tzinfo)
