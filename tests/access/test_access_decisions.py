"""The authorization decision functions on their own: pure, table-driven, no server.

Every expected value here is written by hand from the security model (docs/security.md), never
computed by the code under test, and boundaries (255 characters, two wildcards) are spelled out
instead of imported. scripts/mutation_test.py runs this file against mutants of
moorage.domain.access, so each branch and boundary of the module is pinned by some case below.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Set

import pytest

from moorage.domain.access import (
    REPOSITORY_ACTIONS,
    ROLE_ACTIONS,
    Action,
    PatternError,
    RepositoryGrant,
    Role,
    SubjectAccess,
    SystemAction,
    _matcher,
    _regex,
    _simulate,
    _tokens,
    allowed_actions,
    decide,
    decide_system,
    glob_match,
    holds_all,
    may_push_new_project,
    robot_full_name,
    validate_pattern,
    within_limit,
)

A = Action
ALL = frozenset(Action)
NOTHING: frozenset[Action] = frozenset()


def grant(project: str, pattern: str, *actions: Action) -> RepositoryGrant:
    return RepositoryGrant(project, pattern, frozenset(actions))


def outcome(value: object) -> bool:
    """Decisions are real booleans, not merely truthy values."""
    assert isinstance(value, bool), value
    return value


# -- the vocabulary (the wire format: token scopes, API payloads, stored roles)


def test_action_names() -> None:
    assert [action.value for action in Action] == [
        "pull",
        "push",
        "delete",
        "delete-repository",
        "read-scan",
        "scan",
        "upstream-fetch",
        "promote",
        "read-project",
        "read-members",
        "manage-project",
        "manage-members",
        "manage-robots",
        "manage-policies",
        "manage-webhooks",
        "read-audit",
    ]


def test_system_action_names() -> None:
    assert [action.value for action in SystemAction] == [
        "ping",
        "catalog",
        "authenticated",
        "own-credentials",
        "create-project",
        "admin",
    ]


def test_repository_actions() -> None:
    assert {action.value for action in REPOSITORY_ACTIONS} == {
        "pull",
        "push",
        "delete",
        "delete-repository",
        "read-scan",
        "scan",
        "upstream-fetch",
        "promote",
    }


# The role table of docs/security.md, column by column.
ROLE_TABLE = {
    "limited-guest": {"pull", "read-project"},
    "guest": {"pull", "read-scan", "read-project", "read-members", "read-audit"},
    "developer": {
        "pull",
        "push",
        "read-scan",
        "scan",
        "read-project",
        "read-members",
        "read-audit",
    },
    "maintainer": {
        "pull",
        "push",
        "delete",
        "delete-repository",
        "read-scan",
        "scan",
        "upstream-fetch",
        "promote",
        "read-project",
        "read-members",
        "manage-policies",
        "read-audit",
    },
    "project-admin": {
        "pull",
        "push",
        "delete",
        "delete-repository",
        "read-scan",
        "scan",
        "upstream-fetch",
        "promote",
        "read-project",
        "read-members",
        "manage-project",
        "manage-members",
        "manage-robots",
        "manage-policies",
        "manage-webhooks",
        "read-audit",
    },
}


def test_built_in_roles() -> None:
    assert [role.value for role in Role] == list(ROLE_TABLE)
    assert {
        str(role): {action.value for action in actions} for role, actions in ROLE_ACTIONS.items()
    } == ROLE_TABLE


def test_grants_and_access_are_immutable_and_hashable() -> None:
    """They are cached and shared between requests, and a token's limit is a cache key."""
    repository_grant = grant("team", "app/*", A.PULL)
    access = SubjectAccess(limit=(repository_grant,))
    with pytest.raises(dataclasses.FrozenInstanceError):
        repository_grant.pattern = "**"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        access.is_admin = True  # type: ignore[misc]
    assert hash(repository_grant) == hash(grant("team", "app/*", A.PULL))
    assert hash(access.limit) == hash((grant("team", "app/*", A.PULL),))


