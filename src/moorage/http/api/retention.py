"""Retention: a project's policy (rules and schedule), dry and real runs, their history and
their per-artifact decisions. See `moorage.domain.retention` for what the rules mean.

Writing the policy and starting runs need `manage-policies` (a policy decides deletions, and a
scheduled run deletes what it says); reading the policy needs `read-project`, the history and
its decisions `read-audit`; the list of every project's policy is for administrators.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from moorage.domain.access import MAX_PATTERN_LENGTH, Action
from moorage.domain.immutability import MAX_TAG_PATTERN_LENGTH
from moorage.domain.replication import MAX_CRON_LENGTH
from moorage.domain.retention import MAX_COUNT, MAX_DAYS, MAX_PATTERNS, MAX_RULES
from moorage.http.access import ADMIN, project_permission
from moorage.http.api.common import GLOB_PATTERN
from moorage.http.api.framework import (
    MAX_ID,
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
from moorage.http.state import RETENTION
from moorage.metadata.lifecycle.retention_store import DecisionRecord, PolicyRecord, RunRecord
from moorage.services.lifecycle.retention import MAX_DECISIONS_PAGE, RetentionService

TAG = "retention"
POLICY_PATH = "/api/v1/projects/{project}/retention-policy"
RUNS_PATH = "/api/v1/projects/{project}/retention-runs"
RUN_PATH = f"{RUNS_PATH}/{{run:[0-9]+}}"
MANAGE_POLICIES = project_permission(Action.MANAGE_POLICIES)
READ_PROJECT = project_permission(Action.READ_PROJECT)
READ_AUDIT = project_permission(Action.READ_AUDIT)

Criterion = Literal[
    "latestPushed", "latestPulled", "pushedWithinDays", "pulledWithinDays", "always"
]
Outcome = Literal["kept", "removed", "would-remove", "refused", "skipped", "failed"]
RepositoryGlob = Annotated[
    str,
    Field(
        pattern=GLOB_PATTERN,
        max_length=MAX_PATTERN_LENGTH,
        description="repositories, relative to the project: `*` within a path segment, `**`"
        " across segments, `?` one character",
    ),
]
TagGlob = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z0-9._*?-]+$",
        max_length=MAX_TAG_PATTERN_LENGTH,
        description="tags: `*` any run of characters, `?` one character",
    ),
]


class RetentionRule(RequestModel):
    """Selects artifacts (repositories, then tags and/or untagged) and retains those that meet
    the criterion: `count` for latestPushed/latestPulled, `days` for *WithinDays, neither for
    always. Artifacts with immutable tags or promoted into a later stage stay unless
    `removeProtected`."""

    criterion: Criterion
    count: int | None = Field(None, ge=1, le=MAX_COUNT)
    days: int | None = Field(None, ge=1, le=MAX_DAYS)
    repositories: Annotated[list[RepositoryGlob], Field(max_length=MAX_PATTERNS)] = ["**"]
    exclude_repositories: Annotated[list[RepositoryGlob], Field(max_length=MAX_PATTERNS)] = []
    tags: Annotated[list[TagGlob], Field(max_length=MAX_PATTERNS)] = ["*"]
    exclude_tags: Annotated[list[TagGlob], Field(max_length=MAX_PATTERNS)] = []
    untagged: bool = False
    remove_protected: bool = False


class RetentionPolicyInput(RequestModel):
    """The project's complete policy; rules combine with OR. `cron` (five fields, UTC) runs it
    on a schedule."""

    rules: Annotated[list[RetentionRule], Field(min_length=1, max_length=MAX_RULES)]
    cron: str | None = Field(None, min_length=9, max_length=MAX_CRON_LENGTH)
    enabled: bool = True


class RetentionRuleView(ApiModel):
    criterion: Criterion
    count: int | None = None
    days: int | None = None
    repositories: list[str]
    exclude_repositories: list[str]
    tags: list[str]
    exclude_tags: list[str]
    untagged: bool
    remove_protected: bool


class RetentionPolicy(ApiModel):
    project: str
    rules: list[RetentionRuleView]
    cron: str | None
    enabled: bool
    next_run_at: UtcDateTime | None
    updated_by: str | None
    updated_at: UtcDateTime


class RetentionRunInput(RequestModel):
    """A dry run (the default) reports what a real run would delete, and deletes nothing."""

    dry_run: bool = True


class RetentionRun(ApiModel):
    id: int
    project: str
    dry_run: bool
    trigger: Literal["manual", "schedule"]
    requested_by: str
    status: Literal["running", "succeeded", "partial", "failed"]
    error: str | None
    artifacts: int
    kept: int
    removed: int = Field(description="removed, or in a dry run: would be removed")
    failed: int
    started_at: UtcDateTime
    finished_at: UtcDateTime | None


class RetentionDecision(ApiModel):
    id: int
    repository: str
    digest: str
    tags: list[str]
    outcome: Outcome
    reason: str = Field(description="the rule or protection that keeps it, or why it goes")
    rule: int | None = Field(None, description="the number of the rule that keeps it")


class RunsQuery(QueryModel):
    limit: int = Field(20, ge=1, le=MAX_PAGE_SIZE, description="at most 100, newest first")
    before: int | None = Field(None, ge=1, le=MAX_ID, description="runs older than this id")


class DecisionsQuery(QueryModel):
    limit: int = Field(100, ge=1, le=MAX_DECISIONS_PAGE)
    after: int | None = Field(None, ge=0, le=MAX_ID, description="decisions after this id")
    outcome: Outcome | None = None


def _service(call: Call) -> RetentionService:
    return call.request.app[RETENTION]


def policy_view(record: PolicyRecord) -> RetentionPolicy:
    return RetentionPolicy.model_validate(
        {
            "project": record.project,
            "rules": [RetentionRuleView.model_validate(rule) for rule in record.rules],
            "cron": record.cron,
            "enabled": record.enabled,
            "next_run_at": record.next_run_at,
            "updated_by": record.updated_by,
            "updated_at": record.updated_at,
        }
    )


def run_view(record: RunRecord) -> RetentionRun:
    return RetentionRun.model_validate(
        {
            "id": record.id,
            "project": record.project,
            "dry_run": record.dry_run,
            "trigger": record.trigger,
            "requested_by": record.requested_by,
            "status": record.status,
            "error": record.error,
            "artifacts": record.artifacts,
            "kept": record.kept,
            "removed": record.removed,
            "failed": record.failed,
            "started_at": record.started_at,
            "finished_at": record.finished_at,
        }
    )


def decision_view(record: DecisionRecord) -> RetentionDecision:
    return RetentionDecision.model_validate(
        {
            "id": record.id,
            "repository": record.repository,
            "digest": record.digest,
            "tags": record.tags,
            "outcome": record.outcome,
            "reason": record.reason,
            "rule": record.rule,
        }
    )


async def get_retention_policy(call: Call) -> RetentionPolicy:
    record = await _service(call).policy(call.project)
    if record is None:
        raise ApiProblem(404, f"project {call.project} has no retention policy")
    return policy_view(record)


async def put_retention_policy(call: Call) -> RetentionPolicy | Reply:
    body = call.body(RetentionPolicyInput)
    rules = [rule.model_dump(by_alias=True, exclude_none=True) for rule in body.rules]
    record, created = await _service(call).put_policy(
        call.actor, call.project, rules, body.cron, body.enabled
    )
    return Reply(policy_view(record), 201) if created else policy_view(record)


async def delete_retention_policy(call: Call) -> None:
    if not await _service(call).delete_policy(call.actor, call.project):
        raise ApiProblem(404, f"project {call.project} has no retention policy")


async def list_retention_policies(call: Call) -> list[RetentionPolicy]:
    return [policy_view(record) for record in await _service(call).policies()]


async def start_retention_run(call: Call) -> RetentionRun:
    body = call.body(RetentionRunInput)
    record = await _service(call).run(call.actor, call.project, dry_run=body.dry_run)
    return run_view(record)


async def list_retention_runs(call: Call) -> list[RetentionRun]:
    query = call.query(RunsQuery)
    records = await _service(call).runs(call.project, query.limit, query.before)
    return [run_view(record) for record in records]


async def _own_run(call: Call) -> RunRecord:
    run_id = call.id_param("run")
    record = await _service(call).run_record(run_id)
    if record is None or record.project != call.project:
        raise ApiProblem(404, f"retention run {run_id} not found")
    return record


async def get_retention_run(call: Call) -> RetentionRun:
    return run_view(await _own_run(call))


async def list_retention_decisions(call: Call) -> Page:
    query = call.query(DecisionsQuery)
    run = await _own_run(call)
    records = await _service(call).decisions(
        run.id, after=query.after, limit=query.limit, outcome=query.outcome
    )

    def cursor(item: RetentionDecision) -> dict[str, str]:
        following = {"limit": str(query.limit), "after": str(item.id)}
        if query.outcome is not None:
            following["outcome"] = query.outcome
        return following

    return page_of([decision_view(record) for record in records], query.limit, cursor)


ROUTES: tuple[ApiRoute, ...] = (
    ApiRoute(
        "GET",
        "/api/v1/retention-policies",
        list_retention_policies,
        ADMIN,
        "Every project's retention policy",
        TAG,
        response=RetentionPolicy,
        many=True,
    ),
    ApiRoute(
        "GET",
        POLICY_PATH,
        get_retention_policy,
        READ_PROJECT,
        "The project's retention policy",
        TAG,
        response=RetentionPolicy,
    ),
    ApiRoute(
        "PUT",
        POLICY_PATH,
        put_retention_policy,
        MANAGE_POLICIES,
        "Create or replace the project's retention policy",
        TAG,
        body=RetentionPolicyInput,
        response=RetentionPolicy,
        also=(201,),
    ),
    ApiRoute(
        "DELETE",
        POLICY_PATH,
        delete_retention_policy,
        MANAGE_POLICIES,
        "Remove the project's retention policy (its history stays)",
        TAG,
        status=204,
    ),
    ApiRoute(
        "POST",
        RUNS_PATH,
        start_retention_run,
        MANAGE_POLICIES,
        "Run the project's retention policy now (dry run unless dryRun is false); answers"
        " when the run has finished",
        TAG,
        body=RetentionRunInput,
        response=RetentionRun,
        status=201,
        errors=(409,),
    ),
    ApiRoute(
        "GET",
        RUNS_PATH,
        list_retention_runs,
        READ_AUDIT,
        "The project's retention runs, newest first",
        TAG,
        query=RunsQuery,
        response=RetentionRun,
        many=True,
    ),
    ApiRoute(
        "GET",
        RUN_PATH,
        get_retention_run,
        READ_AUDIT,
        "One retention run",
        TAG,
        response=RetentionRun,
    ),
    ApiRoute(
        "GET",
        f"{RUN_PATH}/decisions",
        list_retention_decisions,
        READ_AUDIT,
        "A run's decision for every artifact: what goes, and which rule keeps what stays",
        TAG,
        query=DecisionsQuery,
        response=RetentionDecision,
        many=True,
        paged=True,
    ),
)
