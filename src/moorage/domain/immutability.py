"""Immutable tags: per-project rules that stop a tag from being moved or deleted once pushed.

A rule names repositories (a doublestar glob relative to the project: `app/**` in project
`team` covers `team/app/api`) and tags (a glob over the tag: `v*`, `release-?.*`), and has a
mode:

- `matching` rules protect what they cover;
- `excluding` rules carve out what they cover from every matching rule of the project.

A tag is **immutable** when at least one matching rule covers it and no excluding rule does;
rules are unordered, and a project without matching rules has no immutable tags. cosign's
signature, attestation and SBOM tags (`sha256-<hex>.sig`, `.att`, `.sbom`) are never immutable:
cosign moves them whenever it adds a signature, and their content is verified by signature,
not by tag.

Harbor also speaks of "matching" and "excluding", but there each rule's selector is inverted
("every tag except `dev-*`") and rules are or-ed, so an excluding rule protects more. Here an
excluding rule only ever protects less: Harbor's "repositories `**`, tags excluding `dev-*`" is a
matching rule `**`/`*` plus an excluding rule `**`/`dev-*`.

An immutable tag may be created (pushed the first time), and pushed again with the same manifest
(the same digest); it may not be pointed at another manifest, nor deleted, nor lose its manifest
(deleting the manifest it points at). This module only evaluates rules; the checks that enforce
them are registered in the `PolicySet` by `moorage.services.registry.immutability`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from moorage.domain.access import PatternError, glob_match, validate_pattern
from moorage.domain.names import project_of

MAX_RULES: Final = 15  # per project
MAX_REPOSITORY_PATTERN_LENGTH: Final = 255
MAX_TAG_PATTERN_LENGTH: Final = 128  # a tag itself is at most 128 characters
# Tags are [A-Za-z0-9_][A-Za-z0-9._-]*; a tag pattern adds `*` and `?` (`**` is the same as `*`,
# since a tag has no `/`).
_TAG_GLOB_CHARS: Final = re.compile(r"^[A-Za-z0-9._*?-]+$")
# cosign's tags for a manifest's signatures, attestations and SBOMs.
_COSIGN_TAG: Final = re.compile(r"^(?:sha256-[0-9a-f]{64}|sha512-[0-9a-f]{128})\.(?:sig|att|sbom)$")


class RuleMode(StrEnum):
    MATCHING = "matching"  # protects the tags it covers
    EXCLUDING = "excluding"  # exempts the tags it covers from every matching rule


class RuleError(ValueError):
    """A rule or a set of rules that cannot be accepted (the message says why)."""


@dataclass(frozen=True, slots=True)
class ImmutableTagRule:
    repositories: str  # doublestar glob, relative to the project
    tags: str  # glob over the tag
    mode: RuleMode = RuleMode.MATCHING
    id: int | None = None  # the stored rule's id, once stored

    def covers(self, relative_repository: str, tag: str) -> bool:
        return glob_match(self.repositories, relative_repository) and glob_match(self.tags, tag)

    @property
    def key(self) -> tuple[str, str, RuleMode]:
        """What makes two rules the same rule."""
        return (self.repositories, self.tags, self.mode)

    def describe(self) -> str:
        name = f"rule {self.id}" if self.id is not None else "a rule"
        return f"{name}: {self.mode} repositories {self.repositories!r} tags {self.tags!r}"


def validate_tag_pattern(pattern: str) -> str:
    if (
        not pattern
        or len(pattern) > MAX_TAG_PATTERN_LENGTH
        or not _TAG_GLOB_CHARS.fullmatch(pattern)
    ):
        raise RuleError(
            "a tag pattern uses the characters of tags (A-Z a-z 0-9 . _ -), '*' and '?' (at most"
            f" {MAX_TAG_PATTERN_LENGTH} characters)"
        )
    if "***" in pattern:
        raise RuleError("'***' is not a valid wildcard")
    return pattern


def make_rule(
    repositories: str, tags: str, mode: str = RuleMode.MATCHING, rule_id: int | None = None
) -> ImmutableTagRule:
    """A validated rule."""
    try:
        validate_pattern(repositories)
    except PatternError as error:
        raise RuleError(str(error)) from None
    validate_tag_pattern(tags)
    try:
        parsed_mode = RuleMode(mode)
    except ValueError:
        raise RuleError("a rule's mode is 'matching' or 'excluding'") from None
    return ImmutableTagRule(repositories, tags, parsed_mode, rule_id)


def validate_rule_set(rules: Sequence[ImmutableTagRule]) -> tuple[ImmutableTagRule, ...]:
    """A project's complete set of rules: at most `MAX_RULES`, no rule twice."""
    if len(rules) > MAX_RULES:
        raise RuleError(f"a project has at most {MAX_RULES} immutable tag rules")
    seen: dict[tuple[str, str, RuleMode], int] = {}
    for position, rule in enumerate(rules, 1):
        earlier = seen.setdefault(rule.key, position)
        if earlier != position:
            raise RuleError(f"rule {position} repeats rule {earlier}")
    return tuple(rules)


def is_cosign_tag(tag: str) -> bool:
    """cosign's `sha256-<hex>.sig`, `.att` and `.sbom` tags (exempt from every rule)."""
    return _COSIGN_TAG.fullmatch(tag) is not None


def relative_repository(repository: str) -> str:
    """The repository's path inside its project (`team/app/api` → `app/api`; `team` → ``)."""
    project = project_of(repository)
    return repository[len(project) + 1 :]


def protecting_rule(
    rules: Iterable[ImmutableTagRule], repository: str, tag: str
) -> ImmutableTagRule | None:
    """The matching rule that makes `tag` of `repository` immutable, or None when it is not.

    `rules` are the rules of the repository's project. When several matching rules cover the
    tag, the one with the lowest id (the oldest) is named.
    """
    if is_cosign_tag(tag):
        return None
    relative = relative_repository(repository)
    protecting: ImmutableTagRule | None = None
    for rule in rules:
        if not rule.covers(relative, tag):
            continue
        if rule.mode is RuleMode.EXCLUDING:
            return None
        if protecting is None or _older(rule, protecting):
            protecting = rule
    return protecting


def _older(rule: ImmutableTagRule, than: ImmutableTagRule) -> bool:
    if rule.id is None or than.id is None:
        return False
    return rule.id < than.id


def is_immutable(rules: Iterable[ImmutableTagRule], repository: str, tag: str) -> bool:
    return protecting_rule(rules, repository, tag) is not None


def protected_tags(
    rules: Sequence[ImmutableTagRule], repository: str, tags: Iterable[str]
) -> list[tuple[str, ImmutableTagRule]]:
    """The immutable ones among `tags`, each with the rule that protects it (sorted by tag)."""
    found = []
    for tag in sorted(tags):
        rule = protecting_rule(rules, repository, tag)
        if rule is not None:
            found.append((tag, rule))
    return found