def test_an_empty_subject_holds_nothing() -> None:
    access = SubjectAccess()
    assert access.is_admin is False
    assert access.authenticated is False
    assert access.personal is False
    assert access.may_create_projects is False
    assert access.project_actions == {}
    assert access.grants == ()
    assert access.limit is None


@pytest.mark.parametrize(
    ("name", "project", "expected"),
    [
        ("ci", "team", "robot$team+ci"),
        ("mirror", None, "robot$mirror"),
        ("mirror", "", "robot$mirror"),
    ],
)
def test_robot_full_name(name: str, project: str | None, expected: str) -> None:
    assert robot_full_name(name, project) == expected


# -- repository patterns

GLOB_CASES = [
    # `*`: within one segment
    ("app/*", "app/api", True),
    ("app/*", "app/api/v2", False),
    ("app/*", "app/", True),
    ("app/*", "app", False),
    ("app/*", "xapp/api", False),
    ("*", "app", True),
    ("*", "", True),
    ("*", "app/api", False),
    ("*-dev", "app-dev", True),
    ("*-dev", "app-dev/x", False),
    # `**`: across segments
    ("app/**", "app/api", True),
    ("app/**", "app/api/v2", True),
    ("app/**", "app/", True),
    ("app/**", "app", False),
    ("**", "", True),
    ("**", "a/b/c", True),
    ("**api", "app/api", True),
    ("**api", "app/apix", False),
    # `**/`: zero or more whole segments
    ("**/api", "api", True),
    ("**/api", "app/api", True),
    ("**/api", "a/b/api", True),
    ("**/api", "xapi", False),
    ("**/api", "/api", False),
    ("**/api", "app/apix", False),
    ("**/api", "//api", False),  # a segment is never empty
    ("**/", "", True),
    ("**/", "a/", True),
    ("**/", "a", False),
    ("app/**/v2", "app/v2", True),
    ("app/**/v2", "app/x/y/v2", True),
    ("app/**/v2", "app/x/v3", False),
    # `?`: one character, never a slash
    ("?", "a", True),
    ("?", "", False),
    ("?", "ab", False),
    ("?", "/", False),
    ("a?c", "abc", True),
    ("a?c", "a/c", False),
    ("a?c", "ac", False),
    # literals are matched exactly, regex characters included
    ("app", "app", True),
    ("app", "ap", False),
    ("app", "apps", False),
    ("a.b", "a.b", True),
    ("a.b", "axb", False),
    ("a-b", "a-b", True),
    ("", "", True),
    ("", "a", False),
    ("*ab", "aab", True),  # a restart inside the run of `*`
    ("*ab", "abab", True),
    ("*ab", "aba", False),
    # three or more wildcards: the state-set matcher
    ("*ab*c*", "aabc", True),
    ("*ab*c*", "aab/c", False),
    ("**/a*b*c", "//abc", False),
    ("*a*b*c", "abc", True),
    ("*a*b*c", "xxaxxbxxc", True),
    ("*a*b*c", "acb", False),
    ("*a*b*c", "a/b/c", False),
    ("*a*b*", "ab", True),
    ("*a*b*", "ab/", False),
    ("*/*/*", "a/b/c", True),
    ("*/*/*", "a/b", False),
    ("*/*/*", "a/b/c/d", False),
    ("**/a*b*c", "abc", True),
    ("**/a*b*c", "x/y/aXbXc", True),
    ("**/a*b*c", "x/y/aXb/c", False),
    ("**/a/**/b/*", "a/b/c", True),
    ("**/a/**/b/*", "x/a/y/z/b/c", True),
    ("**/a/**/b/*", "x/a/y/z/b/c/d", False),
    ("**/**/**", "", True),
    ("**/**/**", "a/", True),
    ("**/**/**", "a/b", True),
    ("**/**/?", "", False),
    ("**/**/x", "a/b/x", True),
    ("**/**/x", "ax", False),
    ("a**b**c**", "a/b/c/d", True),
    ("a**b**c**", "acb", False),
    ("?*?*?*", "abc", True),
    ("?*?*?*", "ab", False),
    ("?*?*?*", "a/bc", False),
    ("*.*.*", "a.b.c", True),
    ("*.*.*", "aXbXc", False),
    ("*a*a*a*a*a*b", "a" * 200, False),
    ("*a*a*a*a*a*b", "a" * 200 + "b", True),
]


