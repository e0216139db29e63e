"""Stages and promotion-only projects.

- `StageService` manages each project's stage label, its promotion-only flag, its gates and the
  approvals recorded for its promotions; every change is audited.
- `PromotionOnlyPolicy` refuses direct pushes (manifests and every step of a blob upload) into
  promotion-only projects, whoever pushes; with `promotion_break_glass` on, a system
  administrator's manifest push is let through and audited as `promotion:break-glass`. The
  registry's own writes (SBOMs and promotion records, by the system actor) are not pushes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from moorage.domain.access import SystemAction, decide_system
from moorage.domain.digest import Digest
from moorage.domain.errors import RegistryError
from moorage.domain.events import AccessEvent, Actor, policy_denied
from moorage.domain.names import project_of
from moorage.domain.policy import Allow, Decision, DecisionPoint, Deny, PolicyContext, PolicySet
from moorage.domain.promotion import (
    Gate,
    GateError,
    GateKind,
    StageError,
    make_gate,
    validate_gates,
    validate_stage,
)
from moorage.metadata.staging.promotion_store import (
    ApprovalRecord,
    GatesRecord,
    ProjectNotFoundError,
    PromotionStore,
    ProxyCacheConflictError,
    StageRecord,
)
from moorage.services.access.identity import IdentityService, Subject
from moorage.services.cache import TtlCache
from moorage.services.errors import IdentityError
from moorage.services.events import EventBus
from moorage.services.threads import Threads

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
        self._stages = TtlCache(STAGE_CACHE_SECONDS, name="stages")

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
                policy_denied(
                    actor,
                    project,
                    f"project:{project}",
                    point="configure:stage",
                    policy="proxy-cache",
                    reason=message,
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
