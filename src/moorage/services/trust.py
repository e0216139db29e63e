"""Signature trust: managing each project's keys, trust stores and rules, and enforcing them.

`TrustService` is the management side: every change is validated, audited, and increments the
project's policy version. `SignaturePolicy` is the enforcement side: `evaluate(repository,
digest)` says whether an image satisfies the trust rule covering its repository (what the
pull check and promotion's `signature` gate use), and the check it registers at pull:manifest
denies pulls in `enforce` mode and reports them (`signature:unverified`) in `audit` mode.

Where signatures are found, for an image `<repository>@<digest>`:

- cosign legacy: the tag `sha256-<hex>.sig` of the same repository;
- sigstore bundles and Notation envelopes: the repository's referrers of the digest with
  artifactType `application/vnd.dev.sigstore.bundle.v0.3+json` or
  `application/vnd.cncf.notary.signature`.

A manifest pulled as the child of an index is satisfied by the index's signatures (signing a
multi-platform image signs the index). Signatures, attestations, SBOMs and every other artifact
(what cosign tags `sha256-*.sig/.att/.sbom`, referrers with an empty or foreign config) are never
gated: clients must be able to fetch them to verify anything. What counts as an artifact is
decided by content (`moorage.domain.content`; an index when nothing it reaches is an image),
never by a tag name, an `artifactType` or a `subject`, which anyone who may push could put on a
runnable image.

Results are cached per (repository, digest, policy version, rule, set of signature manifests)
in a bounded per-process cache, so a new policy version or a new signature is seen at once,
and an unchanged image is verified once; a result is decided again when a certificate or
signature it rests on expires (`TrustResult.valid_until`), and after 10 minutes in any case.
A worker reads a project's policy at most every 2 seconds (at once after a change it made
itself).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from cryptography import x509

from moorage.domain import mediatypes as mt
from moorage.domain.content import ManifestKind, classify_body, document_of
from moorage.domain.digest import Digest
from moorage.domain.errors import ErrorCode, RegistryError
from moorage.domain.events import AccessEvent, Actor
from moorage.domain.immutability import relative_repository
from moorage.domain.names import project_of
from moorage.domain.policy import Allow, Decision, DecisionPoint, Deny, PolicyContext, PolicySet
from moorage.metadata.iam_models import Project
from moorage.metadata.iam_store import ConflictError, IamStore, LimitExceededError
from moorage.metadata.store import MetadataStore
from moorage.metadata.trust_models import TrustKeyRow, TrustRuleRow, TrustStoreRow
from moorage.metadata.trust_store import (
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
from moorage.services.manifest_kinds import ManifestKinds
from moorage.services.scanner_adapters import is_adapter_pull
from moorage.services.threads import Threads
from moorage.signing import cosign, notation, sigstore_bundle
from moorage.signing.encoding import FormatError, json_object
from moorage.signing.keys import (
    CertificateInfo,
    KeyInfo,
    KeyMaterialError,
    canonical_pem,
    certificates_pem,
    load_ca_certificates,
    load_public_key,
    now_utc,
)
from moorage.signing.trust import (
    MAX_RULES,
    FoundSignature,
    Mode,
    PolicyError,
    Requirement,
    SignatureKind,
    Subject,
    TrustMaterial,
    TrustResult,
    TrustRule,
    VerifierSpec,
    check_references,
    evaluate_rule,
    make_rule,
    no_rule,
    select_rule,
    validate_rule_set,
    verifier_from_dict,
    verifier_to_dict,
)
from moorage.storage.base import StorageDriver

log = logging.getLogger("moorage.trust")

POLICY_NAME: Final = "signature-trust"
POLICY_CACHE_SECONDS: Final = 2.0
MAX_KEYS: Final = 32  # per project
MAX_STORES: Final = 16  # per project
MAX_SIGNATURE_MANIFESTS: Final = 32  # referrers read per artifact type and image
MAX_INDEX_PARENTS: Final = 4  # indexes whose signatures may cover a pulled child
RESULT_CACHE_ENTRIES: Final = 4096
# Results are decided again after this long even when nothing changed: a certificate that was
# not yet valid may have become valid. Expiry is exact (`TrustResult.valid_until`).
RESULT_CACHE_SECONDS: Final = 600.0


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
        self._policies = TtlCache(POLICY_CACHE_SECONDS)

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


# -- enforcement


class _Lru:
    """A small bounded mapping, most recently used kept (event-loop only: no locking)."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[Any, Any] = OrderedDict()

    def get(self, key: Any) -> Any:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: Any, value: Any) -> None:
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)


@dataclass(frozen=True, slots=True)
class _SignatureRef:
    kind: SignatureKind
    digest: str  # the manifest holding the signature(s)


def is_artifact_manifest(body: bytes) -> bool:
    """Whether a manifest is, by its own content, an artifact no runtime runs
    (`moorage.domain.content`). An index is not: it is judged through what it reaches; nor is
    what cannot be read."""
    if document_of(body) is None:
        return False
    return classify_body(body).kind is ManifestKind.ARTIFACT


