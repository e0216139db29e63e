"""Promotion with gates and a signed record.

- Stages, promotion-only projects and gates are `moorage.services.staging.stages`.
- `PromotionService.promote` resolves the source to a digest, plans what crosses (the closure
  of the digest: `promotion_plan`), evaluates the destination's gates and the source's own pull
  policies on exactly that (`promotion_gates`, `promotion_source`), and links it into the
  destination repository, then sets the tag. Blobs are linked, never copied. The record (an
  in-toto statement in a DSSE envelope signed with the registry's key, `promotion_record`) is
  committed as a referrer of the promoted manifest in the same transaction as the links, the
  tag and the stored promotion, so nothing of a promotion that does not commit is visible.
  Promoting the digest the tag already holds from an earlier promotion returns that promotion,
  also when the earlier one committed while this one was being decided. Every attempt but a
  dry run is audited once (`promotion_audit`), refusals too.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives import serialization

from moorage.domain.errors import ErrorCode, RegistryError
from moorage.domain.events import SYSTEM, Actor, EventKind, RegistryEvent
from moorage.domain.names import project_of
from moorage.domain.promotion import (
    DestinationReference,
    GateResult,
    PromotionReferenceError,
    SourceReference,
    canonical_json,
    parse_destination,
    parse_source,
    statement,
)
from moorage.metadata.registry.registry_records import ManifestLinks, ManifestRecord
from moorage.metadata.registry.store import MetadataStore
from moorage.metadata.staging.promotion_store import (
    NewPromotion,
    PromotionRecord,
    PromotionStore,
)
from moorage.services.access.tokens import ALGORITHM, TokenService
from moorage.services.errors import IdentityError
from moorage.services.events import EventBus
from moorage.services.registry.registry import RegistryService
from moorage.services.registry.uploads import UploadService
from moorage.services.staging.promotion_audit import promotion_event
from moorage.services.staging.promotion_gates import GateEvaluator, GateSubject
from moorage.services.staging.promotion_plan import plan_promotion
from moorage.services.staging.promotion_record import RecordWriter
from moorage.services.staging.stages import GatesView as GatesView
from moorage.services.staging.stages import PromotionOnlyPolicy as PromotionOnlyPolicy
from moorage.services.staging.stages import StageService as StageService
from moorage.services.staging.stages import StageView as StageView
from moorage.services.threads import Threads

log = logging.getLogger("moorage.promotion")


class PromotionRefusedError(Exception):
    """One or more gates failed: `results` lists them all (passed ones too)."""

    def __init__(self, destination: str, results: Sequence[GateResult]) -> None:
        failing = [result for result in results if not result.passed]
        super().__init__(
            f"promotion to {destination} refused by {len(failing)} gate(s): "
            + "; ".join(f"{result.name}: {result.reason}" for result in failing)
        )
        self.results = list(results)
        self.failing = failing


@dataclass(frozen=True, slots=True)
class PromotionOutcome:
    record: PromotionRecord | None  # None for a dry run
    created: bool
    results: tuple[GateResult, ...]
    digest: str
    source: SourceReference
    destination: DestinationReference


@dataclass(frozen=True, slots=True)
class SigningKeyView:
    kid: str
    algorithm: str
    public_key_pem: str


@dataclass
class _Attempt:
    """What a promotion attempt learnt before it was refused (for the audit entry)."""

    digest: str | None = None
    results: tuple[GateResult, ...] = ()


class PromotionService:
    def __init__(
        self,
        *,
        stages: StageService,
        gates: GateEvaluator,
        store: PromotionStore,
        registry: RegistryService,
        uploads: UploadService,
        metadata: MetadataStore,
        tokens: TokenService,
        threads: Threads,
        events: EventBus,
        is_proxy: Callable[[str], Awaitable[bool]] | None = None,
    ) -> None:
        self._stages = stages
        self._gates = gates
        self._store = store
        self._registry = registry
        self._metadata = metadata
        self._tokens = tokens
        self._threads = threads
        self._events = events
        self._is_proxy = is_proxy
        self._records = RecordWriter(
            uploads=uploads, metadata=metadata, tokens=tokens, threads=threads
        )

    # -- keys

    def signing_keys(self) -> list[SigningKeyView]:
        """Every key the registry signed records with (blocking)."""
        return [
            SigningKeyView(
                kid,
                ALGORITHM,
                key.public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                ).decode(),
            )
            for kid, key in sorted(self._tokens.public_keys().items())
        ]

    # -- history

    def promotions(
        self, project: str | None, before: int | None, limit: int
    ) -> list[PromotionRecord]:
        return self._store.promotions(project, before, limit)

    def promotion(self, promotion_id: int) -> PromotionRecord:
        found = self._store.promotion(promotion_id)
        if found is None:
            raise IdentityError(f"promotion {promotion_id} not found", 404)
        return found

    # -- promoting

    @staticmethod
    def parse(source: str, destination: str) -> tuple[SourceReference, DestinationReference]:
        try:
            return parse_source(source), parse_destination(destination)
        except PromotionReferenceError as error:
            raise IdentityError(str(error), 422) from None

    def refused(
        self,
        actor: Actor,
        source: SourceReference,
        destination: DestinationReference,
        reason: str,
        *,
        digest: str | None = None,
        results: Sequence[GateResult] = (),
    ) -> None:
        """Audit a refused promotion (also one refused before the service was asked)."""
        self._events.publish(
            promotion_event(actor, "denied", source, destination, digest, results, reason=reason)
        )

    async def promote(
        self,
        actor: Actor,
        source: SourceReference,
        destination: DestinationReference,
        *,
        dry_run: bool = False,
    ) -> PromotionOutcome:
        """Promote (the caller's permissions were decided before). Raises IdentityError (404
        for a missing project, 409 for a destination that cannot take promotions),
        RegistryError (MANIFEST_UNKNOWN for a missing source, DENIED by a destination rule)
        or PromotionRefusedError. Every refusal is audited, unless it is a dry run."""
        attempt = _Attempt()
        try:
            return await self._promote(actor, source, destination, dry_run, attempt)
        except (PromotionRefusedError, IdentityError, RegistryError) as error:
            if not dry_run:
                reason = error.message if isinstance(error, RegistryError) else str(error)
                self.refused(
                    actor,
                    source,
                    destination,
                    reason,
                    digest=attempt.digest,
                    results=attempt.results,
                )
            raise

    async def _promote(
        self,
        actor: Actor,
        source: SourceReference,
        destination: DestinationReference,
        dry_run: bool,
        attempt: _Attempt,
    ) -> PromotionOutcome:
        destination_project = project_of(destination.repository)
        destination_stage = await self._threads.run(self._stages.stage_of, destination_project)
        if destination_stage is None:
            raise IdentityError(f"project {destination_project} not found", 404)
        if self._is_proxy is not None and await self._is_proxy(destination_project):
            raise IdentityError(
                f"project {destination_project} is a proxy cache and takes no promotions", 409
            )
        source_stage = await self._threads.run(self._stages.stage_of, project_of(source.repository))
        top = await self._resolve(source)
        attempt.digest = top.digest
        existing = await self._existing(destination, top.digest)
        if existing is not None and not dry_run:
            return PromotionOutcome(existing, False, (), top.digest, source, destination)
        gates = (await self._threads.run(self._stages.gates, destination_project)).gates
        # What crosses is planned before the gates run: they judge exactly what is linked.
        plan = await self._threads.run(
            plan_promotion, self._metadata, source.repository, destination.tag, top
        )
        subject = GateSubject(
            source.repository,
            destination.repository,
            destination_project,
            top,
            actor,
            source_stage.stage if source_stage is not None else None,
            destination_stage.stage,
            images=tuple(plan.images),
            under_top=frozenset(plan.under_top),
        )
        results = tuple(await self._gates.evaluate(gates, subject))
        attempt.results = results
        if any(not result.passed for result in results):
            raise PromotionRefusedError(str(destination), results)
        if dry_run:
            return PromotionOutcome(None, False, results, top.digest, source, destination)
        now = datetime.now(UTC)
        requester = {"name": actor.name, "kind": actor.kind}
        document = statement(
            destination=destination,
            source=source,
            digest=top.digest,
            media_type=top.media_type,
            results=results,
            requester=requester,
            at=now,
            linked=[digest for digest in plan.manifests if digest != top.digest],
        )
        signed = await self._threads.run(self._records.sign, canonical_json(document))
        attached = await self._records.prepare(destination.repository, top, signed, source, now)
        record_digest = str(attached.manifest.digest)
        links = ManifestLinks(
            source.repository,
            destination.repository,
            tuple(plan.manifests),
            tuple(plan.blobs),
            tuple(plan.tags),
            frozenset(plan.keep_tags),
            guarded_tag=destination.tag,
        )
        new = NewPromotion(
            destination_project=destination_project,
            destination_repository=destination.repository,
            tag=destination.tag,
            digest=top.digest,
            media_type=top.media_type,
            source_repository=source.repository,
            source_reference=source.tag or source.digest or "",
            requester=actor.name,
            requester_kind=actor.kind,
            gates=[result.as_dict() for result in results],
            record_digest=record_digest,
            envelope=signed,
            created_at=now,
        )
        record, created = await self._registry.link_manifests(
            links, top, actor, lambda guarded: self._store.commit(guarded, new, attached)
        )
        if not created:
            # An identical promotion committed first: it is the one that happened.
            return PromotionOutcome(record, False, (), top.digest, source, destination)
        self._events.publish(
            RegistryEvent(
                EventKind.MANIFEST_PUSHED,
                destination.repository,
                record_digest,
                None,
                attached.manifest.media_type,
                attached.manifest.size,
                SYSTEM,
            )
        )
        self._events.publish(
            promotion_event(
                actor, "success", source, destination, top.digest, results, record=record
            )
        )
        return PromotionOutcome(record, True, results, top.digest, source, destination)

    async def _resolve(self, source: SourceReference) -> ManifestRecord:
        if source.digest is not None:
            record = await self._threads.run(
                self._metadata.resolve_digest, source.repository, source.digest
            )
        else:
            assert source.tag is not None
            record = await self._threads.run(
                self._metadata.resolve_tag, source.repository, source.tag
            )
        if record is None:
            raise RegistryError(
                ErrorCode.MANIFEST_UNKNOWN,
                f"{source} does not exist",
                status=404,
            )
        return record

    async def _existing(
        self, destination: DestinationReference, digest: str
    ) -> PromotionRecord | None:
        current = await self._threads.run(
            self._metadata.resolve_tag, destination.repository, destination.tag
        )
        if current is None or current.digest != digest:
            return None
        return await self._threads.run(
            self._store.latest, destination.repository, destination.tag, digest
        )


def record_statement(record: PromotionRecord) -> dict[str, Any]:
    """The statement inside a stored record's envelope."""
    document = json.loads(record.envelope)
    payload: dict[str, Any] = json.loads(base64.b64decode(document["payload"]))
    return payload
