"""Stages, promotion-only projects, and promotion with gates and a signed record.

- `StageService` manages each project's stage label, its promotion-only flag, its gates and the
  approvals recorded for its promotions; every change is audited.
- `PromotionOnlyPolicy` refuses direct pushes (manifests and new blob uploads) into
  promotion-only projects, whoever pushes; with `promotion_break_glass` on, a system
  administrator's manifest push is let through and audited as `promotion:break-glass`. The
  registry's own writes (SBOMs and promotion records, by the system actor) are not pushes.
- `PromotionService.promote` resolves the source to a digest, plans what crosses (the closure
  of the digest: `promotion_plan`), evaluates the destination's gates and the source's own pull
  policies on exactly that (`promotion_gates`, `promotion_source`), and links it into the
  destination repository, then sets the tag. Blobs are linked, never copied. The record (an
  in-toto statement in a DSSE envelope signed with the registry's key, `promotion_record`) is
  attached to the promoted manifest as a referrer first; the links, the tag and the stored
  record are then committed in one transaction, and the attached record is removed again if
  that fails. Promoting the digest the tag already holds from an earlier promotion returns that
  promotion. Every attempt but a dry run is audited once (`promotion_audit`), refusals too.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from cryptography.hazmat.primitives import serialization

from moorage.domain.access import SystemAction, decide_system
from moorage.domain.digest import Digest
from moorage.domain.errors import ErrorCode, RegistryError
from moorage.domain.events import AccessEvent, Actor
from moorage.domain.names import project_of
from moorage.domain.policy import Allow, Decision, DecisionPoint, Deny, PolicyContext, PolicySet
from moorage.domain.promotion import (
    DestinationReference,
    Gate,
    GateError,
    GateKind,
    GateResult,
    PromotionReferenceError,
    SourceReference,
    StageError,
    canonical_json,
    make_gate,
    parse_destination,
    parse_source,
    statement,
    validate_gates,
    validate_stage,
)
from moorage.metadata.promotion_store import (
    ApprovalRecord,
    GatesRecord,
    NewPromotion,
    ProjectNotFoundError,
    PromotionRecord,
    PromotionStore,
    ProxyCacheConflictError,
    StageRecord,
)
from moorage.metadata.store import ManifestLinks, ManifestRecord, MetadataStore
from moorage.services.cache import TtlCache
from moorage.services.errors import IdentityError
from moorage.services.events import EventBus
from moorage.services.identity import IdentityService, Subject
from moorage.services.promotion_audit import promotion_event
from moorage.services.promotion_gates import GateEvaluator, GateSubject
from moorage.services.promotion_plan import plan_promotion
from moorage.services.promotion_record import RecordWriter
from moorage.services.registry import RegistryService
from moorage.services.threads import Threads
from moorage.services.tokens import ALGORITHM, TokenService
from moorage.services.uploads import UploadService

log = logging.getLogger("moorage.promotion")

POLICY_NAME: Final = "promotion-only"
STAGE_CACHE_SECONDS: Final = 2.0
MAX_COMMENT_LENGTH: Final = 1000


def promotion_path_hint(project: str) -> str:
    return (
        f"{project} accepts only promotions: POST /api/v1/promotions or `moorage promote`"
        " (see docs/staging.md)"
    )


@dataclass(frozen=True, slots=True)
class StageView:
    project: str
    stage: str | None
    promotion_only: bool
    updated_by: str | None
    updated_at: datetime | None


@dataclass(frozen=True, slots=True)
class GatesView:
    project: str
    gates: tuple[Gate, ...]
    updated_by: str | None
    updated_at: datetime | None


def _stage_view(record: StageRecord) -> StageView:
    return StageView(
        record.project,
        record.stage,
        record.promotion_only,
        record.updated_by,
        record.updated_at,
    )


# A stored gate that no longer validates (a later, stricter version) fails closed: it becomes a
# label gate no image can pass, named as it was.
_UNSATISFIABLE_LABEL: Final = "dev.moorage.promotion.gate-no-longer-valid"


def stored_gates(raw: Sequence[dict[str, Any]]) -> tuple[Gate, ...]:
    """Gates as stored (validated when written)."""
    gates = []
    for fields in raw:
        try:
            gates.append(make_gate(fields))
        except GateError as error:
            log.warning("stored promotion gate %s no longer validates: %s", fields, error)
            name = str(fields.get("name") or "invalid")[:64]
            gates.append(Gate(GateKind.LABEL, name, key=_UNSATISFIABLE_LABEL))
    return tuple(gates)


def _gates_view(record: GatesRecord) -> GatesView:
    return GatesView(
        record.project, stored_gates(record.gates), record.updated_by, record.updated_at
    )


class StageService:
    """Stage labels, promotion-only flags, gates and approvals of projects."""

    def __init__(self, store: PromotionStore, identity: IdentityService, events: EventBus) -> None:
        self._store = store
        self._identity = identity
        self._events = events
        self._stages = TtlCache(STAGE_CACHE_SECONDS)

    def _emit(self, action: str, actor: Actor, project: str, **details: object) -> None:
        self._events.publish(
            AccessEvent(action, actor, "success", project, f"project:{project}", details)
        )

    def stage(self, project: str) -> StageView:
        try:
            return _stage_view(self._store.stage(project))
        except ProjectNotFoundError as error:
            raise IdentityError(str(error), 404) from None

    def set_stage(
        self, actor: Actor, project: str, stage: str | None, promotion_only: bool
    ) -> StageView:
        if stage is not None:
            try:
                validate_stage(stage)
            except StageError as error:
                raise IdentityError(str(error), 422) from None
        try:
            previous, stored = self._store.set_stage(project, stage, promotion_only, actor.name)
        except ProjectNotFoundError as error:
            raise IdentityError(str(error), 404) from None
        except ProxyCacheConflictError as error:
            # A proxy cache brings upstream content in without any promotion.
            message = (
                f"project {project} is a proxy cache of {error.url} and cannot be"
                " promotion-only; remove its proxy configuration first (DELETE"
                f" /api/v1/projects/{project}/proxy or `moorage project proxy-remove"
                f" {project}`), or promote into another project"
            )
            self._events.publish(
                AccessEvent(
                    "policy:denied",
                    actor,
                    "denied",
                    project,
                    f"project:{project}",
                    {"point": "configure:stage", "policy": "proxy-cache", "reason": message},
                )
            )
            raise IdentityError(message, 409) from None
        # Upload sessions opened before are refused at their next step (PromotionOnlyPolicy
        # runs at every step), so clearing this worker's cache is all a switch needs here.
        self._stages.clear()
        self._emit(
            "promotion-stage:update",
            actor,
            project,
            stage=stage,
            promotion_only=promotion_only,
            previous={"stage": previous.stage, "promotion_only": previous.promotion_only},
        )
        return _stage_view(stored)

    def cached_stage(self, project: str) -> tuple[bool, StageRecord | None]:
        hit, value = self._stages.peek(project)
        return hit, value

    def stage_of(self, project: str) -> StageRecord | None:
        """The project's stage, cached for 2 s (None: no such project). Blocking."""

        def load() -> StageRecord | None:
            try:
                return self._store.stage(project)
            except ProjectNotFoundError:
                return None

        return self._stages.get_or_load(project, load)

    def stages_of(self, projects: Sequence[str]) -> dict[str, StageRecord]:
        """The stages of those named projects that have one (for listings)."""
        return self._store.stages(projects)

    def gates(self, project: str) -> GatesView:
        try:
            return _gates_view(self._store.gates(project))
        except ProjectNotFoundError as error:
            raise IdentityError(str(error), 404) from None

    def set_gates(self, actor: Actor, project: str, given: Sequence[dict[str, Any]]) -> GatesView:
        try:
            gates = validate_gates([make_gate(fields) for fields in given])
        except GateError as error:
            raise IdentityError(str(error), 422) from None
        described = [gate.describe() for gate in gates]
        try:
            previous, stored = self._store.set_gates(project, described, actor.name)
        except ProjectNotFoundError as error:
            raise IdentityError(str(error), 404) from None
        self._emit(
            "promotion-gates:update", actor, project, gates=described, previous=previous.gates
        )
        return _gates_view(stored)

    def approve(
        self, actor: Actor, subject: Subject, project: str, digest: str, comment: str | None
    ) -> tuple[ApprovalRecord, bool]:
        """Record that `subject` approves promoting `digest` into `project`.

        Only users approve (a robot stands for no person). Whether an approval counts
        is decided when promoting, by the approval gate's role.
        """
        if subject.kind != "user" or subject.id is None:
            raise IdentityError("only users approve promotions", 403)
        try:
            digest = str(Digest.parse(digest))
        except RegistryError:
            raise IdentityError(f"{digest[:140]!r} is not a digest", 422) from None
        if comment is not None and (
            len(comment) > MAX_COMMENT_LENGTH or any(ord(c) < 32 for c in comment)
        ):
            raise IdentityError(f"a comment is at most {MAX_COMMENT_LENGTH} printable characters")
        try:
            approval, created = self._store.add_approval(
                project, digest, subject.id, subject.name, comment
            )
        except ProjectNotFoundError as error:
            raise IdentityError(str(error), 404) from None
        if created:
            self._emit("promotion:approve", actor, project, digest=digest, comment=comment)
        return approval, created

    def approvals(self, project: str, digest: str) -> list[ApprovalRecord]:
        try:
            return self._store.approvals(project, digest)
        except ProjectNotFoundError as error:
            raise IdentityError(str(error), 404) from None