@pytest.mark.parametrize(("pattern", "value", "expected"), GLOB_CASES)
def test_glob_match(pattern: str, value: str, expected: bool) -> None:
    assert outcome(glob_match(pattern, value)) is expected


@pytest.mark.parametrize(("pattern", "value", "expected"), GLOB_CASES)
def test_both_matchers_agree_on_every_pattern(pattern: str, value: str, expected: bool) -> None:
    """The regular expression and the state-set matcher are two engines for one language."""
    tokens = _tokens(pattern)
    assert outcome(_simulate(tokens, value)) is expected
    if len(value) < 100:  # long runs are why the state-set matcher exists: regexes backtrack
        assert (_regex(tokens).match(value) is not None) is expected


def test_tokens() -> None:
    assert _tokens("a/**/b**c*?d") == (
        "a",
        "/",
        "**/",
        "b",
        "**",
        "c",
        "*",
        "?",
        "d",
    )
    assert _tokens("**/**") == ("**/", "**")
    assert _tokens("") == ()


@pytest.mark.parametrize(
    ("pattern", "engine"),
    [
        ("app", "regex"),
        ("app/*", "regex"),
        ("**/app/*", "regex"),  # two wildcards: still a regular expression
        ("a?b?c?d", "regex"),  # `?` never backtracks: it does not count
        ("*a*b*c", "states"),  # three: the linear matcher
        ("**/a/**/b/*", "states"),
    ],
)
def test_at_most_two_wildcards_run_as_a_regular_expression(pattern: str, engine: str) -> None:
    """docs/security.md: up to two wildcards are a regular expression, others run on the
    state-set matcher, whose cost is linear in the name."""
    matcher = _matcher(pattern)
    assert isinstance(matcher, functools.partial) is (engine == "states")


def test_a_pathological_pattern_answers() -> None:
    # Exponential backtracking would take far longer than any test run allows.
    assert glob_match("*a*a*a*a*a*a*a*a*b", "a" * 5000) is False


@pytest.mark.parametrize(
    "pattern",
    [
        "app",
        "app/*",
        "app/**",
        "**/api",
        "a?c",
        "team-a/app_1.2/*",
        "0123456789abcdefghijklmnopqrstuvwxyz._/*?-",
        "a" * 255,
        "**",
    ],
)
def test_valid_patterns(pattern: str) -> None:
    assert validate_pattern(pattern) == pattern


@pytest.mark.parametrize(
    "pattern",
    ["", "a" * 256, "App", "app name", "app@1", "app\n", "app/[ab]", "app/é", "a\\b"],
)
def test_invalid_patterns(pattern: str) -> None:
    with pytest.raises(
        PatternError,
        match=r"^a repository pattern uses lowercase names, '/', '\*', '\*\*' and '\?' \(at"
        r" most 255 characters\)$",
    ):
        validate_pattern(pattern)


@pytest.mark.parametrize("pattern", ["***", "app/***", "a****"])
def test_three_stars_are_refused(pattern: str) -> None:
    with pytest.raises(PatternError, match=r"^'\*\*\*' is not a valid wildcard$"):
        validate_pattern(pattern)


# -- grants

