"""SQL access for registered scanner adapters. Synchronous; returns detached rows."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import sessionmaker

from moorage.metadata.access.iam_models import Project
from moorage.metadata.access.iam_store import ConflictError, LimitExceededError
from moorage.metadata.database import write_session
from moorage.metadata.registry.models import utcnow
from moorage.metadata.supply_chain.scan_models import ScanSettingsRow
from moorage.metadata.supply_chain.scanner_models import ScannerAdapterRow


class ScannerStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    def adapters(self) -> list[ScannerAdapterRow]:
        with self._sessions() as session:
            return list(session.scalars(select(ScannerAdapterRow).order_by(ScannerAdapterRow.name)))

    def adapter(self, name: str) -> ScannerAdapterRow | None:
        with self._sessions() as session:
            return session.get(ScannerAdapterRow, name)

    def create(self, row: ScannerAdapterRow, max_adapters: int) -> ScannerAdapterRow:
        """Add an adapter; refused when the name is taken or `max_adapters` exist already."""
        with write_session(self._engine) as s:
            if s.get(ScannerAdapterRow, row.name) is not None:
                raise ConflictError(f"scanner {row.name} already exists")
            count = s.scalar(select(func.count()).select_from(ScannerAdapterRow)) or 0
            if count >= max_adapters:
                raise LimitExceededError(f"at most {max_adapters} scanners can be registered")
            s.add(row)
            s.flush()
            return row

    def update(self, name: str, changes: dict[str, Any]) -> ScannerAdapterRow | None:
        """Set `changes` (and `updated_at`); None when there is no such adapter."""
        with write_session(self._engine) as s:
            row = s.get(ScannerAdapterRow, name)
            if row is None:
                return None
            for key, value in changes.items():
                setattr(row, key, value)
            row.updated_at = utcnow()
            s.flush()
            return row

    def record_ping(self, name: str, capabilities: dict[str, object]) -> ScannerAdapterRow | None:
        """Store the adapter's metadata document as last read (not a change of configuration)."""
        with write_session(self._engine) as s:
            row = s.get(ScannerAdapterRow, name)
            if row is None:
                return None
            row.capabilities = capabilities
            row.pinged_at = utcnow()
            s.flush()
            return row

    def delete(self, name: str) -> ScannerAdapterRow | None:
        """Remove an adapter; ConflictError while a project still scans with it."""
        with write_session(self._engine) as s:
            row = s.get(ScannerAdapterRow, name)
            user = s.scalar(
                select(Project.name)
                .join(ScanSettingsRow, ScanSettingsRow.project_id == Project.id)
                .where(ScanSettingsRow.scanner == name)
                .limit(1)
            )
            if row is not None and user is not None:
                raise ConflictError(
                    f"project {user} scans with scanner {name}: choose another scanner there first"
                )
            if row is not None:
                s.delete(row)
                s.flush()
            return row