class SignaturePolicy:
    """Evaluates trust rules for images, and the pull:manifest check that enforces them."""

    def __init__(
        self,
        service: TrustService,
        store: TrustStore,
        metadata: MetadataStore,
        storage: StorageDriver,
        threads: Threads,
        events: EventBus,
    ) -> None:
        self._service = service
        self._store = store
        self._metadata = metadata
        self._storage = storage
        self._threads = threads
        self._events = events
        self._results = _Lru(RESULT_CACHE_ENTRIES)
        self._kinds = ManifestKinds(metadata)

    def register(self, policies: PolicySet) -> None:
        policies.register(DecisionPoint.PULL_MANIFEST, self.check_pull)

    async def _policy(self, project: str) -> CompiledPolicy:
        hit, policy = self._service.cached_policy(project)
        if hit:
            return policy
        return await self._threads.run(self._service.compiled_policy, project)

    async def _rule(self, repository: str) -> tuple[CompiledPolicy, TrustRule | None]:
        policy = await self._policy(project_of(repository))
        if not policy.rules:
            return policy, None
        return policy, select_rule(policy.rules, relative_repository(repository))

    async def evaluate(self, repository: str, digest: str) -> TrustResult:
        """What the trust policy says about `repository@digest` (MANIFEST_UNKNOWN if absent).

        The same answer the pull check enforces: promotion's `signature` gate uses it.
        """
        policy, rule = await self._rule(repository)
        if rule is None:
            return no_rule(repository, digest, policy.version)
        return await self._evaluate(repository, digest, policy, rule)

    async def evaluate_as(self, repository: str, digest: str, *, held_in: str) -> TrustResult:
        """What the trust policy of `repository` says about an image (and its signatures)
        that `held_in` holds: promotion's `signature` gate, before the image is linked in."""
        policy, rule = await self._rule(repository)
        if rule is None:
            return no_rule(repository, digest, policy.version)
        result = await self._evaluate(held_in, digest, policy, rule)
        return dataclasses.replace(result, repository=repository)

    async def _evaluate(
        self, repository: str, digest: str, policy: CompiledPolicy, rule: TrustRule
    ) -> TrustResult:
        result = await self._verify(repository, digest, policy, rule)
        if result.satisfied or rule.mode is Mode.OFF:
            return result
        # Signing a multi-platform image signs its index: a child pulled by digest is covered.
        parents = await self._threads.run(
            self._store.index_parents, repository, digest, MAX_INDEX_PARENTS
        )
        for parent in parents:
            through = await self._verify(repository, parent, policy, rule)
            if through.satisfied:
                return dataclasses.replace(through, digest=digest, signed_through=parent)
        return result

    async def _verify(
        self, repository: str, digest: str, policy: CompiledPolicy, rule: TrustRule
    ) -> TrustResult:
        record = await self._threads.run(self._metadata.resolve_digest, repository, digest)
        if record is None:
            raise RegistryError(
                ErrorCode.MANIFEST_UNKNOWN, f"manifest {digest} is not in {repository}"
            )
        if rule.mode is Mode.OFF:
            return evaluate_rule(
                rule,
                Subject(repository, digest, record.media_type, record.size),
                (),
                TrustMaterial(),
                now_utc(),
                policy.version,
            )
        references = await self._threads.run(self._signature_refs, repository, digest)
        key = (repository, digest, policy.version, rule.id, references)
        entry: tuple[float, TrustResult] | None = self._results.get(key)
        if entry is not None:
            stored_at, cached = entry
            fresh = time.monotonic() - stored_at < RESULT_CACHE_SECONDS
            if fresh and (cached.valid_until is None or now_utc() < cached.valid_until):
                return cached
        result = await self._threads.run(
            self._verify_blocking,
            repository,
            record.media_type,
            record.size,
            digest,
            references,
            policy,
            rule,
        )
        self._results.put(key, (time.monotonic(), result))
        return result

    def _verify_blocking(
        self,
        repository: str,
        media_type: str,
        size: int,
        digest: str,
        references: tuple[_SignatureRef, ...],
        policy: CompiledPolicy,
        rule: TrustRule,
    ) -> TrustResult:
        subject = Subject(
            repository, digest, media_type, size, self._metadata.manifest_body(digest)
        )
        signatures = [found for ref in references for found in self._read(ref)]
        return evaluate_rule(rule, subject, signatures, policy.material, now_utc(), policy.version)

    # -- finding and reading signatures (blocking)

    def _signature_refs(self, repository: str, digest: str) -> tuple[_SignatureRef, ...]:
        found: list[_SignatureRef] = []
        legacy = self._metadata.resolve_tag(repository, cosign.signature_tag(digest))
        if legacy is not None:
            found.append(_SignatureRef(SignatureKind.COSIGN_LEGACY, legacy.digest))
        for kind, artifact_type in (
            (SignatureKind.SIGSTORE_BUNDLE, sigstore_bundle.ARTIFACT_TYPE),
            (SignatureKind.NOTATION, notation.ARTIFACT_TYPE),
        ):
            for referrer in self._metadata.referrers(
                repository, digest, artifact_type, None, MAX_SIGNATURE_MANIFESTS
            ):
                found.append(_SignatureRef(kind, referrer.digest))
        return tuple(found)

    def _blob(self, digest: str, size: int, limit: int) -> bytes:
        if size > limit:
            raise FormatError(f"blob {digest} is larger than {limit} bytes")
        with self._storage.open_blob(Digest.parse(digest)) as stream:
            data = stream.read(limit + 1)
        if len(data) > limit:
            raise FormatError(f"blob {digest} is larger than {limit} bytes")
        return data

    def _read(self, ref: _SignatureRef) -> list[FoundSignature]:
        body = self._metadata.manifest_body(ref.digest)
        if body is None:
            return [FoundSignature(ref.kind, ref.digest, None, problem="manifest is missing")]
        try:
            if ref.kind is SignatureKind.COSIGN_LEGACY:
                return self._read_legacy(ref, body)
            return [self._read_envelope(ref, body)]
        except (FormatError, RegistryError, OSError) as error:
            message = error.message if isinstance(error, RegistryError) else str(error)
            return [FoundSignature(ref.kind, ref.digest, None, problem=message[:300])]

    def _read_legacy(self, ref: _SignatureRef, body: bytes) -> list[FoundSignature]:
        found = []
        for layer in cosign.legacy_layers(body):
            try:
                payload = self._blob(layer.digest, layer.size, cosign.MAX_PAYLOAD_BYTES)
            except (FormatError, RegistryError, OSError) as error:
                message = error.message if isinstance(error, RegistryError) else str(error)
                found.append(
                    FoundSignature(ref.kind, ref.digest, None, legacy=layer, problem=message)
                )
                continue
            found.append(
                FoundSignature(
                    ref.kind, ref.digest, payload, cosign.SIMPLE_SIGNING_MEDIA_TYPE, layer
                )
            )
        if not found:
            raise FormatError("the signature manifest has no simple-signing layers")
        return found

    def _read_envelope(self, ref: _SignatureRef, body: bytes) -> FoundSignature:
        document = json_object(body, "the signature manifest")
        layers = document.get("layers")
        if not isinstance(layers, list) or not layers or not isinstance(layers[0], dict):
            raise FormatError("the signature manifest has no layer")
        layer = layers[0]
        media_type = str(layer.get("mediaType", ""))
        size = layer.get("size")
        digest = layer.get("digest")
        if not isinstance(size, int) or not isinstance(digest, str):
            raise FormatError("the signature layer's descriptor is malformed")
        if ref.kind is SignatureKind.SIGSTORE_BUNDLE:
            if media_type not in sigstore_bundle.BUNDLE_MEDIA_TYPES:
                raise FormatError(f"layer type {media_type[:60]} is not a sigstore bundle")
            limit = sigstore_bundle.MAX_BUNDLE_BYTES
        else:
            if media_type not in (notation.JWS_MEDIA_TYPE, notation.COSE_MEDIA_TYPE):
                raise FormatError(f"layer type {media_type[:60]} is not a signature envelope")
            limit = notation.MAX_ENVELOPE_BYTES
        return FoundSignature(ref.kind, ref.digest, self._blob(digest, size, limit), media_type)

    # -- the pull check

    async def _is_artifact(self, digest: str, media_type: str | None) -> bool:
        return not await self._threads.run(self._kinds.runnable, digest, media_type)

    async def check_pull(self, context: PolicyContext) -> Decision:
        digest = context.digest
        # A scanner adapter reads the image in order to scan it; it never runs it.
        if digest is None or is_adapter_pull(context.actor):
            return Allow()
        policy, rule = await self._rule(context.repository)
        if rule is None or rule.mode is Mode.OFF:
            return Allow()
        if context.media_type is not None and context.media_type not in mt.MANIFEST_TYPES:
            return Allow()
        if await self._is_artifact(digest, context.media_type):
            return Allow()
        try:
            result = await self._evaluate(context.repository, digest, policy, rule)
        except RegistryError:
            raise
        except Exception:
            log.exception(
                "evaluating the trust policy for %s@%s failed", context.repository, digest
            )
            if rule.mode is Mode.ENFORCE:
                return Deny(
                    f"the signatures of {digest} could not be verified (an internal error);"
                    " try again or ask an administrator",
                    POLICY_NAME,
                )
            return Allow()
        if result.satisfied:
            return Allow()
        if result.mode is Mode.ENFORCE:
            return Deny(result.reason, POLICY_NAME)
        self._events.publish(
            AccessEvent(
                "signature:unverified",
                context.actor,
                "failure",
                project_of(context.repository),
                f"{context.repository}@{digest}",
                {"rule": result.rule_id, "mode": str(result.mode), "reason": result.reason},
            )
        )
        return Allow()