COVERS_CASES = [
    # (grant project, pattern, repository, covered)
    ("team", "app/*", "team/app/api", True),
    ("team", "app/*", "team/app/api/v2", False),
    ("team", "app/*", "other/app/api", False),
    ("team", "app/*", "teamx/app/api", False),
    ("team", "app/**", "team/app/api/v2", True),
    ("team", "app/**", "team/app", False),
    ("team", "**", "team/anything/at/all", True),
    ("team", "**", "team", True),  # a repository named like its project
    ("team", "**/", "team", True),  # its path inside the project is empty
    ("team", "*", "team", True),
    ("team", "?", "team", False),
    ("team", "app", "team/app", True),
    ("team", "app", "team/app/api", False),
    ("team", "team/app/*", "team/app/api", True),  # a pattern may name the project too
    ("team", "team/app/*", "team/other/api", False),
    ("team", "**", "other/app", False),
    ("*", "**", "any/app/api", True),  # system robots: every project
    ("*", "app/*", "any/app/api", True),
    ("*", "app/*", "any/lib/api", False),
]


@pytest.mark.parametrize(("project", "pattern", "repository", "expected"), COVERS_CASES)
def test_grant_covers(project: str, pattern: str, repository: str, expected: bool) -> None:
    assert outcome(grant(project, pattern, A.PULL).covers(repository)) is expected


# -- subjects

TEAM_APP = "team/app/api"
DEVELOPER_ACTIONS = frozenset(
    {A.PULL, A.PUSH, A.READ_SCAN, A.SCAN, A.READ_PROJECT, A.READ_MEMBERS, A.READ_AUDIT}
)
GUEST_ACTIONS = frozenset({A.PULL, A.READ_SCAN, A.READ_PROJECT, A.READ_MEMBERS, A.READ_AUDIT})
REPOSITORY = frozenset(
    {A.PULL, A.PUSH, A.DELETE, A.DELETE_REPOSITORY, A.READ_SCAN, A.SCAN, A.UPSTREAM_FETCH}
    | {A.PROMOTE}
)

ANONYMOUS = SubjectAccess()
ADMIN = SubjectAccess(is_admin=True, authenticated=True, personal=True)
# An administrator's token scoped to pulls of team/app/*.
ADMIN_SCOPED = SubjectAccess(
    is_admin=True, authenticated=True, personal=True, limit=(grant("team", "app/*", A.PULL),)
)
DEVELOPER = SubjectAccess(
    authenticated=True, personal=True, project_actions={"team": DEVELOPER_ACTIONS}
)
GUEST_AND_OWNER = SubjectAccess(
    authenticated=True,
    personal=True,
    may_create_projects=True,
    project_actions={"team": GUEST_ACTIONS, "own": ALL},
)
# A custom role: promote only (a release role), and one that manages robots but cannot pull.
RELEASER = SubjectAccess(
    authenticated=True, project_actions={"team": frozenset({A.PROMOTE, A.READ_PROJECT})}
)
ROBOT_KEEPER = SubjectAccess(
    authenticated=True, project_actions={"team": frozenset({A.MANAGE_ROBOTS})}
)
# Robots: an allow-list of grants (no role).
ROBOT = SubjectAccess(
    authenticated=True,
    grants=(grant("team", "app/**", A.PULL, A.PUSH), grant("team", "lib/*", A.PULL)),
)
SYSTEM_ROBOT = SubjectAccess(authenticated=True, grants=(grant("*", "**", A.PULL, A.READ_SCAN),))
# A maintainer of team whose personal access token is scoped to push/pull of team/app/*.
REPO_TOKEN = SubjectAccess(
    authenticated=True,
    personal=True,
    project_actions={"team": ROLE_ACTIONS[Role.MAINTAINER]},
    limit=(grant("team", "app/*", A.PULL, A.PUSH),),
)
# The same maintainer, token scoped to the whole project.
PROJECT_TOKEN = SubjectAccess(
    authenticated=True,
    project_actions={"team": ROLE_ACTIONS[Role.MAINTAINER]},
    limit=(grant("team", "**", A.PULL, A.PUSH, A.READ_PROJECT),),
)
# A token scoped to every project (`*`), for pulls and reading projects.
STAR_TOKEN = SubjectAccess(
    authenticated=True,
    project_actions={"team": ROLE_ACTIONS[Role.MAINTAINER], "other": GUEST_ACTIONS},
    limit=(grant("*", "**", A.PULL, A.READ_PROJECT),),
)
# A token with no scopes at all: it can do nothing.
EMPTY_TOKEN = SubjectAccess(
    is_admin=True, authenticated=True, personal=True, project_actions={"team": ALL}, limit=()
)

