"""Retention rules as pure values, and the decision for every artifact of a repository.

A project's policy is a list of rules; each rule has

- a repository selector: doublestar patterns relative to the project (`app/**` in project `team`
  covers `team/app/api`), `repositories` to include and `exclude_repositories` to exclude;
- a tag selector: tag globs `tags` and `exclude_tags`, and `untagged` to select artifacts that
  have no tag at all;
- a criterion: the `count` most recently pushed (`latestPushed`) or pulled (`latestPulled`),
  pushed or pulled within the last `days` days (`pushedWithinDays`, `pulledWithinDays`), or
  `always`.

Decisions are per artifact (a manifest digest in a repository):

- Rules combine with OR: an artifact that any rule retains stays. A repository that no rule's
  repository selector covers is left alone entirely; in a covered repository, what no rule
  retains goes.
- A criterion ranks only the artifacts its rule selects, within one repository. For the N latest,
  artifacts whose time ties with the N-th are all kept (never an arbitrary choice between two
  equal candidates); never-pulled artifacts are never among the latest pulled.
- A kept index keeps its children; referrers (OCI `subject`, and cosign's
  `sha256-<hex>.sig/.att/.sbom` tags) are not ranked by rules: they live and die with their
  subject (a referrer whose subject is not in the repository is ranked like any artifact).
- An artifact with an immutable tag, or one promoted from this repository into a later stage,
  is kept unless a rule that selects it says `remove_protected`.
- The removal order lists referrers and indexes before what they point at, so deleting in that
  order never meets an index that still needs a child.

Patterns are matched by `domain.access.glob_match` (never exponential); their number and
length are capped, as are counts and days.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Final

from moorage.domain.access import PatternError, glob_match, validate_pattern
from moorage.domain.immutability import (
    ImmutableTagRule,
    RuleError,
    protected_tags,
    relative_repository,
    validate_tag_pattern,
)

MAX_RULES: Final = 15
MAX_PATTERNS: Final = 16  # per selector list
MAX_COUNT: Final = 100_000
MAX_DAYS: Final = 36_500
_COSIGN_TAG: Final = re.compile(r"^(sha256|sha512)-([0-9a-f]{64}|[0-9a-f]{128})\.(?:sig|att|sbom)$")

__all__ = [
    "MAX_COUNT",
    "MAX_DAYS",
    "MAX_PATTERNS",
    "MAX_RULES",
    "Artifact",
    "Criterion",
    "Decision",
    "RepositoryPlan",
    "RetentionRule",
    "RuleError",
    "covers_repository",
    "evaluate",
    "make_rule",
    "validate_rules",
]


class Criterion(StrEnum):
    LATEST_PUSHED = "latestPushed"
    LATEST_PULLED = "latestPulled"
    PUSHED_WITHIN_DAYS = "pushedWithinDays"
    PULLED_WITHIN_DAYS = "pulledWithinDays"
    ALWAYS = "always"

    @property
    def takes_count(self) -> bool:
        return self in (Criterion.LATEST_PUSHED, Criterion.LATEST_PULLED)

    @property
    def takes_days(self) -> bool:
        return self in (Criterion.PUSHED_WITHIN_DAYS, Criterion.PULLED_WITHIN_DAYS)


@dataclass(frozen=True, slots=True)
class RetentionRule:
    criterion: Criterion
    value: int | None = None  # N for latest*, D for *WithinDays, None for always
    repositories: tuple[str, ...] = ("**",)
    exclude_repositories: tuple[str, ...] = ()
    tags: tuple[str, ...] = ("*",)
    exclude_tags: tuple[str, ...] = ()
    untagged: bool = False
    remove_protected: bool = False

    def covers(self, relative: str) -> bool:
        """Whether the rule applies to a repository (its path inside the project)."""
        return any(glob_match(p, relative) for p in self.repositories) and not any(
            glob_match(p, relative) for p in self.exclude_repositories
        )

    def tag_selected(self, tag: str) -> bool:
        return any(glob_match(p, tag) for p in self.tags) and not any(
            glob_match(p, tag) for p in self.exclude_tags
        )

    def selects(self, tags: Sequence[str]) -> bool:
        """Whether an artifact with `tags` (in a covered repository) is among the rule's."""
        if not tags:
            return self.untagged
        return any(self.tag_selected(tag) for tag in tags)

    def describe(self, number: int) -> str:
        what = {
            Criterion.LATEST_PUSHED: f"the {self.value} most recently pushed",
            Criterion.LATEST_PULLED: f"the {self.value} most recently pulled",
            Criterion.PUSHED_WITHIN_DAYS: f"pushed within {self.value} days",
            Criterion.PULLED_WITHIN_DAYS: f"pulled within {self.value} days",
            Criterion.ALWAYS: "always",
        }[self.criterion]
        return f"rule {number}: {what}"


