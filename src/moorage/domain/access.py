"""Who may do what: the action vocabulary, built-in roles, repository globs, and one pure
decision function used by every entry point (/v2, the token service, the management API).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache, partial
from typing import Final

from moorage.domain.names import project_of


class Action(StrEnum):
    # repository actions (Docker token scopes use pull, push, delete)
    PULL = "pull"
    PUSH = "push"
    DELETE = "delete"  # delete manifests, tags and blobs
    DELETE_REPOSITORY = "delete-repository"
    READ_SCAN = "read-scan"
    SCAN = "scan"  # ask for a scan of a manifest
    # bring new content into a proxy-cache project from its upstream (separate from pull)
    UPSTREAM_FETCH = "upstream-fetch"
    # link an image (pulled from elsewhere) into a repository by promotion
    PROMOTE = "promote"
    # project administration
    READ_PROJECT = "read-project"
    READ_MEMBERS = "read-members"
    MANAGE_PROJECT = "manage-project"
    MANAGE_MEMBERS = "manage-members"
    MANAGE_ROBOTS = "manage-robots"
    MANAGE_POLICIES = "manage-policies"
    MANAGE_WEBHOOKS = "manage-webhooks"
    READ_AUDIT = "read-audit"


class SystemAction(StrEnum):
    PING = "ping"  # the API version check: anyone
    CATALOG = "catalog"  # list repositories: anyone, filtered to what they may pull
    AUTHENTICATED = "authenticated"  # any signed-in subject (own profile)
    # Own password and tokens: a scoped token must not mint an unscoped one.
    OWN_CREDENTIALS = "own-credentials"
    CREATE_PROJECT = "create-project"
    ADMIN = "admin"  # users, groups, roles, settings, system robots, the whole audit log


REPOSITORY_ACTIONS: Final = frozenset(
    {
        Action.PULL,
        Action.PUSH,
        Action.DELETE,
        Action.DELETE_REPOSITORY,
        Action.READ_SCAN,
        Action.SCAN,
        Action.UPSTREAM_FETCH,
        Action.PROMOTE,
    }
)


class Role(StrEnum):
    LIMITED_GUEST = "limited-guest"
    GUEST = "guest"
    DEVELOPER = "developer"
    MAINTAINER = "maintainer"
    PROJECT_ADMIN = "project-admin"


_LIMITED_GUEST = frozenset({Action.PULL, Action.READ_PROJECT})
_GUEST = _LIMITED_GUEST | {Action.READ_SCAN, Action.READ_AUDIT, Action.READ_MEMBERS}
_DEVELOPER = _GUEST | {Action.PUSH, Action.SCAN}
_MAINTAINER = _DEVELOPER | {
    Action.DELETE,
    Action.DELETE_REPOSITORY,
    Action.MANAGE_POLICIES,
    Action.UPSTREAM_FETCH,
    Action.PROMOTE,
}
_PROJECT_ADMIN = frozenset(Action)

ROLE_ACTIONS: Final[dict[str, frozenset[Action]]] = {
    Role.LIMITED_GUEST: _LIMITED_GUEST,
    Role.GUEST: _GUEST,
    Role.DEVELOPER: _DEVELOPER,
    Role.MAINTAINER: _MAINTAINER,
    Role.PROJECT_ADMIN: _PROJECT_ADMIN,
}

# Glob patterns are short, and `glob_match` never backtracks exponentially: matching stays cheap.
MAX_PATTERN_LENGTH: Final = 255
_GLOB_CHARS: Final = re.compile(r"^[a-z0-9._/*?-]+$")


class PatternError(ValueError):
    pass


def validate_pattern(pattern: str) -> str:
    if not pattern or len(pattern) > MAX_PATTERN_LENGTH or not _GLOB_CHARS.fullmatch(pattern):
        raise PatternError(
            "a repository pattern uses lowercase names, '/', '*', '**' and '?' (at most"
            f" {MAX_PATTERN_LENGTH} characters)"
        )
    if "***" in pattern:
        raise PatternError("'***' is not a valid wildcard")
    return pattern


_STARS: Final = frozenset({"**/", "**", "*"})
# Up to this many `*`/`**` wildcards a pattern runs as a regular expression (backtracking costs
# at most quadratic time over a 255-character name); more run on the state-set matcher below,
# whose cost is linear in the name. Unbounded backtracking would be exponential: `*a*a*a*a*a*b`
# against a long run of `a` takes seconds.
_REGEX_WILDCARDS: Final = 2


def _tokens(pattern: str) -> tuple[str, ...]:
    """`**/`, `**`, `*`, `?` or one literal character each."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("**/")
            i += 3
        elif pattern.startswith("**", i):
            out.append("**")
            i += 2
        else:
            out.append(pattern[i])
            i += 1
    return tuple(out)