PUBLIC = ("team",)

# (case, subject, project, repository, public projects, the actions it holds there)
DECIDE_CASES: list[tuple[str, SubjectAccess, str, str | None, Iterable[str], Set[A]]] = [
    ("anonymous, private", ANONYMOUS, "team", TEAM_APP, (), NOTHING),
    ("anonymous, private project", ANONYMOUS, "team", None, (), NOTHING),
    ("anonymous, public", ANONYMOUS, "team", TEAM_APP, PUBLIC, frozenset({A.PULL, A.READ_PROJECT})),
    ("anonymous, public project", ANONYMOUS, "team", None, PUBLIC, {A.PULL, A.READ_PROJECT}),
    ("anonymous, other is public", ANONYMOUS, "team", TEAM_APP, ("other",), NOTHING),
    (
        "anonymous, public set",
        ANONYMOUS,
        "team",
        TEAM_APP,
        frozenset(PUBLIC),
        {A.PULL, A.READ_PROJECT},
    ),
    ("admin", ADMIN, "team", TEAM_APP, (), ALL),
    ("admin, project", ADMIN, "team", None, (), ALL),
    ("admin, missing project", ADMIN, "nowhere", "nowhere/x", (), ALL),
    ("admin scoped, in scope", ADMIN_SCOPED, "team", TEAM_APP, (), {A.PULL}),
    ("admin scoped, out of scope", ADMIN_SCOPED, "team", "team/lib/x", (), NOTHING),
    ("admin scoped, other project", ADMIN_SCOPED, "other", "other/app/api", (), NOTHING),
    ("admin scoped, project", ADMIN_SCOPED, "team", None, (), {A.PULL}),
    ("admin scoped, public", ADMIN_SCOPED, "team", "team/lib/x", PUBLIC, NOTHING),
    ("developer", DEVELOPER, "team", TEAM_APP, (), DEVELOPER_ACTIONS),
    ("developer, project", DEVELOPER, "team", None, (), DEVELOPER_ACTIONS),
    ("developer, other project", DEVELOPER, "other", "other/app", (), NOTHING),
    (
        "developer, other public",
        DEVELOPER,
        "other",
        "other/app",
        ("other",),
        {A.PULL, A.READ_PROJECT},
    ),
    ("developer, public own", DEVELOPER, "team", TEAM_APP, PUBLIC, DEVELOPER_ACTIONS),
    ("guest and owner, team", GUEST_AND_OWNER, "team", TEAM_APP, (), GUEST_ACTIONS),
    ("guest and owner, own", GUEST_AND_OWNER, "own", "own/app", (), ALL),
    ("releaser", RELEASER, "team", TEAM_APP, (), {A.PROMOTE, A.READ_PROJECT}),
    ("robot keeper", ROBOT_KEEPER, "team", None, (), {A.MANAGE_ROBOTS}),
    ("robot keeper, repository", ROBOT_KEEPER, "team", TEAM_APP, (), {A.MANAGE_ROBOTS}),
    ("robot, app", ROBOT, "team", TEAM_APP, (), {A.PULL, A.PUSH}),
    ("robot, app deep", ROBOT, "team", "team/app/api/v2", (), {A.PULL, A.PUSH}),
    ("robot, lib", ROBOT, "team", "team/lib/x", (), {A.PULL}),
    ("robot, lib deep", ROBOT, "team", "team/lib/x/y", (), NOTHING),
    ("robot, other repository", ROBOT, "team", "team/web", (), NOTHING),
    ("robot, other project", ROBOT, "other", "other/app/api", (), NOTHING),
    ("robot, project", ROBOT, "team", None, (), NOTHING),
    ("robot, public", ROBOT, "team", "team/web", PUBLIC, {A.PULL, A.READ_PROJECT}),
    ("system robot", SYSTEM_ROBOT, "any", "any/thing/deep", (), {A.PULL, A.READ_SCAN}),
    ("system robot, project", SYSTEM_ROBOT, "any", None, (), NOTHING),
    ("repo token, in scope", REPO_TOKEN, "team", TEAM_APP, (), {A.PULL, A.PUSH}),
    ("repo token, deeper", REPO_TOKEN, "team", "team/app/api/v2", (), NOTHING),
    ("repo token, out of scope", REPO_TOKEN, "team", "team/lib/x", (), NOTHING),
    ("repo token, project", REPO_TOKEN, "team", None, (), {A.PULL, A.PUSH}),
    ("repo token, other project", REPO_TOKEN, "other", None, (), NOTHING),
    ("repo token, public", REPO_TOKEN, "team", "team/lib/x", PUBLIC, NOTHING),
    ("project token", PROJECT_TOKEN, "team", "team/lib/x/y", (), {A.PULL, A.PUSH, A.READ_PROJECT}),
    ("project token, project", PROJECT_TOKEN, "team", None, (), {A.PULL, A.PUSH, A.READ_PROJECT}),
    ("project token, other", PROJECT_TOKEN, "other", "other/x", ("other",), NOTHING),
    ("star token, team", STAR_TOKEN, "team", TEAM_APP, (), {A.PULL, A.READ_PROJECT}),
    ("star token, other", STAR_TOKEN, "other", "other/x", (), {A.PULL, A.READ_PROJECT}),
    ("star token, other project", STAR_TOKEN, "other", None, (), {A.PULL, A.READ_PROJECT}),
    ("star token, no role", STAR_TOKEN, "third", "third/x", (), NOTHING),
    ("star token, public", STAR_TOKEN, "third", None, ("third",), {A.PULL, A.READ_PROJECT}),
    ("empty token", EMPTY_TOKEN, "team", TEAM_APP, PUBLIC, NOTHING),
    ("empty token, project", EMPTY_TOKEN, "team", None, PUBLIC, NOTHING),
]


