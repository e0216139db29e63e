"""SQL access for name routing: virtual projects, the default mirror and the proxy-cache
projects' upstream URLs (which containerd's `ns` parameter selects among)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import Session, aliased, sessionmaker

from moorage.metadata.access.iam_models import Project, ProxyUpstreamRow
from moorage.metadata.database import write_session
from moorage.metadata.distribution.virtual_models import (
    MirrorSettingRow,
    VirtualMemberRow,
    VirtualProjectRow,
)
from moorage.metadata.registry.models import Repository, utcnow

_MIRROR_ROW = 1
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class VirtualRecord:
    project: str
    members: tuple[str, ...]
    push_member: str | None
    updated_by: str | None
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class MirrorRecord:
    """The stored default mirror: `project` None means "none" (set explicitly)."""

    project: str | None
    updated_by: str | None
    updated_at: datetime


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class VirtualStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    def _run_write(self, work: Callable[[Session], R]) -> R:
        with write_session(self._engine) as session:
            return work(session)

    # -- projects

    def project_ids(self, names: Sequence[str]) -> dict[str, int]:
        with self._sessions() as session:
            rows = session.execute(
                select(Project.name, Project.id).where(Project.name.in_(list(names)))
            )
            return {name: project_id for name, project_id in rows}

    def holds_repositories(self, project: str) -> bool:
        with self._sessions() as session:
            found = session.scalar(
                select(Repository.id)
                .where(Repository.name.like(f"{_escape(project)}/%", escape="\\"))
                .limit(1)
            )
            return found is not None

    # -- virtual projects

    def virtual_of(self, project: str) -> VirtualRecord | None:
        push = aliased(Project)
        member = aliased(Project)
        with self._sessions() as session, session.begin():
            head = session.execute(
                select(VirtualProjectRow, push.name)
                .join(Project, Project.id == VirtualProjectRow.project_id)
                .outerjoin(push, push.id == VirtualProjectRow.push_member_id)
                .where(Project.name == project)
            ).first()
            if head is None:
                return None
            row, push_member = head
            members = session.scalars(
                select(member.name)
                .join(VirtualMemberRow, VirtualMemberRow.member_project_id == member.id)
                .where(VirtualMemberRow.virtual_project_id == row.project_id)
                .order_by(VirtualMemberRow.position)
            )
            return VirtualRecord(
                project=project,
                members=tuple(members),
                push_member=push_member,
                updated_by=row.updated_by,
                updated_at=_aware(row.updated_at),
            )

    def virtual_projects(self, after: str | None, limit: int) -> list[str]:
        query = (
            select(Project.name)
            .join(VirtualProjectRow, VirtualProjectRow.project_id == Project.id)
            .order_by(Project.name)
            .limit(limit)
        )
        if after:
            query = query.where(Project.name > after)
        with self._sessions() as session:
            return list(session.scalars(query))

    def is_virtual(self, project_id: int) -> bool:
        with self._sessions() as session:
            return session.get(VirtualProjectRow, project_id) is not None

    def is_member(self, project_id: int) -> bool:
        with self._sessions() as session:
            found = session.scalar(
                select(VirtualMemberRow.position)
                .where(VirtualMemberRow.member_project_id == project_id)
                .limit(1)
            )
            return found is not None

    def set_virtual(
        self, project_id: int, member_ids: Sequence[int], push_member_id: int | None, by: str
    ) -> None:
        def work(session: Session) -> None:
            row = session.get(VirtualProjectRow, project_id)
            if row is None:
                row = VirtualProjectRow(project_id=project_id)
                session.add(row)
            row.push_member_id = push_member_id
            row.updated_by = by
            row.updated_at = utcnow()
            session.execute(
                delete(VirtualMemberRow).where(VirtualMemberRow.virtual_project_id == project_id)
            )
            session.flush()
            for position, member_id in enumerate(member_ids):
                session.add(
                    VirtualMemberRow(
                        virtual_project_id=project_id,
                        position=position,
                        member_project_id=member_id,
                    )
                )

        self._run_write(work)

    def delete_virtual(self, project_id: int) -> bool:
        def work(session: Session) -> bool:
            session.execute(
                delete(VirtualMemberRow).where(VirtualMemberRow.virtual_project_id == project_id)
            )
            row = session.get(VirtualProjectRow, project_id)
            if row is None:
                return False
            session.delete(row)
            return True

        return self._run_write(work)

    # -- the default mirror and the proxy-cache projects

    def mirror(self) -> MirrorRecord | None:
        with self._sessions() as session:
            found = session.execute(
                select(MirrorSettingRow, Project.name)
                .outerjoin(Project, Project.id == MirrorSettingRow.project_id)
                .where(MirrorSettingRow.id == _MIRROR_ROW)
            ).first()
        if found is None:
            return None
        row, name = found
        return MirrorRecord(name, row.updated_by, _aware(row.updated_at))

    def set_mirror(self, project_id: int | None, by: str) -> None:
        def work(session: Session) -> None:
            row = session.get(MirrorSettingRow, _MIRROR_ROW)
            if row is None:
                row = MirrorSettingRow(id=_MIRROR_ROW)
                session.add(row)
            row.project_id = project_id
            row.updated_by = by
            row.updated_at = utcnow()

        self._run_write(work)

    def clear_mirror(self) -> bool:
        """Forget the stored setting: the configuration file decides again."""

        def work(session: Session) -> bool:
            row = session.get(MirrorSettingRow, _MIRROR_ROW)
            if row is None:
                return False
            session.delete(row)
            return True

        return self._run_write(work)

    def proxy_upstreams(self, limit: int) -> list[tuple[str, str]]:
        """(project, upstream URL) of the proxy-cache projects, by project name."""
        with self._sessions() as session:
            rows = session.execute(
                select(Project.name, ProxyUpstreamRow.url)
                .join(ProxyUpstreamRow, ProxyUpstreamRow.project_id == Project.id)
                .order_by(Project.name)
                .limit(limit)
            )
            return [(name, url) for name, url in rows]


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
