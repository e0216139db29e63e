"""Stages, promotion gates, approvals and promotions.

- `GET/PUT /projects/{project}/stage`: the stage label and the promotion-only flag;
- `GET/PUT /projects/{project}/promotion-gates`: the gates a promotion into the project passes;
- `GET/POST /projects/{project}/promotion-approvals`: approvals of a digest for the project;
- `POST /promotions`: promote (or, with `dryRun`, only evaluate the gates);
- `GET /promotions?project=`: the promotion history, newest first, with each signed record;
- `GET /promotions/keys`: the public keys that verify promotion records (no sign-in needed).

Reading needs `read-project` on the project; stages and gates are set by system
administrators (the controls that protect a stage are not set by those they gate). Promoting
needs `pull` on the source and `promote` on the destination, decided here by the same
authorizer as every route.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import Field

from moorage.domain.access import Action
from moorage.domain.events import AccessEvent
from moorage.domain.names import project_of
from moorage.domain.promotion import (
    MAX_APPROVALS_NEEDED,
    MAX_GATES,
    MAX_LABEL_LENGTH,
    MAX_MAX_DAYS,
    MAX_MIN_HOURS,
    DestinationReference,
    Gate,
    GateResult,
    SourceReference,
)
from moorage.http.access import (
    ADMIN,
    AUTHENTICATED,
    PUBLIC,
    PULL,
    AccessDenied,
    Permission,
    Scope,
    may,
    project_permission,
)
from moorage.http.api.common import DIGEST_PATTERN, PRINTABLE_PATTERN
from moorage.http.api.framework import (
    MAX_PAGE_SIZE,
    ApiModel,
    ApiRoute,
    Call,
    Page,
    QueryModel,
    Reply,
    RequestModel,
    UtcDateTime,
    page_of,
)
from moorage.http.errors import ApiProblem
from moorage.http.state import IAM
from moorage.metadata.staging.promotion_store import ApprovalRecord, PromotionRecord
from moorage.services.staging.promotion import (
    GatesView,
    PromotionOutcome,
    PromotionRefusedError,
    StageView,
)

TAG = "promotion"
STAGE_PATH = "/api/v1/projects/{project}/stage"
GATES_PATH = "/api/v1/projects/{project}/promotion-gates"
APPROVALS_PATH = "/api/v1/projects/{project}/promotion-approvals"
PROMOTIONS_PATH = "/api/v1/promotions"
READ_PROJECT = project_permission(Action.READ_PROJECT)
READ_PROJECT_QUERY = Permission(Scope.PROJECT_QUERY, Action.READ_PROJECT)
PROMOTE = Permission(Scope.REPOSITORY, Action.PROMOTE)

STAGE_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,31}$"
GATE_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
Stage = Annotated[str, Field(pattern=STAGE_PATTERN, max_length=32)]
Digest = Annotated[str, Field(pattern=DIGEST_PATTERN, max_length=135)]
GateKindName = Literal["scan", "signature", "source-stage", "age", "label", "approval"]
Severity = Literal["Low", "Medium", "High", "Critical"]


class StageSettings(ApiModel):
    project: str
    stage: str | None
    promotion_only: bool
    stage_order: list[str] = Field(description="the configured order of stages")
    updated_by: str | None
    updated_at: UtcDateTime | None


class StageInput(RequestModel):
    stage: Stage | None = Field(None, description="free-form; ordered by the `stages` setting")
    promotion_only: bool = Field(
        False, description="refuse every direct push: images arrive only by promotion"
    )


class GateFields(ApiModel):
    kind: GateKindName
    name: str
    severity: str | None = None
    min_hours: int | None = None
    max_days: int | None = None
    key: str | None = None
    value: str | None = None
    count: int | None = None
    role: str | None = None
    allow_requester: bool | None = None
    replace_source_policy: bool | None = None


class GateInput(RequestModel):
    """One gate: `kind` and the fields of that kind (others are refused)."""

    kind: GateKindName
    name: Annotated[str, Field(pattern=GATE_NAME_PATTERN, max_length=64)] | None = Field(
        None, description="unique within the project; default: the kind"
    )
    severity: Severity | None = Field(
        None, description="scan: the threshold (default: the project's vulnerability policy)"
    )
    min_hours: Annotated[int, Field(ge=0, le=MAX_MIN_HOURS)] | None = Field(
        None, description="age: at least this long in the source repository"
    )
    max_days: Annotated[int, Field(ge=1, le=MAX_MAX_DAYS)] | None = Field(
        None, description="age: at most this long in the source repository"
    )
    key: Annotated[str, Field(min_length=1, max_length=255)] | None = Field(
        None, description="label: an annotation of the manifest or label of its configuration"
    )
    value: Annotated[str, Field(pattern=PRINTABLE_PATTERN, max_length=MAX_LABEL_LENGTH)] | None = (
        Field(None, description="label: the value it must have (default: any)")
    )
    count: Annotated[int, Field(ge=1, le=MAX_APPROVALS_NEEDED)] | None = Field(
        None, description="approval: distinct approvers needed"
    )
    role: Annotated[str, Field(pattern=GATE_NAME_PATTERN, max_length=64)] | None = Field(
        None, description="approval: the role approvers hold in this project"
    )
    allow_requester: bool = Field(
        False, description="approval: the requester's own approval counts too"
    )
    replace_source_policy: bool = Field(
        False,
        description="scan, signature: this gate re-judges in place of the source project's own"
        " pull policy (vulnerability policy, enforced trust rule), which applies otherwise",
    )


class GatesInput(RequestModel):
    gates: Annotated[list[GateInput], Field(max_length=MAX_GATES)]


class PromotionGates(ApiModel):
    project: str
    gates: list[GateFields]
    updated_by: str | None
    updated_at: UtcDateTime | None


class ApprovalInput(RequestModel):
    digest: Digest
    comment: Annotated[str, Field(pattern=PRINTABLE_PATTERN, max_length=1000)] | None = None


class ApprovalQuery(QueryModel):
    digest: Digest


class Approval(ApiModel):
    id: int
    project: str
    digest: str
    approver: str
    comment: str | None
    created_at: UtcDateTime


class PromotionInput(RequestModel):
    source: Annotated[str, Field(min_length=1, max_length=400)] = Field(
        description="`project/repo:tag` or `project/repo@sha256:...`"
    )
    destination: Annotated[str, Field(min_length=1, max_length=400)] = Field(
        description="`project/repo:tag`"
    )
    dry_run: bool = Field(False, description="evaluate the gates only; change nothing")


class GateOutcome(ApiModel):
    name: str
    kind: str
    passed: bool
    reason: str


class Promotion(ApiModel):
    id: int | None = Field(description="None for a dry run")
    dry_run: bool
    source: str
    destination: str
    digest: str
    media_type: str | None
    requester: str | None
    gates: list[GateOutcome]
    record_digest: str | None = Field(
        description="the promotion record attached to the image as a referrer"
    )
    envelope: dict[str, Any] | None = Field(
        description="the DSSE envelope: an in-toto statement signed with the registry's key"
    )
    created_at: UtcDateTime | None


class PromotionQuery(QueryModel):
    project: str | None = Field(None, max_length=255, description="the destination project")
    limit: int = Field(50, ge=1, le=MAX_PAGE_SIZE)
    before: int | None = Field(None, ge=1, description="continue below this id (Link header)")


class SigningKey(ApiModel):
    kid: str
    algorithm: str
    public_key_pem: str


def _stage(view: StageView, order: list[str]) -> StageSettings:
    return StageSettings(
        project=view.project,
        stage=view.stage,
        promotion_only=view.promotion_only,
        stage_order=order,
        updated_by=view.updated_by,
        updated_at=view.updated_at,
    )


def _gate(gate: Gate) -> GateFields:
    return GateFields.model_validate(gate.describe())


def _gates(view: GatesView) -> PromotionGates:
    return PromotionGates(
        project=view.project,
        gates=[_gate(gate) for gate in view.gates],
        updated_by=view.updated_by,
        updated_at=view.updated_at,
    )


def _approval(record: ApprovalRecord) -> Approval:
    return Approval(
        id=record.id,
        project=record.project,
        digest=record.digest,
        approver=record.approver,
        comment=record.comment,
        created_at=record.created_at,
    )


def _outcome(result: GateResult) -> GateOutcome:
    return GateOutcome.model_validate(result.as_dict())


def _promotion(record: PromotionRecord) -> Promotion:
    return Promotion(
        id=record.id,
        dry_run=False,
        source=f"{record.source_repository}{'@' if ':' in record.source_reference else ':'}"
        f"{record.source_reference}",
        destination=f"{record.destination_repository}:{record.tag}",
        digest=record.digest,
        media_type=record.media_type,
        requester=record.requester,
        gates=[GateOutcome.model_validate(gate) for gate in record.gates],
        record_digest=record.record_digest,
        envelope=json.loads(record.envelope),
        created_at=record.created_at,
    )


# -- stage and gates


async def get_stage(call: Call) -> StageSettings:
    view = await call.run(call.iam.stages.stage, call.project)
    return _stage(view, call.iam.stage_order)


async def put_stage(call: Call) -> StageSettings:
    body = call.body(StageInput)
    view = await call.run(
        call.iam.stages.set_stage,
        call.actor,
        call.param("project"),
        body.stage,
        body.promotion_only,
    )
    return _stage(view, call.iam.stage_order)


async def get_gates(call: Call) -> PromotionGates:
    return _gates(await call.run(call.iam.stages.gates, call.project))


async def put_gates(call: Call) -> PromotionGates:
    body = call.body(GatesInput)
    given = [gate.model_dump(exclude_none=True) for gate in body.gates]
    view = await call.run(call.iam.stages.set_gates, call.actor, call.param("project"), given)
    return _gates(view)


# -- approvals


async def list_approvals(call: Call) -> list[Approval]:
    digest = call.query(ApprovalQuery).digest
    records = await call.run(call.iam.stages.approvals, call.project, digest)
    return [_approval(record) for record in records]


async def approve(call: Call) -> Approval | Reply:
    body = call.body(ApprovalInput)
    record, created = await call.run(
        call.iam.stages.approve, call.actor, call.subject, call.project, body.digest, body.comment
    )
    return _approval(record) if created else Reply(_approval(record), 200)


# -- promotions


async def _authorize(
    call: Call, source: SourceReference, destination: DestinationReference, *, dry_run: bool
) -> None:
    for permission, repository, action in (
        (PULL, source.repository, "pull"),
        (PROMOTE, destination.repository, "promote"),
    ):
        if not await may(call.request, permission, repository):
            message = f"{action} on {repository} is not allowed"
            call.iam.events.publish(
                AccessEvent(
                    "access:denied",
                    call.actor,
                    "denied",
                    project_of(repository),
                    f"POST {PROMOTIONS_PATH}",
                    {"action": action, "reason": message},
                )
            )
            if not dry_run:  # a dry run only asks
                call.iam.promotions.refused(call.actor, source, destination, message)
            raise AccessDenied(message, challenge=False)


def _refused(error: PromotionRefusedError) -> ApiProblem:
    return ApiProblem(
        422,
        str(error)[:4000],
        [{"field": f"gates.{result.name}", "message": result.reason} for result in error.failing],
    )


def _dry_run(outcome: PromotionOutcome) -> Promotion:
    return Promotion(
        id=None,
        dry_run=True,
        source=str(outcome.source),
        destination=str(outcome.destination),
        digest=outcome.digest,
        media_type=None,
        requester=None,
        gates=[_outcome(result) for result in outcome.results],
        record_digest=None,
        envelope=None,
        created_at=None,
    )


async def promote(call: Call) -> Promotion | Reply:
    body = call.body(PromotionInput)
    service = call.iam.promotions
    source, destination = service.parse(body.source, body.destination)
    await _authorize(call, source, destination, dry_run=body.dry_run)
    try:
        outcome = await service.promote(call.actor, source, destination, dry_run=body.dry_run)
    except PromotionRefusedError as error:
        raise _refused(error) from None
    if outcome.record is None:
        return Reply(_dry_run(outcome), 200)
    promotion = _promotion(outcome.record)
    return promotion if outcome.created else Reply(promotion, 200)


async def list_promotions(call: Call) -> Page:
    query = call.query(PromotionQuery)
    records = await call.run(
        call.iam.promotions.promotions, call.queried_project, query.before, query.limit
    )
    items = [_promotion(record) for record in records]
    cursor: dict[str, str] = {"limit": str(query.limit)}
    if call.queried_project is not None:
        cursor["project"] = call.queried_project
    return page_of(items, query.limit, lambda last: cursor | {"before": str(last.id)})


async def signing_keys(call: Call) -> list[SigningKey]:
    keys = await call.request.app[IAM].threads.run(call.request.app[IAM].promotions.signing_keys)
    return [
        SigningKey(kid=key.kid, algorithm=key.algorithm, public_key_pem=key.public_key_pem)
        for key in keys
    ]


ROUTES: tuple[ApiRoute, ...] = (
    ApiRoute(
        "GET",
        STAGE_PATH,
        get_stage,
        READ_PROJECT,
        "The project's stage and whether it accepts only promotions",
        TAG,
        response=StageSettings,
    ),
    ApiRoute(
        "PUT",
        STAGE_PATH,
        put_stage,
        ADMIN,
        "Set the project's stage and promotion-only flag",
        TAG,
        body=StageInput,
        response=StageSettings,
        errors=(404,),
    ),
    ApiRoute(
        "GET",
        GATES_PATH,
        get_gates,
        READ_PROJECT,
        "The gates a promotion into the project must pass",
        TAG,
        response=PromotionGates,
    ),
    ApiRoute(
        "PUT",
        GATES_PATH,
        put_gates,
        ADMIN,
        "Replace the project's promotion gates (an empty list removes them)",
        TAG,
        body=GatesInput,
        response=PromotionGates,
        errors=(404,),
    ),
    ApiRoute(
        "GET",
        APPROVALS_PATH,
        list_approvals,
        READ_PROJECT,
        "Approvals recorded for promoting a digest into the project",
        TAG,
        query=ApprovalQuery,
        response=Approval,
        many=True,
    ),
    ApiRoute(
        "POST",
        APPROVALS_PATH,
        approve,
        READ_PROJECT,
        "Approve promoting a digest into the project (counted by approval gates whose role"
        " the approver holds)",
        TAG,
        body=ApprovalInput,
        response=Approval,
        status=201,
        also=(200,),
    ),
    ApiRoute(
        "POST",
        PROMOTIONS_PATH,
        promote,
        AUTHENTICATED,
        "Promote an image: needs pull on the source and promote on the destination; every"
        " failing gate is listed in a 422 reply",
        TAG,
        body=PromotionInput,
        response=Promotion,
        status=201,
        also=(200,),
        errors=(404, 409),
    ),
    ApiRoute(
        "GET",
        PROMOTIONS_PATH,
        list_promotions,
        READ_PROJECT_QUERY,
        "Promotions into a project (all of them for administrators), newest first",
        TAG,
        query=PromotionQuery,
        response=Promotion,
        many=True,
        paged=True,
    ),
    ApiRoute(
        "GET",
        f"{PROMOTIONS_PATH}/keys",
        signing_keys,
        PUBLIC,
        "The public keys (PEM) that verify promotion records' DSSE signatures",
        TAG,
        response=SigningKey,
        many=True,
    ),
)
