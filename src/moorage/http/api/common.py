"""Vocabulary shared by the API resources: name patterns, path parameters, paging, access rules.

The patterns repeat the services' own rules so the OpenAPI document tells clients (and fuzzers)
what is accepted; the services still check everything themselves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Final

from pydantic import Field

from moorage.domain.access import MAX_PATTERN_LENGTH, Action
from moorage.http.api.framework import MAX_ID, MAX_PAGE_SIZE, ApiModel, QueryModel, RequestModel

# users, groups, roles, robots (short names) and tokens
NAME_PATTERN: Final = r"^[a-z0-9][a-z0-9._-]{0,63}$"
PROJECT_PATTERN: Final = r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*$"
PROJECT_OR_ALL_PATTERN: Final = rf"^(?:\*|{PROJECT_PATTERN[1:-1]})$"
GLOB_PATTERN: Final = r"^[a-z0-9._/*?-]+$"
# a user, a group, or a robot's full name (robot$project+name)
PRINCIPAL_PATTERN: Final = r"^[a-z0-9][a-z0-9._$+-]{0,254}$"
REPOSITORY_PATTERN: Final = rf"^{PROJECT_PATTERN[1:-1]}(?:/{PROJECT_PATTERN[1:-1]})*$"
DIGEST_PATTERN: Final = r"^(?:sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$"
PRINTABLE_PATTERN: Final = r"^[^\x00-\x1f\x7f]*$"
EMAIL_PATTERN: Final = r"^[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+$"

Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=64)]
ProjectName = Annotated[str, Field(pattern=PROJECT_PATTERN, max_length=255)]
Text = Annotated[str, Field(pattern=PRINTABLE_PATTERN, max_length=255)]
Email = Annotated[str, Field(pattern=EMAIL_PATTERN, max_length=254)]
# Long enough for any passphrase, short enough that hashing it costs nothing extra. The document
# states the configured minimum length for every `password` field (the service enforces it).
Password = Annotated[
    str, Field(min_length=1, max_length=1024, json_schema_extra={"format": "password"})
]
ExpiryDays = Annotated[int, Field(ge=1, le=3650)]
Actions = Annotated[list[Action], Field(min_length=1, max_length=len(Action))]

_NAME_SCHEMA: Final = {"type": "string", "pattern": NAME_PATTERN, "maxLength": 64}

# The schema of every path parameter, by the name the routes give it.
PATH_PARAMETERS: Final[Mapping[str, Mapping[str, Any]]] = {
    "username": _NAME_SCHEMA,
    "group": _NAME_SCHEMA,
    "role": _NAME_SCHEMA,
    "robot": _NAME_SCHEMA,
    "token": _NAME_SCHEMA,
    "member": _NAME_SCHEMA,
    "project": {"type": "string", "pattern": PROJECT_PATTERN, "maxLength": 255},
    "kind": {"type": "string", "enum": ["user", "group"]},
    "grant": {"type": "integer", "minimum": 1, "maximum": MAX_ID},
    "rule": {"type": "integer", "minimum": 1, "maximum": MAX_ID},
    "scanner": _NAME_SCHEMA,
    "key": _NAME_SCHEMA,
    "store": _NAME_SCHEMA,
    "entry": {"type": "integer", "minimum": 1, "maximum": MAX_ID},
    "registry": {"type": "integer", "minimum": 1, "maximum": MAX_ID},
    "execution": {"type": "integer", "minimum": 1, "maximum": MAX_ID},
    "run": {"type": "integer", "minimum": 1, "maximum": MAX_ID},
    "gc_run": {"type": "string", "pattern": "^gc-[0-9]+-[0-9a-f]+$", "maxLength": 64},
    # a repository (it may contain slashes) and a manifest digest, as /v2 spells them
    "name": {"type": "string", "pattern": REPOSITORY_PATTERN, "maxLength": 255},
    "digest": {"type": "string", "pattern": DIGEST_PATTERN, "maxLength": 135},
}


class PageQuery(QueryModel):
    limit: int = Field(50, ge=1, le=MAX_PAGE_SIZE, description="page size (at most 100)")
    after: str | None = Field(
        None, max_length=255, description="continue after this name (from the Link header)"
    )


class AccessRule(RequestModel):
    """Actions on repositories matching a glob inside a project (`*`: every project)."""

    project: Annotated[str, Field(pattern=PROJECT_OR_ALL_PATTERN, max_length=255)] = Field(
        description="a project robot's rules name its own project"
    )
    repositories: Annotated[str, Field(pattern=GLOB_PATTERN, max_length=MAX_PATTERN_LENGTH)] = "**"
    actions: Actions


class AccessRuleView(ApiModel):
    project: str
    repositories: str
    actions: list[str]


def rules_for_service(rules: Sequence[AccessRule]) -> list[dict[str, Any]]:
    """The allow-list in the services' shape (they validate it again)."""
    return [
        {
            "project": rule.project,
            "repositories": rule.repositories,
            "actions": [action.value for action in rule.actions],
        }
        for rule in rules
    ]


def rule_views(rules: Sequence[Mapping[str, Any]] | None) -> list[AccessRuleView] | None:
    if rules is None:
        return None
    return [
        AccessRuleView(
            project=str(rule["project"]),
            repositories=str(rule["repositories"]),
            actions=[str(action) for action in rule["actions"]],
        )
        for rule in rules
    ]
