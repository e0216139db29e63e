"""SQL access for identity and access: projects, members, grants, project rules, roles,
signing keys, sign-in throttling and settings; accounts and the audit log come from their own
stores. Synchronous; returns plain records."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, delete, func, or_, select
from sqlalchemy.orm import Session

from moorage.metadata.access.account_store import AccountStore
from moorage.metadata.access.audit_store import (
    GENESIS_HASH,
    AuditRecord,
    AuditStore,
    NewAuditEntry,
    entry_hash,
)
from moorage.metadata.access.iam_base import (
    ConflictError,
    LastMemberError,
    LimitExceededError,
    rowcount,
)
from moorage.metadata.access.iam_models import (
    CustomRole,
    Group,
    ImmutableTagRuleRow,
    LoginThrottle,
    Project,
    ProjectMember,
    ProxyUpstreamRow,
    RepositoryGrantRow,
    Setting,
    SigningKey,
    User,
)
from moorage.metadata.registry.models import utcnow
from moorage.metadata.staging.promotion_models import ProjectStageRow

__all__ = [
    "GENESIS_HASH",
    "AuditRecord",
    "ConflictError",
    "IamStore",
    "LastMemberError",
    "LimitExceededError",
    "NewAuditEntry",
    "NewImmutableTagRule",
    "PromotionOnlyConflictError",
    "entry_hash",
]


class PromotionOnlyConflictError(Exception):
    """The project accepts only promotions, so it cannot become a proxy cache."""


@dataclass(frozen=True, slots=True)
class NewImmutableTagRule:
    repositories: str
    tags: str
    mode: str


def throttle_key(key: str) -> str:
    """The advisory lock one sign-in throttle counter changes under (PostgreSQL): failures
    from a password spray count exactly, without making every other writer wait."""
    return f"login-throttle:{key}"


class IamStore(AccountStore, AuditStore):
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
            return rowcount(session.execute(delete(Project).where(Project.id == project_id))) > 0

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
                rowcount(
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
            return rowcount(result) > 0

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
            return rowcount(session.execute(delete(CustomRole).where(CustomRole.name == name))) > 0

        return self._run_write(work)  # type: ignore[no-any-return]

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

        self._run_write(work, serialise_on=[throttle_key(key)])

    def record_seen(self, key: str, now: datetime) -> None:
        """Remember a successful sign-in (`window_started_at` holds when)."""

        def work(session: Session) -> None:
            row = session.get(LoginThrottle, key)
            if row is None:
                session.add(LoginThrottle(key=key, failures=0, window_started_at=now))
            else:
                row.window_started_at = now

        self._run_write(work, serialise_on=[throttle_key(key)])

    def forget_throttle(self, keys: Sequence[str], prefixes: Sequence[str]) -> None:
        """Delete the counters named in `keys` and every one starting with a prefix."""

        def work(session: Session) -> None:
            conditions: list[ColumnElement[bool]] = [LoginThrottle.key.in_(list(keys))]
            conditions += [LoginThrottle.key.startswith(p, autoescape=True) for p in prefixes]
            session.execute(delete(LoginThrottle).where(or_(*conditions)))

        self._run_write(work)

    def clear_failures(self, key: str) -> None:
        def work(session: Session) -> None:
            session.execute(delete(LoginThrottle).where(LoginThrottle.key == key))

        self._run_write(work, serialise_on=[throttle_key(key)])

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


def _aware(moment: datetime, like: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=like.tzinfo)
