"""Retention rules, table-driven: which artifacts of a repository stay, which go, and why.

Every case names the rules, the artifacts (digest letter, tags, push and pull age in days,
children, subject, promotion) and the expected set of removed artifacts; a second table checks
the reason given for what stays.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from moorage.domain.immutability import make_rule as immutable_rule
from moorage.domain.retention import (
    MAX_COUNT,
    MAX_DAYS,
    MAX_PATTERNS,
    MAX_RULES,
    Artifact,
    RetentionRule,
    RuleError,
    covers_repository,
    evaluate,
    make_rule,
    validate_rules,
)

NOW = datetime(2026, 6, 1, tzinfo=UTC)
REPO = "team/app"


def d(letter: str) -> str:
    return "sha256:" + letter * 64


@dataclass(frozen=True)
class A:
    letter: str
    tags: tuple[str, ...] = ()
    pushed: float = 1  # days ago
    pulled: float | None = None  # days ago
    children: tuple[str, ...] = ()
    subject: str | None = None
    promoted: str | None = None

    def artifact(self) -> Artifact:
        return Artifact(
            digest=d(self.letter),
            pushed_at=NOW - timedelta(days=self.pushed),
            tags=self.tags,
            pulled_at=None if self.pulled is None else NOW - timedelta(days=self.pulled),
            children=tuple(d(c) for c in self.children),
            subject=None if self.subject is None else d(self.subject),
            promoted_to=self.promoted,
        )


@dataclass(frozen=True)
class Case:
    name: str
    rules: tuple[RetentionRule, ...]
    artifacts: tuple[A, ...]
    removed: str  # letters of the removed artifacts
    immutable: tuple[tuple[str, str, str], ...] = ()  # (repositories, tags, mode)
    repository: str = REPO
    reasons: dict[str, str] = field(default_factory=dict)  # letter -> substring of reason


def latest(n: int, **kw: object) -> RetentionRule:
    return make_rule("latestPushed", n, **kw)  # type: ignore[arg-type]


SIG = "sha256-" + "a" * 64 + ".sig"

CASES = [
    Case(
        "latest pushed keeps the N newest",
        (latest(2),),
        (A("a", ("1",), 5), A("b", ("2",), 4), A("c", ("3",), 3), A("d", ("4",), 2)),
        "ab",
    ),
    Case(
        "ties at the boundary are all kept",
        (latest(2),),
        (A("a", ("1",), 5), A("b", ("2",), 3), A("c", ("3",), 3), A("d", ("4",), 1)),
        "a",
    ),
    Case(
        "all tied: every one kept",
        (latest(1),),
        (A("a", ("1",), 3), A("b", ("2",), 3), A("c", ("3",), 3)),
        "",
    ),
    Case(
        "fewer than N: nothing goes",
        (latest(10),),
        (A("a", ("1",), 5), A("b", ("2",), 4)),
        "",
    ),
    Case(
        "latest pulled ignores never-pulled artifacts",
        (make_rule("latestPulled", 1),),
        (A("a", ("1",), 1), A("b", ("2",), 5, pulled=2), A("c", ("3",), 5, pulled=1)),
        "ab",
    ),
    Case(
        "pushed within days",
        (make_rule("pushedWithinDays", 7),),
        (A("a", ("1",), 8), A("b", ("2",), 7), A("c", ("3",), 6.5)),
        "a",
    ),
    Case(
        "pulled within days (never pulled goes)",
        (make_rule("pulledWithinDays", 7),),
        (A("a", ("1",), 30, pulled=3), A("b", ("2",), 30, pulled=8), A("c", ("3",), 1)),
        "bc",
    ),
    Case(
        "always keeps what it selects",
        (make_rule("always", tags=["v*"]),),
        (A("a", ("v1",), 300), A("b", ("dev",), 1)),
        "b",
    ),
    Case(
        "tag selector: latest 1 of v* keeps the newest v and removes dev",
        (latest(1, tags=["v*"]),),
        (A("a", ("v1",), 3), A("b", ("v2",), 2), A("c", ("dev",), 1)),
        "ac",
    ),
    Case(
        "excluded tags are not selected",
        (make_rule("always", tags=["*"], exclude_tags=["*-rc*"]),),
        (A("a", ("1.0",)), A("b", ("1.1-rc1",))),
        "b",
    ),
    Case(
        "an artifact with one selected tag among others is selected",
        (make_rule("always", tags=["release"]),),
        (A("a", ("dev", "release")), A("b", ("dev",))),
        "b",
    ),
    Case(
        "untagged are removed unless a rule selects them",
        (make_rule("always"),),
        (A("a", ("1",)), A("b")),
        "b",
    ),
    Case(
        "untagged pushed within days: 'delete untagged older than 7 days'",
        (make_rule("always"), make_rule("pushedWithinDays", 7, tags=[], untagged=True)),
        (A("a", ("1",), 100), A("b", (), 8), A("c", (), 2)),
        "b",
    ),
    Case(
        "rules combine with OR",
        (latest(1, tags=["v*"]), make_rule("pulledWithinDays", 3)),
        (A("a", ("v1",), 3, pulled=1), A("b", ("v2",), 2), A("c", ("v3",), 1), A("d", ("x",), 1)),
        "bd",
    ),
    Case(
        "repository not covered by any rule: left alone",
        (latest(1, repositories=["other/**"]),),
        (A("a", ("1",), 5), A("b", ("2",), 4)),
        "",
    ),
    Case(
        "excluded repository: left alone",
        (latest(1, repositories=["**"], exclude_repositories=["app"]),),
        (A("a", ("1",), 5), A("b", ("2",), 4)),
        "",
    ),
    Case(
        "repository patterns are relative to the project",
        (latest(1, repositories=["app"]),),
        (A("a", ("1",), 5), A("b", ("2",), 4)),
        "a",
    ),
    Case(
        "doublestar across segments",
        (latest(1, repositories=["svc/**"]),),
        (A("a", ("1",), 5), A("b", ("2",), 4)),
        "a",
        repository="team/svc/api/v1",
    ),
    Case(
        "a rule that covers another repository does not retain here",
        (latest(5, repositories=["other"]), latest(1, repositories=["app"])),
        (A("a", ("1",), 5), A("b", ("2",), 4)),
        "a",
    ),
    Case(
        "a kept index keeps its untagged children",
        (make_rule("always"),),
        (A("i", ("1",), children=("a", "b")), A("a"), A("b"), A("c")),
        "c",
    ),
    Case(
        "a removed index takes its untagged children, index first",
        (latest(1),),
        (A("i", ("1",), 5, children=("a", "b")), A("a", (), 5), A("b", (), 5), A("j", ("2",), 1)),
        "abi",
    ),
    Case(
        "a child shared with a kept index stays",
        (latest(1),),
        (
            A("i", ("1",), 5, children=("a", "b")),
            A("j", ("2",), 1, children=("b", "c")),
            A("a", (), 5),
            A("b", (), 5),
            A("c", (), 1),
        ),
        "ai",
    ),
    Case(
        "referrers die with their subject",
        (latest(1),),
        (
            A("a", ("1",), 5),
            A("s", (), 1, subject="a"),  # a signature pushed later: not ranked itself
            A("b", ("2",), 2),
            A("t", (), 1, subject="b"),
        ),
        "as",
    ),
    Case(
        "referrers live with their subject even when a rule would drop them",
        (latest(1, untagged=True),),
        (A("a", ("1",), 1), A("s", (), 9, subject="a"), A("u", (), 9, subject="s")),
        "",
    ),
    Case(
        "referrers of referrers follow transitively",
        (latest(1),),
        (A("a", ("1",), 5), A("s", (), 1, subject="a"), A("u", (), 1, subject="s"), A("b", ("2",))),
        "asu",
    ),
    Case(
        "cosign signature tags follow the digest they name",
        (latest(1, tags=["v*"]),),
        (A("a", ("v1",), 5), A("s", (SIG,), 0.1), A("b", ("v2",), 1)),
        "as",
    ),
    Case(
        "a dangling referrer is ranked like any artifact",
        (make_rule("pushedWithinDays", 3, untagged=True),),
        (A("s", (), 1, subject="z"), A("t", (), 9, subject="z")),
        "t",
    ),
    Case(
        "immutable tags are protected",
        (latest(1),),
        (A("a", ("v1",), 5), A("b", ("v2",), 4), A("c", ("v3",), 1)),
        "b",
        immutable=(("**", "v1", "matching"),),
        reasons={"a": "immutable tag v1"},
    ),
    Case(
        "an excluding immutability rule lifts the protection",
        (latest(1),),
        (A("a", ("v1",), 5), A("b", ("v2",), 1)),
        "a",
        immutable=(("**", "v*", "matching"), ("**", "v1", "excluding")),
    ),
    Case(
        "remove_protected lets a rule remove immutable artifacts",
        (latest(1, remove_protected=True),),
        (A("a", ("v1",), 5), A("b", ("v2",), 1)),
        "a",
        immutable=(("**", "v*", "matching"),),
    ),
    Case(
        "remove_protected only for what that rule selects",
        (latest(1, tags=["x*"], remove_protected=True), make_rule("pushedWithinDays", 2)),
        (A("a", ("v1",), 5), A("b", ("x1",), 5), A("c", ("x2",), 1)),
        "b",
        immutable=(("**", "*", "matching"),),
    ),
    Case(
        "promoted artifacts are protected",
        (latest(1),),
        (A("a", ("1",), 5, promoted="prod/app:1"), A("b", ("2",), 3), A("c", ("3",), 1)),
        "b",
        reasons={"a": "promoted to prod/app:1"},
    ),
    Case(
        "a promoted index keeps its children and their referrers",
        (latest(1),),
        (
            A("i", ("1",), 5, children=("a",), promoted="prod/app:1"),
            A("a", (), 5),
            A("s", (), 5, subject="a"),
            A("j", ("2",), 1),
        ),
        "",
    ),
    Case(
        "remove_protected removes promoted",
        (latest(1, remove_protected=True),),
        (A("a", ("1",), 5, promoted="prod/app:1"), A("b", ("2",), 1)),
        "a",
    ),
    Case(
        "an immutable referrer stays though its subject goes",
        (latest(1),),
        (A("a", ("1",), 5), A("s", ("sig-1",), 5, subject="a"), A("b", ("2",), 1)),
        "a",
        immutable=(("**", "sig-*", "matching"),),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_rule_cases(case: Case) -> None:
    rules = tuple(immutable_rule(r, t, m, i) for i, (r, t, m) in enumerate(case.immutable, 1))
    plan = evaluate(
        case.rules,
        case.repository,
        [a.artifact() for a in case.artifacts],
        now=NOW,
        immutable_rules=rules,
    )
    removed = {dec.digest for dec in plan.decisions if not dec.keep}
    assert removed == {d(letter) for letter in case.removed}
    assert set(plan.removals) == removed
    assert len(plan.decisions) == len(case.artifacts)
    for letter, reason in case.reasons.items():
        decision = next(x for x in plan.decisions if x.digest == d(letter))
        assert reason in decision.reason
    _assert_safe_order(case, plan.removals)


def _assert_safe_order(case: Case, order: tuple[str, ...]) -> None:
    """Every removed index and referrer comes before what it points at."""
    position = {digest: index for index, digest in enumerate(order)}
    for a in case.artifacts:
        art = a.artifact()
        if art.digest not in position:
            continue
        targets = [*art.children]
        if art.referred is not None:
            targets.append(art.referred)
        for target in targets:
            if target in position:
                assert position[art.digest] < position[target]


def test_reasons_name_the_rule_or_the_closure() -> None:
    rules = (latest(1, tags=["v*"]), make_rule("always", tags=["keep"]))
    artifacts = [
        A("i", ("v2",), 1, children=("a",)).artifact(),
        A("a").artifact(),
        A("k", ("keep",), 9).artifact(),
        A("s", (), 1, subject="k").artifact(),
        A("o", ("v1",), 9).artifact(),
    ]
    plan = evaluate(rules, REPO, artifacts, now=NOW)
    by = {x.digest: x for x in plan.decisions}
    assert by[d("i")].rule == 1
    assert "rule 1" in by[d("i")].reason
    assert by[d("k")].rule == 2
    assert by[d("a")].keep
    assert "child of kept index" in by[d("a")].reason
    assert by[d("s")].keep
    assert "referrer of kept" in by[d("s")].reason
    assert not by[d("o")].keep
    assert by[d("o")].reason == "no rule retains it"


def test_repository_outside_every_rule_is_reported_kept() -> None:
    plan = evaluate((latest(1, repositories=["x"]),), REPO, [A("a").artifact()], now=NOW)
    assert plan.decisions[0].keep
    assert plan.removals == ()
    assert covers_repository((latest(1, repositories=["app"]),), REPO)
    assert not covers_repository((latest(1, repositories=["app/*"]),), REPO)


BAD_RULES = [
    ("unknown criterion", {"criterion": "newest", "value": 1}),
    ("zero count", {"criterion": "latestPushed", "value": 0}),
    ("negative count", {"criterion": "latestPulled", "value": -3}),
    ("absurd count", {"criterion": "latestPushed", "value": MAX_COUNT + 1}),
    ("count missing", {"criterion": "latestPushed", "value": None}),
    ("bool as count", {"criterion": "latestPushed", "value": True}),
    ("zero days", {"criterion": "pushedWithinDays", "value": 0}),
    ("absurd days", {"criterion": "pulledWithinDays", "value": MAX_DAYS + 1}),
    ("always with a value", {"criterion": "always", "value": 3}),
    ("bad repository pattern", {"criterion": "always", "repositories": ["App/**"]}),
    ("triple star", {"criterion": "always", "repositories": ["***"]}),
    ("empty pattern", {"criterion": "always", "repositories": [""]}),
    ("long pattern", {"criterion": "always", "repositories": ["a" * 256]}),
    ("too many patterns", {"criterion": "always", "tags": ["a"] * (MAX_PATTERNS + 1)}),
    ("bad tag pattern", {"criterion": "always", "tags": ["v/1"]}),
    ("long tag pattern", {"criterion": "always", "tags": ["v" * 129]}),
    ("regex in tag pattern", {"criterion": "always", "tags": ["(a+)+$"]}),
    ("no repositories", {"criterion": "always", "repositories": []}),
    ("selects nothing", {"criterion": "always", "tags": [], "untagged": False}),
]


@pytest.mark.parametrize(("name", "spec"), BAD_RULES, ids=[n for n, _ in BAD_RULES])
def test_bad_rules_are_refused(name: str, spec: dict[str, object]) -> None:
    criterion = spec.pop("criterion")
    value = spec.pop("value", None)
    with pytest.raises(RuleError):
        make_rule(criterion, value, **spec)  # type: ignore[arg-type]


def test_policy_rule_count_is_capped() -> None:
    with pytest.raises(RuleError):
        validate_rules([])
    with pytest.raises(RuleError):
        validate_rules([make_rule("always")] * (MAX_RULES + 1))
    assert len(validate_rules([make_rule("always")] * MAX_RULES)) == MAX_RULES


def test_hostile_patterns_stay_linear() -> None:
    """Many wildcards against long names: matched without backtracking blow-up."""
    rule = make_rule(
        "always",
        repositories=["*a*a*a*a*a*a*a*a*b"],
        tags=["*a*a*a*a*a*a*a*a*a*a*a*b"],
    )
    artifacts = [Artifact(d(f"{i:x}"), NOW, tags=("a" * 127,)) for i in range(16)]
    plan = evaluate((rule,), "team/" + "a" * 200, artifacts, now=NOW)
    assert plan.decisions[0].keep  # the repository is not covered
    covered = make_rule("always", tags=["*a*a*a*a*a*a*a*a*a*a*a*b"])
    plan = evaluate((covered,), REPO, artifacts, now=NOW)
    assert all(not x.keep for x in plan.decisions)  # no tag ends in b


def test_many_artifacts() -> None:
    artifacts = [
        Artifact(f"sha256:{i:064x}", NOW - timedelta(seconds=i), tags=(f"v{i}",))
        for i in range(20_000)
    ]
    plan = evaluate((latest(100),), REPO, artifacts, now=NOW)
    assert sum(not x.keep for x in plan.decisions) == 19_900
    assert len(plan.removals) == 19_900
