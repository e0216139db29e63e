"""The audit log (newest first, paged backwards by entry id) and signing-key rotation."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, Field

from moorage.domain.access import Action
from moorage.http.access import ADMIN, Permission, Scope, project_permission
from moorage.http.api.common import PRINTABLE_PATTERN, ProjectName
from moorage.http.api.framework import (
    MAX_ID,
    MAX_PAGE_SIZE,
    ApiModel,
    ApiRoute,
    Call,
    Page,
    QueryModel,
    UtcDateTime,
    page_of,
)
from moorage.metadata.access.iam_store import AuditRecord
from moorage.services.access.audit import AuditQuery

AUDIT = "audit"
# Admins read everything; with ?project= anyone who may read that project's audit log.
READ_AUDIT_QUERY = Permission(Scope.PROJECT_QUERY, Action.READ_AUDIT)


def _utc(moment: datetime) -> datetime:
    # A zone-less time is taken as UTC; a time that has no UTC equivalent is refused.
    try:
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except OverflowError:
        raise ValueError("the time is out of range") from None


Moment = Annotated[datetime, AfterValidator(_utc)]
Filter = Annotated[str, Field(pattern=PRINTABLE_PATTERN, max_length=255)]


class AuditFilter(QueryModel):
    actor: Filter | None = Field(None, description="who acted (user or robot name)")
    action: Filter | None = Field(None, description="e.g. user:create, manifest:pushed")
    since: Moment | None = Field(None, description="entries at or after this time (ISO 8601)")
    until: Moment | None = Field(None, description="entries before this time (ISO 8601)")
    before: int | None = Field(
        None, ge=1, le=MAX_ID, description="entries older than this id (from the Link header)"
    )
    limit: int = Field(50, ge=1, le=MAX_PAGE_SIZE, description="page size (at most 100)")


class AuditSearch(AuditFilter):
    project: ProjectName | None = Field(
        None, description="one project (required unless you are an administrator)"
    )


class AuditEntry(ApiModel):
    id: int
    at: UtcDateTime
    actor_kind: str
    actor: str
    client_ip: str | None
    certificate: str | None
    action: str
    project: str | None
    resource: str | None
    result: str
    details: dict[str, Any] | None
    prev_hash: str
    hash: str


class SigningKey(ApiModel):
    kid: str = Field(description="the new key's id; tokens signed before keep verifying")


def entry_view(record: AuditRecord) -> AuditEntry:
    return AuditEntry.model_validate({**record.as_dict(), "at": record.at})


async def _search(call: Call, query: AuditFilter, project: str | None) -> Page:
    search = AuditQuery(
        project=project,
        actor=query.actor,
        action=query.action,
        since=query.since,
        until=query.until,
        before_id=query.before,
        limit=query.limit,
    )
    records = await call.run(call.iam.audit.search, search)
    following = query.model_dump(mode="json", by_alias=True, exclude_none=True)

    def cursor(last: AuditEntry) -> dict[str, str]:
        return {**{key: str(value) for key, value in following.items()}, "before": str(last.id)}

    return page_of([entry_view(record) for record in records], query.limit, cursor)


async def search_audit_log(call: Call) -> Page:
    # The project is the one the access middleware authorized, never a second reading of it.
    return await _search(call, call.query(AuditSearch), call.queried_project)


async def search_project_audit_log(call: Call) -> Page:
    return await _search(call, call.query(AuditFilter), call.project)


async def rotate_signing_key(call: Call) -> SigningKey:
    kid = await call.run(call.iam.tokens.rotate_key, call.iam.events, call.actor)
    return SigningKey(kid=kid)


ROUTES: tuple[ApiRoute, ...] = (
    ApiRoute(
        "GET",
        "/api/v1/audit-logs",
        search_audit_log,
        READ_AUDIT_QUERY,
        "Search the audit log, newest first",
        AUDIT,
        query=AuditSearch,
        response=AuditEntry,
        many=True,
        paged=True,
    ),
    ApiRoute(
        "GET",
        "/api/v1/projects/{project}/audit-logs",
        search_project_audit_log,
        project_permission(Action.READ_AUDIT),
        "Search one project's audit log, newest first",
        AUDIT,
        query=AuditFilter,
        response=AuditEntry,
        many=True,
        paged=True,
    ),
    ApiRoute(
        "POST",
        "/api/v1/signing-keys/rotate",
        rotate_signing_key,
        ADMIN,
        "Sign tokens and audit checkpoints with a new key from now on",
        AUDIT,
        response=SigningKey,
    ),
)
