"""What the identity stores share: one engine, short sessions, one write lock, conflicts."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Engine, Result, select
from sqlalchemy.orm import Session, sessionmaker

from moorage.metadata.access.refresh_token_store import RefreshTokenStore
from moorage.metadata.database import write_session
from moorage.metadata.registry.models import Base

M = TypeVar("M", bound=Base)


class ConflictError(Exception):
    """The object already exists (unique name)."""


class LastMemberError(Exception):
    """The change would leave a project without anyone holding a role it must keep."""


class LimitExceededError(Exception):
    """Adding the object would exceed a cap (e.g. rules per project)."""


class StoreBase:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self.refresh_tokens = RefreshTokenStore(engine)

    def _read(self) -> Session:
        return self._sessions()

    def _run_write(self, work: Any, serialise_on: Iterable[str] | None = None) -> Any:
        """Run `work(session)` in one write transaction that takes the write lock up front (on
        PostgreSQL: only the advisory locks `serialise_on` names, when given)."""
        with write_session(self._engine, serialise_on=serialise_on) as session:
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


def rowcount(result: Result[Any]) -> int:
    return int(getattr(result, "rowcount", 0))