_REGEX_OF_TOKEN: Final = {
    "**/": "(?:[^/]+/)*",  # zero or more whole segments
    "**": ".*",
    "*": "[^/]*",
    "?": "[^/]",
}


def _regex(tokens: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile(
        "".join(_REGEX_OF_TOKEN.get(piece) or re.escape(piece) for piece in tokens) + r"\Z",
        re.DOTALL,
    )


def _closure(tokens: tuple[str, ...], states: set[int]) -> set[int]:
    """Add the states reachable without input: every wildcard may match nothing."""
    pending = [state for state in states if state >= 0]
    while pending:
        state = pending.pop()
        if state < len(tokens) and tokens[state] in _STARS and state + 1 not in states:
            states.add(state + 1)
            pending.append(state + 1)
    return states


def _simulate(tokens: tuple[str, ...], value: str) -> bool:
    """Run all match positions at once (a Thompson simulation): O(len(value) * len(tokens)).

    State `i` has matched `tokens[:i]`; state `~i` is inside a segment of the `**/` at `i`.
    """
    end = len(tokens)
    states = _closure(tokens, {0})
    for char in value:
        following: set[int] = set()
        for state in states:
            if state < 0:  # inside a `**/` segment: more of it, or its closing slash
                following.add(~state if char == "/" else state)
                continue
            if state == end:
                continue
            piece = tokens[state]
            if piece == "**":
                following.add(state)
            elif piece == "*":
                if char != "/":
                    following.add(state)
            elif piece == "**/":
                if char != "/":
                    following.add(~state)
            elif piece == "?":
                if char != "/":
                    following.add(state + 1)
            elif piece == char:
                following.add(state + 1)
        if not following:
            return False
        states = _closure(tokens, following)
    return end in states


@lru_cache(maxsize=4096)
def _matcher(pattern: str) -> Callable[[str], bool]:
    tokens = _tokens(pattern)
    if sum(piece in _STARS for piece in tokens) <= _REGEX_WILDCARDS:
        regex = _regex(tokens)
        return lambda value: regex.match(value) is not None
    return partial(_simulate, tokens)


def glob_match(pattern: str, value: str) -> bool:
    """Doublestar matching: `*` within a path segment, `**` across segments, `**/` zero or more
    whole segments, `?` one character.

    Never exponential: a pattern with at most two wildcards is a regular expression (at most
    quadratic backtracking), any other runs in O(len(value) * len(pattern)) steps.
    """
    return _matcher(pattern)(value)


@dataclass(frozen=True, slots=True)
class RepositoryGrant:
    """Actions on repositories matching `pattern` (relative to the project) in `project`.

    `project == "*"` (system robots only) covers every project.
    """

    project: str
    pattern: str
    actions: frozenset[Action]

    def covers(self, repository: str) -> bool:
        project = project_of(repository)
        if self.project != "*" and self.project != project:
            return False
        relative = repository[len(project) + 1 :] if "/" in repository else ""
        return glob_match(self.pattern, relative) or glob_match(self.pattern, repository)


@dataclass(frozen=True, slots=True)
class SubjectAccess:
    """Everything needed to decide for one subject, loaded once and cached briefly."""

    is_admin: bool = False
    authenticated: bool = False
    personal: bool = False  # a person's account (robots have no password or tokens of their own)
    may_create_projects: bool = False
    project_actions: dict[str, frozenset[Action]] = field(default_factory=dict)
    grants: tuple[RepositoryGrant, ...] = ()
    # Robots and scoped tokens carry an explicit allow-list; None means "no extra limit".
    limit: tuple[RepositoryGrant, ...] | None = None


def _within_limit(
    access: SubjectAccess, action: Action, repository: str | None, project: str
) -> bool:
    if access.limit is None:
        return True
    for grant in access.limit:
        if action not in grant.actions:
            continue
        if repository is None:
            if grant.project in ("*", project):
                return True
        elif grant.covers(repository):
            return True
    return False


def allowed_actions(
    access: SubjectAccess, repository: str, public_projects: Iterable[str] = ()
) -> frozenset[Action]:
    """The repository actions `access` holds on `repository`."""
    return frozenset(
        action
        for action in REPOSITORY_ACTIONS
        if decide(access, action, project_of(repository), repository, public_projects)
    )


# What a public project lets anyone do: pull its images and see the project itself.
_PUBLIC_ACTIONS: Final = frozenset({Action.PULL, Action.READ_PROJECT})


def decide(
    access: SubjectAccess,
    action: Action,
    project: str,
    repository: str | None = None,
    public_projects: Iterable[str] = (),
) -> bool:
    """The one authorization decision: may this subject do `action` in `project`/`repository`?"""
    if not _within_limit(access, action, repository, project):
        return False
    if access.is_admin:
        return True
    if action in _PUBLIC_ACTIONS and project in public_projects:
        return True
    if action in access.project_actions.get(project, frozenset()):
        return True
    if repository is not None:
        return any(action in grant.actions and grant.covers(repository) for grant in access.grants)
    return False


def within_limit(access: SubjectAccess, action: Action, repository: str) -> bool:
    """Whether the credential's own limit (robot allow-list, token scopes) admits the action."""
    return _within_limit(access, action, repository, project_of(repository))


def may_push_new_project(access: SubjectAccess, repository: str) -> bool:
    """A push that would create the repository's (missing) project: allowed to subjects who
    may create projects, within the limits of the credential they signed in with."""
    return (access.is_admin or access.may_create_projects) and _within_limit(
        access, Action.PUSH, repository, project_of(repository)
    )


def holds_all(access: SubjectAccess, project: str | None, actions: Iterable[Action]) -> bool:
    """Nobody grants more than they hold: may this subject hand out, take back or act on
    something that holds `actions` in `project`?

    Every management verb that touches another principal's power (granting a role or grant,
    changing or removing a member, creating, re-scoping, re-enabling, rotating or deleting a
    robot) asks this with the union of what the target holds before and after. Each action must
    be the subject's own across the whole project (a grant on some repositories is not enough).
    System-wide targets (`project` None) are for unrestricted administrators only.
    """
    if access.is_admin and access.limit is None:
        return True
    if project is None:
        return False
    return all(decide(access, action, project) for action in actions)


def decide_system(access: SubjectAccess, action: SystemAction) -> bool:
    if action in (SystemAction.PING, SystemAction.CATALOG):
        return True
    if action is SystemAction.AUTHENTICATED:
        return access.authenticated
    if action is SystemAction.OWN_CREDENTIALS:
        return access.authenticated and access.personal and access.limit is None
    if action is SystemAction.CREATE_PROJECT:
        # Creating a project outright is beyond any allow-list (a push into a missing project
        # within the limit is `may_push_new_project`).
        return (access.is_admin or access.may_create_projects) and access.limit is None
    # A scoped token narrows its user to repositories: it never carries administration.
    return access.is_admin and access.limit is None


def robot_full_name(name: str, project: str | None) -> str:
    """`robot$<project>+<name>` for a project robot, `robot$<name>` for a system robot."""
    return f"robot${project}+{name}" if project else f"robot${name}"
