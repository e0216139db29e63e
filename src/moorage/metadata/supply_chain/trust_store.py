"""SQL access for signature trust: keys, trust stores, rules and the policy version.

Every write that changes what a project trusts increments the project's policy version in the
same transaction. Reads of everything a verification needs (`snapshot`) happen in one
transaction, so the rules, keys and stores always belong to the version they are read with.
Also here: the one query verification needs beyond the registry's own (`index_parents`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import Session, sessionmaker

from moorage.metadata.access.iam_models import Project
from moorage.metadata.access.iam_store import ConflictError, LimitExceededError
from moorage.metadata.database import read_transaction, write_session
from moorage.metadata.registry.models import ManifestChild, Repository, RepositoryManifest
from moorage.metadata.supply_chain.trust_models import (
    TrustKeyRow,
    TrustPolicyVersion,
    TrustRuleRow,
    TrustStoreRow,
)


class InUseError(Exception):
    """A key or trust store that rules still name (their ids in `rules`)."""

    def __init__(self, what: str, rules: Sequence[int]) -> None:
        self.rules = list(rules)
        super().__init__(f"{what} is named by trust rule(s) {', '.join(map(str, self.rules))}")


@dataclass(frozen=True, slots=True)
class NewTrustKey:
    name: str
    algorithm: str
    fingerprint: str
    pem: str
    description: str | None


@dataclass(frozen=True, slots=True)
class NewTrustStore:
    name: str
    certificates: str  # PEM bundle
    description: str | None


@dataclass(frozen=True, slots=True)
class NewTrustRule:
    repositories: str
    mode: str
    require: str
    count: int | None
    verifiers: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class TrustSnapshot:
    """A project's whole trust configuration at one version."""

    version: int
    keys: list[TrustKeyRow]
    stores: list[TrustStoreRow]
    rules: list[TrustRuleRow]


_REFERENCE_FIELD = {"cosign-key": "keys", "notation": "trustStores"}


def _names(rule: TrustRuleRow, verifier_type: str) -> set[str]:
    found: set[str] = set()
    for verifier in rule.verifiers:
        if isinstance(verifier, dict) and verifier.get("type") == verifier_type:
            value = verifier.get(_REFERENCE_FIELD[verifier_type])
            if isinstance(value, list):
                found.update(str(item) for item in value)
    return found


class TrustStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    def _write(self, work: Any) -> Any:
        with write_session(self._engine) as session:
            return work(session)

    @staticmethod
    def _bump(session: Session, project_id: int) -> int:
        row = session.get(TrustPolicyVersion, project_id)
        if row is None:
            row = TrustPolicyVersion(project_id=project_id, version=1)
            session.add(row)
        else:
            row.version += 1
        session.flush()
        return row.version

    @staticmethod
    def _rows(session: Session, model: Any, project_id: int) -> list[Any]:
        return list(
            session.scalars(select(model).where(model.project_id == project_id).order_by(model.id))
        )

    # -- reading

    def version(self, project_id: int) -> int:
        with self._sessions() as session:
            row = session.get(TrustPolicyVersion, project_id)
            return row.version if row is not None else 0

    def snapshot(self, project: str) -> TrustSnapshot | None:
        """Everything the project trusts, read in one transaction (None: no such project)."""
        with self._sessions() as session:
            project_id = session.scalar(select(Project.id).where(Project.name == project))
            if project_id is None:
                return None
            row = session.get(TrustPolicyVersion, project_id)
            return TrustSnapshot(
                row.version if row is not None else 0,
                self._rows(session, TrustKeyRow, project_id),
                self._rows(session, TrustStoreRow, project_id),
                self._rows(session, TrustRuleRow, project_id),
            )

    def keys(self, project_id: int) -> list[TrustKeyRow]:
        with self._sessions() as session:
            return self._rows(session, TrustKeyRow, project_id)

    def stores(self, project_id: int) -> list[TrustStoreRow]:
        with self._sessions() as session:
            return self._rows(session, TrustStoreRow, project_id)

    def rules(self, project_id: int) -> list[TrustRuleRow]:
        with self._sessions() as session:
            return self._rows(session, TrustRuleRow, project_id)

    # -- keys

    def add_key(
        self, project_id: int, key: NewTrustKey, created_by: str | None, max_keys: int
    ) -> TrustKeyRow:
        row = TrustKeyRow(
            project_id=project_id,
            name=key.name,
            algorithm=key.algorithm,
            fingerprint=key.fingerprint,
            pem=key.pem,
            description=key.description,
            created_by=created_by,
        )
        added: TrustKeyRow = self._add_named(row, f"key {key.name}", max_keys, "trust keys")
        return added

    def delete_key(self, project_id: int, name: str) -> TrustKeyRow | None:
        """Remove a key no rule names; the removed key, or None (InUseError while named)."""
        removed: TrustKeyRow | None = self._delete_named(
            project_id, TrustKeyRow, name, "cosign-key", f"key {name}"
        )
        return removed

    # -- trust stores

    def add_store(
        self, project_id: int, store: NewTrustStore, created_by: str | None, max_stores: int
    ) -> TrustStoreRow:
        row = TrustStoreRow(
            project_id=project_id,
            name=store.name,
            certificates=store.certificates,
            description=store.description,
            created_by=created_by,
        )
        added: TrustStoreRow = self._add_named(
            row, f"trust store {store.name}", max_stores, "trust stores"
        )
        return added

    def replace_store_certificates(
        self, project_id: int, name: str, certificates: str
    ) -> TrustStoreRow | None:
        def work(session: Session) -> TrustStoreRow | None:
            row = session.scalar(
                select(TrustStoreRow).where(
                    TrustStoreRow.project_id == project_id, TrustStoreRow.name == name
                )
            )
            if row is None:
                return None
            row.certificates = certificates
            self._bump(session, project_id)
            return row

        return self._write(work)  # type: ignore[no-any-return]

    def delete_store(self, project_id: int, name: str) -> TrustStoreRow | None:
        removed: TrustStoreRow | None = self._delete_named(
            project_id, TrustStoreRow, name, "notation", f"trust store {name}"
        )
        return removed

    def _add_named(self, row: Any, what: str, max_rows: int, plural: str) -> Any:
        """Add a named key or trust store: unique by name, at most `max_rows` per project."""

        def work(session: Session) -> Any:
            existing = self._rows(session, type(row), row.project_id)
            if any(other.name == row.name for other in existing):
                raise ConflictError(f"{what} already exists")
            if len(existing) >= max_rows:
                raise LimitExceededError(f"a project has at most {max_rows} {plural}")
            session.add(row)
            self._bump(session, row.project_id)
            return row

        return self._write(work)

    def _delete_named(
        self, project_id: int, model: Any, name: str, verifier_type: str, what: str
    ) -> Any:
        def work(session: Session) -> Any:
            row = session.scalar(
                select(model).where(model.project_id == project_id, model.name == name)
            )
            if row is None:
                return None
            users = [
                rule.id
                for rule in self._rows(session, TrustRuleRow, project_id)
                if name in _names(rule, verifier_type)
            ]
            if users:
                raise InUseError(what, users)
            session.delete(row)
            self._bump(session, project_id)
            return row

        return self._write(work)

    # -- rules

    def add_rule(
        self, project_id: int, rule: NewTrustRule, created_by: str | None, max_rules: int
    ) -> TrustRuleRow:
        def work(session: Session) -> TrustRuleRow:
            existing = self._rows(session, TrustRuleRow, project_id)
            for row in existing:
                if row.repositories == rule.repositories:
                    raise ConflictError(
                        f"rule {row.id} already covers repositories {rule.repositories!r}"
                    )
            if len(existing) >= max_rules:
                raise LimitExceededError(f"a project has at most {max_rules} trust rules")
            added = self._new_rule(project_id, rule, created_by)
            session.add(added)
            self._bump(session, project_id)
            return added

        return self._write(work)  # type: ignore[no-any-return]

    @staticmethod
    def _new_rule(project_id: int, rule: NewTrustRule, created_by: str | None) -> TrustRuleRow:
        return TrustRuleRow(
            project_id=project_id,
            repositories=rule.repositories,
            mode=rule.mode,
            require=rule.require,
            count=rule.count,
            verifiers=rule.verifiers,
            created_by=created_by,
        )

    def replace_rules(
        self, project_id: int, rules: Sequence[NewTrustRule], created_by: str | None
    ) -> tuple[list[TrustRuleRow], list[TrustRuleRow], int]:
        """Replace every rule in one transaction; (removed, added, new version)."""

        def work(session: Session) -> tuple[list[TrustRuleRow], list[TrustRuleRow], int]:
            removed = self._rows(session, TrustRuleRow, project_id)
            session.execute(delete(TrustRuleRow).where(TrustRuleRow.project_id == project_id))
            added = [self._new_rule(project_id, rule, created_by) for rule in rules]
            session.add_all(added)
            return removed, added, self._bump(session, project_id)

        return self._write(work)  # type: ignore[no-any-return]

    def delete_rule(self, project_id: int, rule_id: int) -> TrustRuleRow | None:
        def work(session: Session) -> TrustRuleRow | None:
            row = session.scalar(
                select(TrustRuleRow).where(
                    TrustRuleRow.id == rule_id, TrustRuleRow.project_id == project_id
                )
            )
            if row is not None:
                session.delete(row)
                self._bump(session, project_id)
            return row

        return self._write(work)  # type: ignore[no-any-return]

    # -- the registry, as verification reads it

    def index_parents(self, repository: str, digest: str, limit: int) -> list[str]:
        """Indexes of `repository` that list `digest` as a child (at most `limit`)."""
        query = (
            select(ManifestChild.parent_digest)
            .join(RepositoryManifest, RepositoryManifest.digest == ManifestChild.parent_digest)
            .join(Repository, Repository.id == RepositoryManifest.repository_id)
            .where(Repository.name == repository, ManifestChild.child_digest == digest)
            .order_by(ManifestChild.parent_digest)
            .limit(limit)
        )
        with read_transaction(self._engine) as connection:
            return list(connection.execute(query).scalars())
