"""Signature trust management: each project's keys, trust stores and rules.

`TrustService` validates every change (keys and certificates must load, rules must be well
formed and name only keys and stores the project has), audits it, and increments the project's
policy version. It also compiles the project's policy (rules with their keys and certificates
loaded) for enforcement, `moorage.services.supply_chain.signature_policy`: a worker reads a
project's policy at most every 2 seconds (at once after a change it made itself), so pulls do
not query the database each time while a change is still seen promptly.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from cryptography import x509

from moorage.domain.events import AccessEvent, Actor
from moorage.metadata.access.iam_models import Project
from moorage.metadata.access.iam_store import ConflictError, IamStore, LimitExceededError
from moorage.metadata.supply_chain.trust_models import TrustKeyRow, TrustRuleRow, TrustStoreRow
from moorage.metadata.supply_chain.trust_store import (
    InUseError,
    NewTrustKey,
    NewTrustRule,
    NewTrustStore,
    TrustSnapshot,
    TrustStore,
)
from moorage.services.cache import TtlCache
from moorage.services.errors import IdentityError
from moorage.services.events import EventBus
from moorage.signing.keys import (
    CertificateInfo,
    KeyInfo,
    KeyMaterialError,
    canonical_pem,
    certificates_pem,
    load_ca_certificates,
    load_public_key,
)
from moorage.signing.trust import (
    MAX_RULES,
    Mode,
    PolicyError,
    Requirement,
    TrustMaterial,
    TrustRule,
    VerifierSpec,
    check_references,
    make_rule,
    validate_rule_set,
    verifier_from_dict,
    verifier_to_dict,
)

log = logging.getLogger("moorage.trust")

POLICY_CACHE_SECONDS: Final = 2.0
MAX_KEYS: Final = 32  # per project
MAX_STORES: Final = 16  # per project


# -- views


@dataclass(frozen=True, slots=True)
class TrustKeyView:
    name: str
    algorithm: str
    fingerprint: str
    pem: str
    description: str | None
    created_by: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class CertificateView:
    subject: str
    fingerprint: str
    not_before: datetime
    not_after: datetime


@dataclass(frozen=True, slots=True)
class TrustStoreView:
    name: str
    certificates: tuple[CertificateView, ...]
    pem: str
    description: str | None
    created_by: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class TrustRuleView:
    id: int
    repositories: str
    mode: str
    require: str
    count: int | None
    verifiers: tuple[dict[str, Any], ...]
    created_by: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class TrustPolicyView:
    version: int
    rules: tuple[TrustRuleView, ...]


@dataclass(frozen=True, slots=True)
class RuleInput:
    """A rule as a caller submits it; verifiers in their JSON shape (validated here)."""

    repositories: str
    mode: str
    require: str
    count: int | None
    verifiers: tuple[dict[str, Any], ...]


def _key_view(row: TrustKeyRow) -> TrustKeyView:
    return TrustKeyView(
        row.name,
        row.algorithm,
        row.fingerprint,
        row.pem,
        row.description,
        row.created_by,
        row.created_at,
    )


def _certificate_view(info: CertificateInfo) -> CertificateView:
    return CertificateView(info.subject, info.fingerprint, info.not_before, info.not_after)


def _store_view(row: TrustStoreRow) -> TrustStoreView:
    infos = load_ca_certificates(row.certificates)
    return TrustStoreView(
        row.name,
        tuple(_certificate_view(info) for info in infos),
        row.certificates,
        row.description,
        row.created_by,
        row.created_at,
    )


def _rule_view(row: TrustRuleRow) -> TrustRuleView:
    return TrustRuleView(
        row.id,
        row.repositories,
        row.mode,
        row.require,
        row.count,
        tuple(row.verifiers),
        row.created_by,
        row.created_at,
    )


def _rule_summary(row: TrustRuleRow) -> dict[str, object]:
    return {
        "id": row.id,
        "repositories": row.repositories,
        "mode": row.mode,
        "require": row.require,
        "count": row.count,
        "verifiers": [dict(verifier) for verifier in row.verifiers],
    }


# -- the compiled policy a worker evaluates


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    version: int
    rules: tuple[TrustRule, ...]
    material: TrustMaterial


def _stored_rule(row: TrustRuleRow) -> TrustRule:
    # Stored rules were validated when written; they are taken as stored (a later, stricter
    # validation must not make pulls fail). A verifier that cannot be read makes the rule
    # unsatisfiable rather than vanish, so an enforced rule fails closed.
    verifiers: list[VerifierSpec] = []
    for document in row.verifiers:
        try:
            verifiers.append(verifier_from_dict(document))
        except PolicyError:
            log.warning("trust rule %s has an unreadable verifier; it cannot be satisfied", row.id)
            return TrustRule(row.id, row.repositories, Mode(row.mode), Requirement.ALL_OF, None, ())
    return TrustRule(
        row.id,
        row.repositories,
        Mode(row.mode),
        Requirement(row.require),
        row.count,
        tuple(verifiers),
    )


def compile_policy(snapshot: TrustSnapshot) -> CompiledPolicy:
    keys: dict[str, KeyInfo] = {}
    for key in snapshot.keys:
        try:
            keys[key.name] = load_public_key(key.pem)
        except KeyMaterialError:
            log.warning("trust key %s cannot be loaded; it verifies nothing", key.name)
    stores: dict[str, tuple[x509.Certificate, ...]] = {}
    for store in snapshot.stores:
        try:
            stores[store.name] = tuple(
                i.certificate for i in load_ca_certificates(store.certificates)
            )
        except KeyMaterialError:
            log.warning("trust store %s cannot be loaded; it trusts nothing", store.name)
    return CompiledPolicy(
        snapshot.version,
        tuple(_stored_rule(row) for row in snapshot.rules),
        TrustMaterial(keys, stores),
    )


_EMPTY: Final = CompiledPolicy(0, (), TrustMaterial())


class TrustService:
    """Keys, trust stores and rules of each project; every change is audited and versioned."""

    def __init__(self, store: TrustStore, iam: IamStore, events: EventBus) -> None:
        self._store = store
        self._iam = iam
        self._events = events
        self._policies = TtlCache(POLICY_CACHE_SECONDS, name="signature-policies")

    def _project(self, name: str) -> Project:
        row = self._iam.project_by_name(name)
        if row is None:
            raise IdentityError(f"project {name} not found", 404)
        return row

    def _emit(self, action: str, actor: Actor, project: str, **details: object) -> None:
        self._policies.clear()
        self._events.publish(
            AccessEvent(action, actor, "success", project, f"project:{project}", details)
        )

    # -- keys

    def keys(self, project: str) -> list[TrustKeyView]:
        return [_key_view(row) for row in self._store.keys(self._project(project).id)]

    def key(self, project: str, name: str) -> TrustKeyView:
        for view in self.keys(project):
            if view.name == name:
                return view
        raise IdentityError(f"key {name} not found", 404)

    def add_key(
        self, actor: Actor, project: str, name: str, pem: str, description: str | None
    ) -> TrustKeyView:
        try:
            info = load_public_key(pem)
        except KeyMaterialError as error:
            raise IdentityError(str(error), 422) from None
        row = self._project(project)
        new = NewTrustKey(
            name, info.algorithm, info.fingerprint, canonical_pem(info.key), description
        )
        try:
            added = self._store.add_key(row.id, new, actor.name, MAX_KEYS)
        except ConflictError as error:
            raise IdentityError(str(error), 409) from None
        except LimitExceededError as error:
            raise IdentityError(str(error)) from None
        self._emit(
            "trust-key:add",
            actor,
            project,
            name=name,
            algorithm=added.algorithm,
            fingerprint=added.fingerprint,
        )
        return _key_view(added)

    def delete_key(self, actor: Actor, project: str, name: str) -> None:
        row = self._project(project)
        try:
            removed = self._store.delete_key(row.id, name)
        except InUseError as error:
            raise IdentityError(f"{error}; change those rules first", 409) from None
        if removed is None:
            raise IdentityError(f"key {name} not found", 404)
        self._emit("trust-key:delete", actor, project, name=name, fingerprint=removed.fingerprint)

    # -- trust stores

    def stores(self, project: str) -> list[TrustStoreView]:
        return [_store_view(row) for row in self._store.stores(self._project(project).id)]

    def trust_store(self, project: str, name: str) -> TrustStoreView:
        for row in self._store.stores(self._project(project).id):
            if row.name == name:
                return _store_view(row)
        raise IdentityError(f"trust store {name} not found", 404)

    @staticmethod
    def _certificates(pem: str) -> list[CertificateInfo]:
        try:
            return load_ca_certificates(pem)
        except KeyMaterialError as error:
            raise IdentityError(str(error), 422) from None

    def add_store(
        self, actor: Actor, project: str, name: str, pem: str, description: str | None
    ) -> TrustStoreView:
        infos = self._certificates(pem)
        row = self._project(project)
        new = NewTrustStore(name, certificates_pem(infos), description)
        try:
            added = self._store.add_store(row.id, new, actor.name, MAX_STORES)
        except ConflictError as error:
            raise IdentityError(str(error), 409) from None
        except LimitExceededError as error:
            raise IdentityError(str(error)) from None
        self._emit(
            "trust-store:add",
            actor,
            project,
            name=name,
            certificates=[info.fingerprint for info in infos],
        )
        return _store_view(added)

    def replace_store(self, actor: Actor, project: str, name: str, pem: str) -> TrustStoreView:
        infos = self._certificates(pem)
        row = self._project(project)
        updated = self._store.replace_store_certificates(row.id, name, certificates_pem(infos))
        if updated is None:
            raise IdentityError(f"trust store {name} not found", 404)
        self._emit(
            "trust-store:update",
            actor,
            project,
            name=name,
            certificates=[info.fingerprint for info in infos],
        )
        return _store_view(updated)

    def delete_store(self, actor: Actor, project: str, name: str) -> None:
        row = self._project(project)
        try:
            removed = self._store.delete_store(row.id, name)
        except InUseError as error:
            raise IdentityError(f"{error}; change those rules first", 409) from None
        if removed is None:
            raise IdentityError(f"trust store {name} not found", 404)
        self._emit("trust-store:delete", actor, project, name=name)

    # -- rules

    def policy(self, project: str) -> TrustPolicyView:
        row = self._project(project)
        rules = self._store.rules(row.id)
        return TrustPolicyView(
            self._store.version(row.id), tuple(_rule_view(rule) for rule in rules)
        )

    def rule(self, project: str, rule_id: int) -> TrustRuleView:
        for view in self.policy(project).rules:
            if view.id == rule_id:
                return view
        raise IdentityError(f"rule {rule_id} not found", 404)

    def _validated(self, project_id: int, rules: Sequence[RuleInput]) -> list[NewTrustRule]:
        keys = [row.name for row in self._store.keys(project_id)]
        stores = [row.name for row in self._store.stores(project_id)]
        try:
            parsed = []
            for rule in rules:
                verifiers = [verifier_from_dict(document) for document in rule.verifiers]
                made = make_rule(rule.repositories, rule.mode, rule.require, rule.count, verifiers)
                check_references(made, keys, stores)
                parsed.append(made)
            validate_rule_set(parsed)
        except PolicyError as error:
            raise IdentityError(str(error), 422) from None
        return [
            NewTrustRule(
                rule.repositories,
                str(rule.mode),
                str(rule.require),
                rule.count,
                [verifier_to_dict(verifier) for verifier in rule.verifiers],
            )
            for rule in parsed
        ]

    def add_rule(self, actor: Actor, project: str, rule: RuleInput) -> TrustRuleView:
        row = self._project(project)
        (new,) = self._validated(row.id, [rule])
        try:
            added = self._store.add_rule(row.id, new, actor.name, MAX_RULES)
        except ConflictError as error:
            raise IdentityError(str(error), 409) from None
        except LimitExceededError as error:
            raise IdentityError(str(error)) from None
        self._emit("trust-rule:create", actor, project, rule=_rule_summary(added))
        return _rule_view(added)

    def replace_rules(
        self, actor: Actor, project: str, rules: Sequence[RuleInput]
    ) -> TrustPolicyView:
        row = self._project(project)
        new = self._validated(row.id, rules)
        removed, added, version = self._store.replace_rules(row.id, new, actor.name)
        self._emit(
            "trust-rule:replace",
            actor,
            project,
            version=version,
            removed=[_rule_summary(rule) for rule in removed],
            rules=[_rule_summary(rule) for rule in added],
        )
        return TrustPolicyView(version, tuple(_rule_view(rule) for rule in added))

    def delete_rule(self, actor: Actor, project: str, rule_id: int) -> None:
        row = self._project(project)
        removed = self._store.delete_rule(row.id, rule_id)
        if removed is None:
            raise IdentityError(f"rule {rule_id} not found", 404)
        self._emit("trust-rule:delete", actor, project, rule=_rule_summary(removed))

    # -- what the enforcement reads

    def cached_policy(self, project: str) -> tuple[bool, CompiledPolicy]:
        """(True, policy) when this worker read it less than 2 s ago; never loads."""
        hit, policy = self._policies.peek(project)
        return hit, policy if hit else _EMPTY

    def compiled_policy(self, project: str) -> CompiledPolicy:
        """The project's policy, compiled and cached for 2 s (blocking: run on the threads)."""

        def load() -> CompiledPolicy:
            snapshot = self._store.snapshot(project)
            return _EMPTY if snapshot is None else compile_policy(snapshot)

        return self._policies.get_or_load(project, load)