def _patterns(values: Iterable[str], name: str, *, tag: bool) -> tuple[str, ...]:
    patterns = tuple(values)
    if len(patterns) > MAX_PATTERNS:
        raise RuleError(f"{name}: at most {MAX_PATTERNS} patterns")
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise RuleError(f"{name}: patterns are strings")
        try:
            if tag:
                validate_tag_pattern(pattern)
            else:
                validate_pattern(pattern)
        except (PatternError, RuleError) as error:
            raise RuleError(f"{name}: {error}") from None
    return patterns


def make_rule(
    criterion: str,
    value: int | None = None,
    *,
    repositories: Iterable[str] = ("**",),
    exclude_repositories: Iterable[str] = (),
    tags: Iterable[str] = ("*",),
    exclude_tags: Iterable[str] = (),
    untagged: bool = False,
    remove_protected: bool = False,
) -> RetentionRule:
    """A validated rule; RuleError says what is wrong."""
    try:
        parsed = Criterion(criterion)
    except ValueError:
        choices = ", ".join(c.value for c in Criterion)
        raise RuleError(f"criterion must be one of {choices}") from None
    if parsed.takes_count:
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_COUNT:
            raise RuleError(f"{parsed.value} needs a count from 1 to {MAX_COUNT}")
    elif parsed.takes_days:
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_DAYS:
            raise RuleError(f"{parsed.value} needs a number of days from 1 to {MAX_DAYS}")
    elif value is not None:
        raise RuleError("'always' takes no value")
    rule = RetentionRule(
        parsed,
        value,
        _patterns(repositories, "repositories", tag=False),
        _patterns(exclude_repositories, "excludeRepositories", tag=False),
        _patterns(tags, "tags", tag=True),
        _patterns(exclude_tags, "excludeTags", tag=True),
        bool(untagged),
        bool(remove_protected),
    )
    if not rule.repositories:
        raise RuleError("repositories: give at least one pattern")
    if not rule.tags and not rule.untagged:
        raise RuleError("a rule selects tags, untagged artifacts, or both")
    return rule


def validate_rules(rules: Sequence[RetentionRule]) -> tuple[RetentionRule, ...]:
    if not rules:
        raise RuleError("a policy has at least one rule")
    if len(rules) > MAX_RULES:
        raise RuleError(f"a policy has at most {MAX_RULES} rules")
    return tuple(rules)


def covers_repository(rules: Sequence[RetentionRule], repository: str) -> bool:
    """Whether retention touches `repository` at all (some rule's repository selector covers
    it)."""
    relative = relative_repository(repository)
    return any(rule.covers(relative) for rule in rules)


@dataclass(frozen=True, slots=True)
class Artifact:
    """A manifest in one repository, as retention sees it."""

    digest: str
    pushed_at: datetime
    tags: tuple[str, ...] = ()
    pulled_at: datetime | None = None
    children: tuple[str, ...] = ()  # an index's manifests
    subject: str | None = None  # OCI subject of a referrer
    promoted_to: str | None = None  # where it was promoted from this repository, if anywhere

    @property
    def referred(self) -> str | None:
        """The subject this artifact belongs to: its OCI subject, or the digest a cosign tag
        names."""
        if self.subject is not None:
            return self.subject
        for tag in self.tags:
            match = _COSIGN_TAG.fullmatch(tag)
            if match is not None:
                return f"{match.group(1)}:{match.group(2)}"
        return None


@dataclass(frozen=True, slots=True)
class Decision:
    digest: str
    tags: tuple[str, ...]
    keep: bool
    reason: str  # which rule or protection keeps it, or why it goes
    rule: int | None = None  # the 1-based number of the rule that keeps it


@dataclass(frozen=True, slots=True)
class RepositoryPlan:
    repository: str
    decisions: tuple[Decision, ...]  # every artifact, sorted by digest
    removals: tuple[str, ...] = field(default=())  # digests in a safe deletion order


def _ranked_latest(candidates: list[tuple[datetime, str]], count: int) -> set[str]:
    """The `count` latest, plus every artifact tied with the last of them."""
    if not candidates:
        return set()
    ordered = sorted(candidates, key=lambda item: item[0], reverse=True)
    if len(ordered) <= count:
        return {digest for _, digest in ordered}
    boundary = ordered[count - 1][0]
    return {digest for at, digest in ordered if at >= boundary}


def _rule_keeps(rule: RetentionRule, selected: Sequence[Artifact], now: datetime) -> set[str]:
    match rule.criterion:
        case Criterion.ALWAYS:
            return {a.digest for a in selected}
        case Criterion.LATEST_PUSHED:
            assert rule.value is not None
            return _ranked_latest([(a.pushed_at, a.digest) for a in selected], rule.value)
        case Criterion.LATEST_PULLED:
            assert rule.value is not None
            pulled = [(a.pulled_at, a.digest) for a in selected if a.pulled_at is not None]
            return _ranked_latest(pulled, rule.value)
        case Criterion.PUSHED_WITHIN_DAYS:
            assert rule.value is not None
            since = now - timedelta(days=rule.value)
            return {a.digest for a in selected if a.pushed_at >= since}
        case Criterion.PULLED_WITHIN_DAYS:
            assert rule.value is not None
            since = now - timedelta(days=rule.value)
            return {a.digest for a in selected if a.pulled_at is not None and a.pulled_at >= since}


