"""Immutable tags: managing each project's rules, and the policy checks that enforce them.

The rules live in the database (`immutable_tag_rules`); what they mean is defined in
`moorage.domain.immutability`. `ImmutableTagPolicy` registers checks at three decision points:

- push:manifest — a push by tag is refused when the tag exists, is immutable and points at
  another digest (creating the tag, or pushing the same manifest again, is fine);
- delete:tag — deleting an immutable tag is refused;
- delete:manifest — deleting a manifest is refused while an immutable tag points at it.

Each worker caches a project's rules for 2 seconds (a change made through this worker applies
at once), so a check costs nothing more than glob matching unless a rule covers the tag; only
then does it read the tag's current digest (or the manifest's tags), through the repository
state the registry passes in and re-checks inside its write transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from moorage.domain.events import AccessEvent, Actor
from moorage.domain.immutability import (
    MAX_RULES,
    ImmutableTagRule,
    RuleError,
    RuleMode,
    make_rule,
    protected_tags,
    protecting_rule,
    validate_rule_set,
)
from moorage.domain.names import project_of
from moorage.domain.policy import (
    Allow,
    Decision,
    DecisionPoint,
    Deny,
    PolicyContext,
    PolicySet,
    RepositoryState,
)
from moorage.metadata.access.iam_models import ImmutableTagRuleRow, Project
from moorage.metadata.access.iam_store import (
    ConflictError,
    IamStore,
    LimitExceededError,
    NewImmutableTagRule,
)
from moorage.metadata.registry.store import MetadataStore
from moorage.services.cache import TtlCache
from moorage.services.errors import IdentityError
from moorage.services.events import EventBus
from moorage.services.registry.registry import ObservedState
from moorage.services.threads import Threads

POLICY_NAME: Final = "immutable-tags"
RULES_CACHE_SECONDS: Final = 2.0


@dataclass(frozen=True, slots=True)
class ImmutableTagRuleView:
    id: int
    repositories: str
    tags: str
    mode: str
    created_by: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class RuleInput:
    """A rule as a caller submits it (validated by the service)."""

    repositories: str
    tags: str
    mode: str = "matching"


def _view(row: ImmutableTagRuleRow) -> ImmutableTagRuleView:
    return ImmutableTagRuleView(
        row.id, row.repositories, row.tags, row.mode, row.created_by, row.created_at
    )


def _rule(row: ImmutableTagRuleRow) -> ImmutableTagRule:
    # Stored rules were validated when they were written: a later, stricter validation must not
    # make every push into the project fail, so they are taken as stored.
    return ImmutableTagRule(row.repositories, row.tags, RuleMode(row.mode), row.id)


def _summary(row: ImmutableTagRuleRow) -> dict[str, object]:
    return {"id": row.id, "repositories": row.repositories, "tags": row.tags, "mode": row.mode}


class ImmutabilityService:
    """Create, list, replace and delete a project's rules; every change is audited."""

    def __init__(self, store: IamStore, events: EventBus) -> None:
        self._store = store
        self._events = events
        self._rules = TtlCache(RULES_CACHE_SECONDS, name="immutable-tag-rules")

    def _project(self, name: str) -> Project:
        row = self._store.project_by_name(name)
        if row is None:
            raise IdentityError(f"project {name} not found", 404)
        return row

    def _emit(self, action: str, actor: Actor, project: str, **details: object) -> None:
        self._rules.clear()
        self._events.publish(
            AccessEvent(action, actor, "success", project, f"project:{project}", details)
        )

    @staticmethod
    def _validated(rules: Sequence[RuleInput]) -> list[NewImmutableTagRule]:
        try:
            parsed = [make_rule(rule.repositories, rule.tags, rule.mode) for rule in rules]
            validate_rule_set(parsed)
        except RuleError as error:
            raise IdentityError(str(error)) from None
        return [NewImmutableTagRule(rule.repositories, rule.tags, rule.mode) for rule in parsed]

    def rules(self, project: str) -> list[ImmutableTagRuleView]:
        return [_view(row) for row in self._store.immutable_tag_rules(self._project(project).id)]

    def create(self, actor: Actor, project: str, rule: RuleInput) -> ImmutableTagRuleView:
        (new,) = self._validated([rule])
        row = self._project(project)
        try:
            added = self._store.add_immutable_tag_rule(row.id, new, actor.name, MAX_RULES)
        except ConflictError as error:
            raise IdentityError(str(error), 409) from None
        except LimitExceededError as error:
            raise IdentityError(str(error)) from None
        self._emit(
            "immutable-rule:create",
            actor,
            project,
            rule=added.id,
            repositories=added.repositories,
            tags=added.tags,
            mode=added.mode,
        )
        return _view(added)

    def replace(
        self, actor: Actor, project: str, rules: Sequence[RuleInput]
    ) -> list[ImmutableTagRuleView]:
        """Make `rules` the project's complete set (an empty list removes every rule)."""
        new = self._validated(rules)
        row = self._project(project)
        removed, added = self._store.replace_immutable_tag_rules(row.id, new, actor.name)
        self._emit(
            "immutable-rule:replace",
            actor,
            project,
            removed=[_summary(rule) for rule in removed],
            rules=[_summary(rule) for rule in added],
        )
        return [_view(rule) for rule in added]

    def delete(self, actor: Actor, project: str, rule_id: int) -> None:
        row = self._project(project)
        removed = self._store.delete_immutable_tag_rule(row.id, rule_id)
        if removed is None:
            raise IdentityError(f"rule {rule_id} not found", 404)
        self._emit(
            "immutable-rule:delete",
            actor,
            project,
            rule=rule_id,
            repositories=removed.repositories,
            tags=removed.tags,
            mode=removed.mode,
        )

    # -- what the checks read

    def cached_rules(self, project: str) -> tuple[bool, tuple[ImmutableTagRule, ...]]:
        """(True, rules) when this worker read them less than 2 s ago; never loads."""
        hit, rules = self._rules.peek(project)
        return hit, rules if hit else ()

    def rules_of(self, project: str) -> tuple[ImmutableTagRule, ...]:
        """The project's rules, cached for 2 s (blocking: run it on the worker threads)."""
        return self._rules.get_or_load(
            project,
            lambda: tuple(_rule(row) for row in self._store.immutable_tag_rules_of(project)),
        )


