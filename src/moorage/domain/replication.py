"""Replication rules as pure values: filters, name mapping, schedules and the retry back-off.

A rule copies images between this registry and a remote one:

- `push` copies local repositories to the remote, `pull` copies remote repositories here;
- a repository is replicated when one `repositories` pattern matches its name and no
  `exclude_repositories` pattern does; a tag likewise with `tags` / `exclude_tags`. Repository
  patterns are doublestar globs (`*` within a segment, `**` across segments, `?` one
  character), tag patterns globs over the tag (`*` any run of characters);
- the destination name is the source name with its first `strip_segments` segments removed and
  `destination_prefix` put in front (`dev/app` with prefix `mirror` and one stripped segment
  becomes `mirror/app`);
- a rule runs on push events (push rules only), on a schedule (an interval in seconds or a
  five-field cron expression), or only when asked to.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Final

from moorage.domain.access import MAX_PATTERN_LENGTH, glob_match, validate_pattern
from moorage.domain.errors import RegistryError
from moorage.domain.names import validate_repository_name

MAX_PATTERNS: Final = 16
MAX_TAG_PATTERN_LENGTH: Final = 128
MAX_STRIP_SEGMENTS: Final = 8
MIN_INTERVAL_SECONDS: Final = 5
MAX_INTERVAL_SECONDS: Final = 366 * 24 * 3600
MAX_CRON_LENGTH: Final = 100
_TAG_GLOB: Final = re.compile(r"^[A-Za-z0-9._*?-]+$")


class Direction(StrEnum):
    PUSH = "push"  # local -> remote
    PULL = "pull"  # remote -> local


class Trigger(StrEnum):
    MANUAL = "manual"
    EVENT = "event"
    SCHEDULE = "schedule"


class EndpointKind(StrEnum):
    MOORAGE = "moorage"  # deletes tags by name
    DISTRIBUTION = "distribution"  # deletes only by digest
    OCI = "oci"  # any other registry: treated like Distribution


class RuleError(ValueError):
    """A rule that cannot be used; the message says why."""


@dataclass(frozen=True, slots=True)
class Filters:
    repositories: tuple[str, ...] = ("**",)
    exclude_repositories: tuple[str, ...] = ()
    tags: tuple[str, ...] = ("*",)
    exclude_tags: tuple[str, ...] = ()

    def repository_matches(self, repository: str) -> bool:
        return any(glob_match(p, repository) for p in self.repositories) and not any(
            glob_match(p, repository) for p in self.exclude_repositories
        )

    def tag_matches(self, tag: str) -> bool:
        return any(glob_match(p, tag) for p in self.tags) and not any(
            glob_match(p, tag) for p in self.exclude_tags
        )

    def literal_repositories(self) -> tuple[str, ...] | None:
        """The repository names when every include pattern is a plain name (no listing of the
        remote catalog is needed then), else None."""
        if any("*" in p or "?" in p for p in self.repositories):
            return None
        return tuple(r for r in self.repositories if self.repository_matches(r))


def validate_filters(filters: Filters) -> Filters:
    for group in (filters.repositories, filters.exclude_repositories):
        if len(group) > MAX_PATTERNS:
            raise RuleError(f"at most {MAX_PATTERNS} patterns per filter")
        for pattern in group:
            try:
                validate_pattern(pattern)
            except ValueError as error:
                raise RuleError(str(error)) from None
    for group in (filters.tags, filters.exclude_tags):
        if len(group) > MAX_PATTERNS:
            raise RuleError(f"at most {MAX_PATTERNS} patterns per filter")
        for pattern in group:
            if len(pattern) > MAX_TAG_PATTERN_LENGTH or not _TAG_GLOB.fullmatch(pattern):
                raise RuleError(
                    "a tag pattern uses letters, digits, '.', '_', '-', '*' and '?' (at most"
                    f" {MAX_TAG_PATTERN_LENGTH} characters)"
                )
    if not filters.repositories or not filters.tags:
        raise RuleError("give at least one repository and one tag pattern")
    return filters


@dataclass(frozen=True, slots=True)
class NameMapping:
    destination_prefix: str | None = None
    strip_segments: int = 0

    def destination(self, source: str) -> str:
        """The destination repository of `source`; RuleError when nothing would remain."""
        segments = source.split("/")
        kept = segments[self.strip_segments :]
        if self.destination_prefix:
            kept = [self.destination_prefix, *kept]
        if not kept:
            raise RuleError(f"stripping {self.strip_segments} segments leaves nothing of {source}")
        name = "/".join(kept)
        try:
            validate_repository_name(name)
        except RegistryError as error:
            raise RuleError(f"{source} maps to an invalid name: {error.message}") from None
        return name


def validate_mapping(mapping: NameMapping, direction: Direction) -> NameMapping:
    if not 0 <= mapping.strip_segments <= MAX_STRIP_SEGMENTS:
        raise RuleError(f"strip_segments must be 0 to {MAX_STRIP_SEGMENTS}")
    prefix = mapping.destination_prefix
    if prefix is not None:
        if len(prefix) > MAX_PATTERN_LENGTH:
            raise RuleError("destination_prefix is too long")
        try:
            validate_repository_name(prefix)
        except RegistryError as error:
            raise RuleError(f"destination_prefix: {error.message}") from None
    if direction is Direction.PULL and not prefix:
        raise RuleError(
            "a pull rule needs a destination_prefix: its first segment names the local project"
        )
    return mapping


# -- schedules


@dataclass(frozen=True, slots=True)
class Schedule:
    """Every `interval_seconds`, or at the times a cron expression names (UTC)."""

    interval_seconds: int | None = None
    cron: str | None = None

    def next_after(self, moment: datetime) -> datetime:
        if self.interval_seconds is not None:
            return moment + timedelta(seconds=self.interval_seconds)
        if self.cron is not None:
            return parse_cron(self.cron).next_after(moment)
        raise RuleError("a schedule needs interval_seconds or cron")


def validate_schedule(schedule: Schedule) -> Schedule:
    if (schedule.interval_seconds is None) == (schedule.cron is None):
        raise RuleError("a scheduled rule needs exactly one of interval_seconds and cron")
    if schedule.interval_seconds is not None and not (
        MIN_INTERVAL_SECONDS <= schedule.interval_seconds <= MAX_INTERVAL_SECONDS
    ):
        raise RuleError(
            f"interval_seconds must be {MIN_INTERVAL_SECONDS} to {MAX_INTERVAL_SECONDS}"
        )
    if schedule.cron is not None:
        parse_cron(schedule.cron)
    return schedule


_CRON_FIELDS: Final = (("minute", 0, 59), ("hour", 0, 23), ("day", 1, 31), ("month", 1, 12))
_WEEKDAY: Final = ("day of week", 0, 6)  # 0 = Sunday, like cron


@dataclass(frozen=True, slots=True)
class Cron:
    """The cron subset: five fields (minute hour day-of-month month day-of-week), each `*`,
    `*/N`, a number, a range `A-B`, or a comma list of those. Day-of-month and day-of-week are
    both required to match (unlike classic cron's OR), which keeps the meaning obvious."""

    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]

    def next_after(self, moment: datetime) -> datetime:
        start = moment.replace(second=0, microsecond=0) + timedelta(minutes=1)
        day = start.replace(hour=0, minute=0)
        for offset in range(366 * 5):
            candidate = day + timedelta(days=offset)
            weekday = (candidate.weekday() + 1) % 7
            if (
                candidate.month not in self.months
                or candidate.day not in self.days
                or weekday not in self.weekdays
            ):
                continue
            for hour in sorted(self.hours):
                for minute in sorted(self.minutes):
                    at = candidate.replace(hour=hour, minute=minute)
                    if at >= start:
                        return at
        raise RuleError("the cron expression never fires")


