"""SQL access for accounts: users, groups, robots and personal access tokens.

Account ids are never reused (AUTOINCREMENT on SQLite, sequences on PostgreSQL), and deleting
an account deletes every row that names it in the same transaction: memberships and grants name
their principal by kind and id, which no foreign key can cover.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from moorage.metadata.access.iam_base import ConflictError, StoreBase, rowcount
from moorage.metadata.access.iam_models import (
    Group,
    GroupMember,
    PersonalAccessToken,
    ProjectMember,
    RepositoryGrantRow,
    Robot,
    User,
)
from moorage.metadata.registry.models import utcnow
from moorage.metadata.staging.promotion_models import PromotionApprovalRow


class AccountStore(StoreBase):
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
        """Delete the account and everything that names it, in one transaction."""

        def work(session: Session) -> bool:
            _forget_principal(session, "user", user_id)
            # The foreign key cascades too; deleting here keeps it so without the pragma.
            session.execute(
                delete(PromotionApprovalRow).where(PromotionApprovalRow.approver_id == user_id)
            )
            session.execute(delete(GroupMember).where(GroupMember.user_id == user_id))
            return rowcount(session.execute(delete(User).where(User.id == user_id))) > 0

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
            _forget_principal(session, "group", group_id)
            session.execute(delete(GroupMember).where(GroupMember.group_id == group_id))
            return rowcount(session.execute(delete(Group).where(Group.id == group_id))) > 0

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
            _forget_principal(session, "robot", robot_id)
            return rowcount(session.execute(delete(Robot).where(Robot.id == robot_id))) > 0

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


def _forget_principal(session: Session, kind: str, principal_id: int) -> None:
    """Delete the project memberships and repository grants of one user, group or robot."""
    for model in (ProjectMember, RepositoryGrantRow):
        session.execute(
            delete(model).where(model.principal_kind == kind, model.principal_id == principal_id)
        )