def evaluate(
    rules: Sequence[RetentionRule],
    repository: str,
    artifacts: Sequence[Artifact],
    *,
    now: datetime,
    immutable_rules: Sequence[ImmutableTagRule] = (),
) -> RepositoryPlan:
    """Keep or remove every artifact of `repository` (full name), and why."""
    relative = relative_repository(repository)
    applying = [(number, rule) for number, rule in enumerate(rules, 1) if rule.covers(relative)]
    by_digest = {a.digest: a for a in artifacts}
    if not applying:
        kept = tuple(
            Decision(a.digest, a.tags, True, "no rule covers the repository")
            for a in sorted(artifacts, key=lambda a: a.digest)
        )
        return RepositoryPlan(repository, kept)

    # Referrers follow their subject when it is here; everything else is ranked by the rules.
    follows = {}
    for a in artifacts:
        subject = a.referred
        if subject is not None and subject in by_digest and subject != a.digest:
            follows[a.digest] = subject
    ranked = [a for a in artifacts if a.digest not in follows]
    reasons: dict[str, tuple[str, int | None]] = {}

    unprotected: set[str] = set()
    for number, rule in applying:
        selected = [a for a in ranked if rule.selects(a.tags)]
        if rule.remove_protected:
            unprotected.update(a.digest for a in artifacts if rule.selects(a.tags))
        for digest in sorted(_rule_keeps(rule, selected, now)):
            reasons.setdefault(digest, (rule.describe(number), number))

    for artifact in artifacts:
        if artifact.digest in reasons or artifact.digest in unprotected:
            continue
        immutable = (
            protected_tags(immutable_rules, repository, artifact.tags)
            if immutable_rules and artifact.tags
            else []
        )
        if immutable:
            tag, immutable_rule = immutable[0]
            reasons[artifact.digest] = (
                f"immutable tag {tag} ({immutable_rule.describe()})",
                None,
            )
        elif artifact.promoted_to is not None:
            reasons[artifact.digest] = (f"promoted to {artifact.promoted_to}", None)

    _close(by_digest, follows, reasons)
    decisions = []
    for artifact in sorted(artifacts, key=lambda a: a.digest):
        kept_by = reasons.get(artifact.digest)
        if kept_by is not None:
            decisions.append(Decision(artifact.digest, artifact.tags, True, *kept_by))
        elif artifact.digest in follows:
            decisions.append(
                Decision(
                    artifact.digest,
                    artifact.tags,
                    False,
                    f"referrer of {follows[artifact.digest]}, which goes",
                )
            )
        else:
            decisions.append(Decision(artifact.digest, artifact.tags, False, "no rule retains it"))
    removed = {d.digest for d in decisions if not d.keep}
    return RepositoryPlan(repository, tuple(decisions), _removal_order(by_digest, follows, removed))


def _close(
    by_digest: Mapping[str, Artifact],
    follows: Mapping[str, str],
    reasons: dict[str, tuple[str, int | None]],
) -> None:
    """What is kept keeps its children and its referrers, transitively."""
    referrers: dict[str, list[str]] = {}
    for referrer, subject in follows.items():
        referrers.setdefault(subject, []).append(referrer)
    pending = sorted(reasons)
    while pending:
        digest = pending.pop()
        artifact = by_digest[digest]
        for child in artifact.children:
            if child in by_digest and child not in reasons:
                reasons[child] = (f"child of kept index {digest}", None)
                pending.append(child)
        for referrer in sorted(referrers.get(digest, ())):
            if referrer not in reasons:
                reasons[referrer] = (f"referrer of kept {digest}", None)
                pending.append(referrer)


def _removal_order(
    by_digest: Mapping[str, Artifact], follows: Mapping[str, str], removed: set[str]
) -> tuple[str, ...]:
    """Removed digests, each after every removed index that lists it and every removed
    referrer of it (depth-first over "points at", emitted in reverse post-order)."""
    pointers: dict[str, list[str]] = {}  # digest -> the removed artifacts it points at
    for digest in removed:
        artifact = by_digest[digest]
        targets = [c for c in artifact.children if c in removed]
        subject = follows.get(digest)
        if subject is not None and subject in removed:
            targets.append(subject)
        pointers[digest] = sorted(set(targets))
    order: list[str] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done
    for start in sorted(removed):
        if start in state:
            continue
        stack: list[tuple[str, int]] = [(start, 0)]
        state[start] = 1
        while stack:
            digest, index = stack[-1]
            targets = pointers[digest]
            if index < len(targets):
                stack[-1] = (digest, index + 1)
                target = targets[index]
                if target not in state:  # a cycle (content-addressed: impossible) is cut
                    state[target] = 1
                    stack.append((target, 0))
                continue
            stack.pop()
            state[digest] = 2
            order.append(digest)
    order.reverse()
    return tuple(order)