def _cron_field(text: str, name: str, low: int, high: int) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        step = 1
        if "/" in part:
            part, _, step_text = part.partition("/")
            if not step_text.isdigit() or int(step_text) < 1:
                raise RuleError(f"cron {name}: bad step {step_text!r}")
            step = int(step_text)
        if part == "*":
            first, last = low, high
        elif "-" in part:
            a, _, b = part.partition("-")
            if not (a.isdigit() and b.isdigit()):
                raise RuleError(f"cron {name}: bad range {part!r}")
            first, last = int(a), int(b)
        elif part.isdigit():
            first = last = int(part)
        else:
            raise RuleError(f"cron {name}: bad value {part!r}")
        if not low <= first <= last <= high:
            raise RuleError(f"cron {name}: values must be {low} to {high}")
        values.update(range(first, last + 1, step))
    return frozenset(values)


def parse_cron(expression: str) -> Cron:
    if len(expression) > MAX_CRON_LENGTH:
        raise RuleError("the cron expression is too long")
    fields = expression.split()
    if len(fields) != 5:
        raise RuleError("a cron expression has five fields: minute hour day month weekday")
    parsed = [_cron_field(f, *spec) for f, spec in zip(fields[:4], _CRON_FIELDS, strict=True)]
    weekdays = _cron_field(fields[4], *_WEEKDAY)
    cron = Cron(parsed[0], parsed[1], parsed[2], parsed[3], weekdays)
    cron.next_after(datetime(2000, 1, 1))  # refuses expressions that never fire (31 Feb)
    return cron


# -- retries


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential back-off: `base_seconds` after the first failure, doubling, at most
    `max_seconds`; a task fails for good after `max_attempts` attempts."""

    base_seconds: float
    max_seconds: float
    max_attempts: int

    def delay(self, attempts: int, draw: float = 1.0) -> float:
        """Seconds to wait after the `attempts`-th failed attempt.

        `draw` (a random number in [0, 1]) spreads the wait over its upper half: tasks that
        failed together, because they collided, then do not all retry at the same moment."""
        exponent = min(max(attempts - 1, 0), 32)
        full = float(min(self.max_seconds, self.base_seconds * (2**exponent)))
        return full * (0.5 + 0.5 * min(max(draw, 0.0), 1.0))

    def gives_up(self, attempts: int) -> bool:
        return attempts >= self.max_attempts


# -- execution status


def execution_status(pending: int, running: int, succeeded: int, failed: int) -> str:
    """pending | running | succeeded | failed | partial, from its tasks' states."""
    if pending or running:
        return "running" if running or succeeded or failed else "pending"
    if failed and succeeded:
        return "partial"
    if failed:
        return "failed"
    return "succeeded"