@pytest.mark.parametrize(
    ("subject", "project", "repository", "public", "expected"),
    [pytest.param(*case[1:], id=case[0]) for case in DECIDE_CASES],
)
def test_decide(
    subject: SubjectAccess,
    project: str,
    repository: str | None,
    public: Iterable[str],
    expected: Set[Action],
) -> None:
    held = {
        action for action in Action if outcome(decide(subject, action, project, repository, public))
    }
    assert held == set(expected)


def test_decide_defaults_to_no_repository_and_no_public_projects() -> None:
    assert decide(ROBOT, A.PULL, "team") is False
    assert decide(DEVELOPER, A.PUSH, "team") is True
    assert decide(ANONYMOUS, A.PULL, "team") is False
    assert decide(REPO_TOKEN, A.PUSH, "team") is True


@pytest.mark.parametrize(
    ("subject", "repository", "public", "expected"),
    [
        pytest.param(case[1], case[3], case[4], case[5] & REPOSITORY, id=case[0])
        for case in DECIDE_CASES
        if case[3] is not None and case[2] == case[3].split("/")[0]
    ],
)
def test_allowed_actions(
    subject: SubjectAccess, repository: str, public: Iterable[str], expected: Set[Action]
) -> None:
    assert allowed_actions(subject, repository, public) == expected


