"""Immutable tag rules: per project, which tags may not be moved or deleted once pushed.

A tag is immutable when a `matching` rule covers it (its repository, relative to the project,
matches `repositories` and the tag matches `tags`) and no `excluding` rule does; cosign's
`sha256-<hex>.sig/.att/.sbom` tags never are. See `moorage.domain.immutability`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from moorage.domain.access import MAX_PATTERN_LENGTH, Action
from moorage.domain.immutability import MAX_RULES, MAX_TAG_PATTERN_LENGTH
from moorage.http.access import project_permission
from moorage.http.api.common import GLOB_PATTERN
from moorage.http.api.framework import ApiModel, ApiRoute, Call, RequestModel, UtcDateTime
from moorage.services.registry.immutability import ImmutableTagRuleView, RuleInput

IMMUTABLE_TAGS = "immutable-tags"
RULES_PATH = "/api/v1/projects/{project}/immutable-tag-rules"
MANAGE_POLICIES = project_permission(Action.MANAGE_POLICIES)
READ_PROJECT = project_permission(Action.READ_PROJECT)

TAG_GLOB_PATTERN = r"^[A-Za-z0-9._*?-]+$"
Mode = Literal["matching", "excluding"]
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
        pattern=TAG_GLOB_PATTERN,
        max_length=MAX_TAG_PATTERN_LENGTH,
        description="tags: `*` any run of characters, `?` one character",
    ),
]


class ImmutableTagRule(ApiModel):
    id: int
    repositories: str
    tags: str
    mode: Mode
    created_by: str | None
    created_at: UtcDateTime


class NewImmutableTagRule(RequestModel):
    """`matching` protects the tags it covers; `excluding` exempts them from every matching
    rule of the project."""

    repositories: RepositoryGlob = "**"
    tags: TagGlob
    mode: Mode = "matching"


class ImmutableTagRuleSet(RequestModel):
    """The project's complete set of rules (an empty list removes every rule)."""

    rules: Annotated[list[NewImmutableTagRule], Field(max_length=MAX_RULES)]


def rule_view(view: ImmutableTagRuleView) -> ImmutableTagRule:
    return ImmutableTagRule(
        id=view.id,
        repositories=view.repositories,
        tags=view.tags,
        mode="excluding" if view.mode == "excluding" else "matching",
        created_by=view.created_by,
        created_at=view.created_at,
    )


def _input(rule: NewImmutableTagRule) -> RuleInput:
    return RuleInput(rule.repositories, rule.tags, rule.mode)


async def list_immutable_tag_rules(call: Call) -> list[ImmutableTagRule]:
    views = await call.run(call.iam.immutability.rules, call.project)
    return [rule_view(view) for view in views]


async def add_immutable_tag_rule(call: Call) -> ImmutableTagRule:
    body = call.body(NewImmutableTagRule)
    view = await call.run(call.iam.immutability.create, call.actor, call.project, _input(body))
    return rule_view(view)


async def replace_immutable_tag_rules(call: Call) -> list[ImmutableTagRule]:
    body = call.body(ImmutableTagRuleSet)
    views = await call.run(
        call.iam.immutability.replace,
        call.actor,
        call.project,
        [_input(rule) for rule in body.rules],
    )
    return [rule_view(view) for view in views]


async def delete_immutable_tag_rule(call: Call) -> None:
    await call.run(call.iam.immutability.delete, call.actor, call.project, call.id_param("rule"))


ROUTES: tuple[ApiRoute, ...] = (
    ApiRoute(
        "GET",
        RULES_PATH,
        list_immutable_tag_rules,
        READ_PROJECT,
        "The project's immutable tag rules",
        IMMUTABLE_TAGS,
        response=ImmutableTagRule,
        many=True,
    ),
    ApiRoute(
        "POST",
        RULES_PATH,
        add_immutable_tag_rule,
        MANAGE_POLICIES,
        f"Add an immutable tag rule (at most {MAX_RULES} per project)",
        IMMUTABLE_TAGS,
        body=NewImmutableTagRule,
        response=ImmutableTagRule,
        status=201,
        errors=(409,),
    ),
    ApiRoute(
        "PUT",
        RULES_PATH,
        replace_immutable_tag_rules,
        MANAGE_POLICIES,
        "Replace the project's immutable tag rules with the given set",
        IMMUTABLE_TAGS,
        body=ImmutableTagRuleSet,
        response=ImmutableTagRule,
        many=True,
    ),
    ApiRoute(
        "DELETE",
        f"{RULES_PATH}/{{rule:[0-9]+}}",
        delete_immutable_tag_rule,
        MANAGE_POLICIES,
        "Remove one immutable tag rule",
        IMMUTABLE_TAGS,
        status=204,
    ),
)
