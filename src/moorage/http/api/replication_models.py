"""Request and reply models of the replication API (`moorage.http.api.replication`)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from moorage.domain.access import MAX_PATTERN_LENGTH
from moorage.domain.proxy import MAX_PEM_BYTES, MAX_URL_LENGTH
from moorage.domain.replication import (
    MAX_CRON_LENGTH,
    MAX_INTERVAL_SECONDS,
    MAX_PATTERNS,
    MAX_STRIP_SEGMENTS,
    MAX_TAG_PATTERN_LENGTH,
    MIN_INTERVAL_SECONDS,
)
from moorage.http.api.framework import (
    MAX_ID,
    MAX_PAGE_SIZE,
    ApiModel,
    QueryModel,
    RequestModel,
    UtcDateTime,
)
from moorage.services.distribution.replication import MAX_TIMEOUT_SECONDS

Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
Secret = Annotated[str, Field(min_length=1, max_length=4096)]
RepositoryGlob = Annotated[
    str, Field(min_length=1, max_length=MAX_PATTERN_LENGTH, pattern=r"^[a-z0-9._/*?-]+$")
]
TagGlob = Annotated[
    str, Field(min_length=1, max_length=MAX_TAG_PATTERN_LENGTH, pattern=r"^[A-Za-z0-9._*?-]+$")
]


class RegistryEndpoint(ApiModel):
    id: int
    name: str
    url: str
    kind: Literal["moorage", "distribution", "oci"]
    username: str | None
    credential: Literal["none", "password", "token"]
    ca_bundle: bool
    verify_tls: bool
    allow_private_network: bool
    timeout_seconds: int
    updated_by: str | None
    updated_at: UtcDateTime


class RegistryEndpointInput(RequestModel):
    """A remote registry. `password` and `token` are never returned; leaving them out keeps the
    stored one (while `username` is unchanged), `clearCredentials` removes it."""

    name: Name
    url: Annotated[str, Field(min_length=1, max_length=MAX_URL_LENGTH)]
    kind: Literal["moorage", "distribution", "oci"] = Field(
        "oci", description="moorage deletes tags by name; the others delete by digest"
    )
    username: Annotated[str, Field(min_length=1, max_length=255)] | None = None
    password: Secret | None = None
    token: Secret | None = None
    clear_credentials: bool = False
    ca_bundle: Annotated[str, Field(max_length=MAX_PEM_BYTES)] | None = Field(
        None, description="PEM certificates to trust for the remote"
    )
    verify_tls: bool = Field(True, description="false skips certificate verification")
    allow_private_network: bool = Field(
        False, description="allow loopback and private addresses (on-premises registries)"
    )
    timeout_seconds: Annotated[int, Field(ge=1, le=MAX_TIMEOUT_SECONDS)] = 60


class ReplicationRule(ApiModel):
    id: int
    name: str
    endpoint_id: int
    endpoint: str
    direction: Literal["push", "pull"]
    repositories: list[str]
    exclude_repositories: list[str]
    tags: list[str]
    exclude_tags: list[str]
    destination_prefix: str | None
    strip_segments: int
    trigger: Literal["manual", "event", "schedule"]
    interval_seconds: int | None
    cron: str | None
    replicate_deletions: bool
    mirror_deletions: bool
    enabled: bool
    next_run_at: UtcDateTime | None
    updated_by: str | None
    updated_at: UtcDateTime


class ReplicationRuleInput(RequestModel):
    """What to copy, where, and when.

    Repositories match when one of `repositories` matches and none of `excludeRepositories`
    does (doublestar globs over the whole name); tags likewise. The destination name is the
    source name without its first `stripSegments` segments, under `destinationPrefix`.
    """

    name: Name
    endpoint_id: Annotated[int, Field(ge=1, le=MAX_ID)]
    direction: Literal["push", "pull"]
    repositories: Annotated[list[RepositoryGlob], Field(min_length=1, max_length=MAX_PATTERNS)] = (
        Field(default_factory=lambda: ["**"])
    )
    exclude_repositories: Annotated[list[RepositoryGlob], Field(max_length=MAX_PATTERNS)] = Field(
        default_factory=list
    )
    tags: Annotated[list[TagGlob], Field(min_length=1, max_length=MAX_PATTERNS)] = Field(
        default_factory=lambda: ["*"]
    )
    exclude_tags: Annotated[list[TagGlob], Field(max_length=MAX_PATTERNS)] = Field(
        default_factory=list
    )
    destination_prefix: (
        Annotated[str, Field(min_length=1, max_length=MAX_PATTERN_LENGTH)] | None
    ) = None
    strip_segments: Annotated[int, Field(ge=0, le=MAX_STRIP_SEGMENTS)] = 0
    trigger: Literal["manual", "event", "schedule"] = "manual"
    interval_seconds: (
        Annotated[int, Field(ge=MIN_INTERVAL_SECONDS, le=MAX_INTERVAL_SECONDS)] | None
    ) = None
    cron: Annotated[str, Field(min_length=9, max_length=MAX_CRON_LENGTH)] | None = Field(
        None, description="minute hour day month weekday (UTC): `*`, `*/N`, `A-B`, lists"
    )
    replicate_deletions: bool = Field(
        False, description="push rules: delete on the remote what is deleted here"
    )
    mirror_deletions: bool = Field(
        False,
        description="scheduled and manual runs delete at the target what this rule copied"
        " there and the source no longer has",
    )
    enabled: bool = True


class ReplicationExecution(ApiModel):
    id: int
    rule_id: int
    trigger: str
    triggered_by: str | None
    status: Literal["pending", "running", "succeeded", "failed", "partial"]
    message: str | None
    created_at: UtcDateTime
    finished_at: UtcDateTime | None
    total: int
    pending: int
    running: int
    succeeded: int
    failed: int


class ReplicationTask(ApiModel):
    id: int
    execution_id: int
    operation: Literal["copy", "delete"]
    source: str
    destination: str
    tag: str | None
    digest: str | None
    status: Literal["pending", "running", "succeeded", "failed"]
    attempts: int
    next_attempt_at: UtcDateTime
    error: str | None
    bytes_copied: int
    blobs_copied: int
    blobs_skipped: int
    referrers_copied: int
    updated_at: UtcDateTime
    finished_at: UtcDateTime | None


class RegistryCheck(ApiModel):
    ok: bool
    message: str


class ExecutionsQuery(QueryModel):
    limit: int = Field(20, ge=1, le=MAX_PAGE_SIZE, description="at most 100, newest first")
    before: int | None = Field(None, ge=1, le=MAX_ID, description="executions older than this id")


class TasksQuery(QueryModel):
    limit: int = Field(100, ge=1, le=MAX_PAGE_SIZE)
    after: int | None = Field(None, ge=0, le=MAX_ID, description="tasks after this id")