def test_allowed_actions_default_to_no_public_projects() -> None:
    assert allowed_actions(ANONYMOUS, TEAM_APP) == NOTHING
    assert allowed_actions(ROBOT, "team/lib/x") == {A.PULL}


@pytest.mark.parametrize(
    ("subject", "action", "repository", "expected"),
    [
        (ADMIN, A.DELETE, TEAM_APP, True),  # no limit: nothing to narrow
        (ANONYMOUS, A.PUSH, TEAM_APP, True),
        (ADMIN_SCOPED, A.PULL, TEAM_APP, True),
        (ADMIN_SCOPED, A.PUSH, TEAM_APP, False),
        (ADMIN_SCOPED, A.PULL, "team/lib/x", False),
        (ADMIN_SCOPED, A.PULL, "other/app/x", False),
        (REPO_TOKEN, A.PUSH, TEAM_APP, True),
        (REPO_TOKEN, A.PUSH, "team/app/api/v2", False),
        (REPO_TOKEN, A.PUSH, "team/web", False),
        (REPO_TOKEN, A.DELETE, TEAM_APP, False),
        (PROJECT_TOKEN, A.PUSH, "team/x/y/z", True),
        (PROJECT_TOKEN, A.PUSH, "other/x", False),
        (STAR_TOKEN, A.PULL, "anything/x", True),
        (STAR_TOKEN, A.PUSH, "anything/x", False),
        (EMPTY_TOKEN, A.PULL, TEAM_APP, False),
        # the limit alone: a scoped token of someone who holds nothing there still fits it
        (SubjectAccess(limit=(grant("team", "app/*", A.PULL),)), A.PULL, TEAM_APP, True),
    ],
)
def test_within_limit(
    subject: SubjectAccess, action: Action, repository: str, expected: bool
) -> None:
    assert outcome(within_limit(subject, action, repository)) is expected


@pytest.mark.parametrize(
    ("subject", "repository", "expected"),
    [
        (ADMIN, "new/app", True),
        (SubjectAccess(is_admin=True, may_create_projects=True), "new/app", True),
        (ANONYMOUS, "new/app", False),
        (DEVELOPER, "new/app", False),  # project creation is for admins
        (GUEST_AND_OWNER, "new/app", True),  # ... unless everyone signed in may create
        (SubjectAccess(may_create_projects=True, limit=()), "new/app", False),
        (
            SubjectAccess(may_create_projects=True, limit=(grant("new", "**", A.PUSH),)),
            "new/app",
            True,
        ),
        (
            SubjectAccess(may_create_projects=True, limit=(grant("new", "**", A.PULL),)),
            "new/app",
            False,
        ),
        (
            SubjectAccess(is_admin=True, limit=(grant("other", "**", A.PUSH),)),
            "new/app",
            False,
        ),
        (
            SubjectAccess(is_admin=True, limit=(grant("new", "app/*", A.PUSH),)),
            "new/lib/x",
            False,
        ),
        (
            SubjectAccess(is_admin=True, limit=(grant("*", "**", A.PUSH),)),
            "new/lib/x",
            True,
        ),
    ],
)
def test_may_push_new_project(subject: SubjectAccess, repository: str, expected: bool) -> None:
    assert outcome(may_push_new_project(subject, repository)) is expected