class PromotionOnlyPolicy:
    """The checks at push:manifest and push:blob that keep promotion-only projects so.

    push:blob is decided at every step of an upload session (`UploadService`), so a session
    opened before its project became promotion-only is refused at its next step.
    """

    def __init__(
        self,
        stages: StageService,
        identity: IdentityService,
        threads: Threads,
        events: EventBus,
        *,
        break_glass: bool,
    ) -> None:
        self._stages = stages
        self._identity = identity
        self._threads = threads
        self._events = events
        self._break_glass = break_glass

    def register(self, policies: PolicySet) -> None:
        policies.register(DecisionPoint.PUSH_MANIFEST, self.check_push)
        policies.register(DecisionPoint.PUSH_BLOB, self.check_blob)

    async def _promotion_only(self, project: str) -> bool:
        hit, record = self._stages.cached_stage(project)
        if not hit:
            record = await self._threads.run(self._stages.stage_of, project)
        return record is not None and record.promotion_only

    async def _is_admin(self, actor: Actor) -> bool:
        if actor.kind != "user" or actor.id is None:
            return False
        subject = Subject("user", actor.id, actor.name)
        access = await self._threads.run(self._identity.access_of, subject)
        return decide_system(access, SystemAction.ADMIN)

    async def _decide(self, context: PolicyContext, *, audit: bool) -> Decision:
        if context.actor.kind == "system":
            return Allow()  # the registry's own writes: SBOMs, promotion records
        project = project_of(context.repository)
        if not await self._promotion_only(project):
            return Allow()
        if self._break_glass and await self._is_admin(context.actor):
            if audit:
                resource = context.repository + (
                    f":{context.tag}" if context.tag else f"@{context.digest}"
                )
                self._events.publish(
                    AccessEvent(
                        "promotion:break-glass",
                        context.actor,
                        "success",
                        project,
                        resource,
                        {"digest": context.digest, "tag": context.tag},
                    )
                )
            return Allow()
        return Deny(promotion_path_hint(project), POLICY_NAME)

    async def check_push(self, context: PolicyContext) -> Decision:
        return await self._decide(context, audit=True)

    async def check_blob(self, context: PolicyContext) -> Decision:
        return await self._decide(context, audit=False)


# ---------------------------------------------------------------------------- promotion


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
            registry=registry, uploads=uploads, metadata=metadata, tokens=tokens, threads=threads
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
        record_digest = await self._records.attach(destination.repository, top, signed, source, now)
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
        try:
            record = await self._registry.link_manifests(
                links, top, actor, lambda guarded: self._store.commit(guarded, new)
            )
        except BaseException:
            await self._records.detach(destination.repository, record_digest)
            raise
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
