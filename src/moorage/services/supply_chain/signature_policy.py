"""Signature policy enforcement: whether an image is signed as its trust rule requires.

`SignaturePolicy.evaluate(repository, digest)` says whether an image satisfies the trust rule
covering its repository (what the pull check and promotion's `signature` gate use), and the
check it registers at pull:manifest denies pulls in `enforce` mode and reports them
(`signature:unverified`) in `audit` mode. The rules, keys and trust stores themselves are
managed by `moorage.services.supply_chain.trust`.

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
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Final

from moorage.domain import mediatypes as mt
from moorage.domain.content import ManifestKind, classify_body, document_of
from moorage.domain.digest import Digest
from moorage.domain.errors import ErrorCode, RegistryError
from moorage.domain.events import AccessEvent
from moorage.domain.immutability import relative_repository
from moorage.domain.names import project_of
from moorage.domain.policy import Allow, Decision, DecisionPoint, Deny, PolicyContext, PolicySet
from moorage.metadata.registry.store import MetadataStore
from moorage.metadata.supply_chain.trust_store import TrustStore
from moorage.services.events import EventBus
from moorage.services.registry.manifest_kinds import ManifestKinds
from moorage.services.supply_chain.scanner_adapters import is_adapter_pull
from moorage.services.supply_chain.trust import CompiledPolicy, TrustService
from moorage.services.threads import Threads
from moorage.signing import cosign, notation, sigstore_bundle
from moorage.signing.encoding import FormatError, json_object
from moorage.signing.keys import now_utc
from moorage.signing.trust import (
    FoundSignature,
    Mode,
    SignatureKind,
    Subject,
    TrustMaterial,
    TrustResult,
    TrustRule,
    evaluate_rule,
    no_rule,
    select_rule,
)
from moorage.storage.base import StorageDriver

log = logging.getLogger("moorage.trust")

POLICY_NAME: Final = "signature-trust"
MAX_SIGNATURE_MANIFESTS: Final = 32  # referrers read per artifact type and image
MAX_INDEX_PARENTS: Final = 4  # indexes whose signatures may cover a pulled child
RESULT_CACHE_ENTRIES: Final = 4096
# Results are decided again after this long even when nothing changed: a certificate that was
# not yet valid may have become valid. Expiry is exact (`TrustResult.valid_until`).
RESULT_CACHE_SECONDS: Final = 600.0


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