class ImmutableTagPolicy:
    """The checks at push:manifest, delete:tag and delete:manifest."""

    def __init__(
        self, service: ImmutabilityService, metadata: MetadataStore, threads: Threads
    ) -> None:
        self._service = service
        self._metadata = metadata
        self._threads = threads

    def register(self, policies: PolicySet) -> None:
        policies.register(DecisionPoint.PUSH_MANIFEST, self.check_push)
        # A promotion sets a tag just as a push does.
        policies.register(DecisionPoint.PROMOTE, self.check_push)
        policies.register(DecisionPoint.DELETE_TAG, self.check_delete_tag)
        policies.register(DecisionPoint.DELETE_MANIFEST, self.check_delete_manifest)

    async def _rules(self, repository: str) -> tuple[ImmutableTagRule, ...]:
        project = project_of(repository)
        hit, rules = self._service.cached_rules(project)
        if hit:
            return rules
        return await self._threads.run(self._service.rules_of, project)

    def _state(self, context: PolicyContext) -> RepositoryState:
        # The registry always passes its state (re-checked when it writes); a caller that does
        # not still gets a correct answer at the time of the check.
        if context.state is not None:
            return context.state
        return ObservedState(
            self._metadata, self._threads, context.repository, context.tag, context.digest
        )

    async def check_push(self, context: PolicyContext) -> Decision:
        if context.tag is None:
            return Allow()  # a push by digest moves no tag
        rule = protecting_rule(
            await self._rules(context.repository), context.repository, context.tag
        )
        if rule is None:
            return Allow()
        current = await self._state(context).tag_digest()
        if current is None or current == context.digest:
            return Allow()  # a new tag, or the same manifest again
        return Deny(
            f"tag {context.tag} of {context.repository} is immutable ({rule.describe()}): it"
            f" points at {current} and cannot be moved to {context.digest}; push under a new tag",
            POLICY_NAME,
        )

    async def check_delete_tag(self, context: PolicyContext) -> Decision:
        if context.tag is None:
            return Allow()
        rule = protecting_rule(
            await self._rules(context.repository), context.repository, context.tag
        )
        if rule is None:
            return Allow()
        return Deny(
            f"tag {context.tag} of {context.repository} is immutable ({rule.describe()}) and"
            " cannot be deleted",
            POLICY_NAME,
        )

    async def check_delete_manifest(self, context: PolicyContext) -> Decision:
        if context.digest is None:
            return Allow()
        rules = await self._rules(context.repository)
        if not rules:
            return Allow()
        tags = await self._state(context).manifest_tags()
        protected = protected_tags(rules, context.repository, tags)
        if not protected:
            return Allow()
        tag, rule = protected[0]
        more = f" (and {len(protected) - 1} more)" if len(protected) > 1 else ""
        return Deny(
            f"manifest {context.digest} of {context.repository} is tagged {tag}{more}, which is"
            f" immutable ({rule.describe()}); the manifest cannot be deleted",
            POLICY_NAME,
        )