S = SystemAction
SYSTEM_CASES: list[tuple[str, SubjectAccess, set[SystemAction]]] = [
    ("anonymous", ANONYMOUS, {S.PING, S.CATALOG}),
    ("user", DEVELOPER, {S.PING, S.CATALOG, S.AUTHENTICATED, S.OWN_CREDENTIALS}),
    (
        "user who may create projects",
        GUEST_AND_OWNER,
        {S.PING, S.CATALOG, S.AUTHENTICATED, S.OWN_CREDENTIALS, S.CREATE_PROJECT},
    ),
    ("admin", ADMIN, set(SystemAction)),
    # a scoped token carries no administration, no project creation, no own credentials
    ("admin with a scoped token", ADMIN_SCOPED, {S.PING, S.CATALOG, S.AUTHENTICATED}),
    ("admin token without scopes", EMPTY_TOKEN, {S.PING, S.CATALOG, S.AUTHENTICATED}),
    ("scoped token", REPO_TOKEN, {S.PING, S.CATALOG, S.AUTHENTICATED}),
    (
        "scoped token who may create projects",
        SubjectAccess(authenticated=True, personal=True, may_create_projects=True, limit=()),
        {S.PING, S.CATALOG, S.AUTHENTICATED},
    ),
    # robots have no password or tokens of their own
    ("robot", ROBOT, {S.PING, S.CATALOG, S.AUTHENTICATED}),
    # flags on their own, whatever combination a loader produces
    (
        "admin flag only",
        SubjectAccess(is_admin=True),
        {S.PING, S.CATALOG, S.CREATE_PROJECT, S.ADMIN},
    ),
    (
        "may create only",
        SubjectAccess(may_create_projects=True),
        {S.PING, S.CATALOG, S.CREATE_PROJECT},
    ),
    ("personal only", SubjectAccess(personal=True), {S.PING, S.CATALOG}),
    ("unauthenticated, limited", SubjectAccess(limit=()), {S.PING, S.CATALOG}),
]


@pytest.mark.parametrize(
    ("subject", "expected"), [pytest.param(case[1], case[2], id=case[0]) for case in SYSTEM_CASES]
)
def test_decide_system(subject: SubjectAccess, expected: set[SystemAction]) -> None:
    held = {action for action in SystemAction if outcome(decide_system(subject, action))}
    assert held == expected


@pytest.mark.parametrize(
    ("subject", "project", "actions", "expected"),
    [
        pytest.param(ADMIN, None, {A.PUSH}, True, id="admin, system-wide"),
        pytest.param(ADMIN, "team", ALL, True, id="admin"),
        pytest.param(ADMIN, "nowhere", ALL, True, id="admin, any project"),
        pytest.param(ADMIN_SCOPED, None, NOTHING, False, id="scoped admin, system-wide"),
        pytest.param(ADMIN_SCOPED, "team", {A.PULL}, True, id="scoped admin, within"),
        pytest.param(ADMIN_SCOPED, "team", {A.PULL, A.PUSH}, False, id="scoped admin, beyond"),
        pytest.param(DEVELOPER, "team", {A.PULL, A.PUSH}, True, id="developer, held"),
        pytest.param(DEVELOPER, "team", {A.PULL, A.DELETE}, False, id="developer, one more"),
        pytest.param(DEVELOPER, "team", NOTHING, True, id="developer, nothing"),
        pytest.param(DEVELOPER, None, NOTHING, False, id="developer, system-wide"),
        pytest.param(DEVELOPER, "other", {A.PULL}, False, id="developer, other project"),
        pytest.param(ROBOT_KEEPER, "team", {A.PULL}, False, id="robot keeper cannot climb"),
        pytest.param(GUEST_AND_OWNER, "own", ALL, True, id="project admin"),
        # repository grants are not the whole project's
        pytest.param(ROBOT, "team", {A.PULL}, False, id="robot with repository grants"),
        pytest.param(REPO_TOKEN, "team", {A.PULL}, True, id="scoped token, within"),
        pytest.param(REPO_TOKEN, "team", {A.DELETE}, False, id="scoped token, beyond"),
        pytest.param(ANONYMOUS, "team", {A.PULL}, False, id="anonymous"),
    ],
)
def test_holds_all(
    subject: SubjectAccess, project: str | None, actions: Set[Action], expected: bool
) -> None:
    assert outcome(holds_all(subject, project, actions)) is expected
