"""The pure parts of replication: filters, name mapping, schedules, back-off, run status."""

from __future__ import annotations

from datetime import datetime

import pytest

from moorage.domain.replication import (
    Backoff,
    Direction,
    Filters,
    NameMapping,
    RuleError,
    Schedule,
    execution_status,
    parse_cron,
    validate_filters,
    validate_mapping,
    validate_schedule,
)


def test_repository_filters_are_doublestar_globs_with_exclusions() -> None:
    filters = Filters(repositories=("dev/**",), exclude_repositories=("dev/tmp/**",))
    assert filters.repository_matches("dev/app")
    assert filters.repository_matches("dev/team/app")
    assert not filters.repository_matches("dev/tmp/x")
    assert not filters.repository_matches("prod/app")
    one_level = Filters(repositories=("dev/*",))
    assert one_level.repository_matches("dev/app")
    assert not one_level.repository_matches("dev/team/app")


def test_tag_filters_include_and_exclude() -> None:
    filters = Filters(tags=("v*", "latest"), exclude_tags=("*-rc?",))
    assert filters.tag_matches("v1.2")
    assert filters.tag_matches("latest")
    assert not filters.tag_matches("v1.2-rc1")
    assert filters.tag_matches("v1.2-rc10")  # `?` is exactly one character
    assert not filters.tag_matches("main")


def test_plain_names_need_no_catalog_listing() -> None:
    assert Filters(repositories=("lib/a", "lib/b")).literal_repositories() == ("lib/a", "lib/b")
    assert Filters(repositories=("lib/*",)).literal_repositories() is None


@pytest.mark.parametrize(
    "filters",
    [
        Filters(repositories=("UPPER",)),
        Filters(repositories=()),
        Filters(tags=("bad tag",)),
        Filters(tags=tuple(f"t{i}" for i in range(17))),
    ],
)
def test_bad_filters_are_refused(filters: Filters) -> None:
    with pytest.raises(RuleError):
        validate_filters(filters)


def test_destination_names_strip_segments_and_add_a_prefix() -> None:
    assert NameMapping().destination("dev/app") == "dev/app"
    assert NameMapping("mirror", 1).destination("dev/team/app") == "mirror/team/app"
    assert NameMapping("local").destination("library/alpine") == "local/library/alpine"
    with pytest.raises(RuleError):
        NameMapping(None, 2).destination("dev/app")


def test_pull_rules_need_a_local_project_prefix() -> None:
    with pytest.raises(RuleError):
        validate_mapping(NameMapping(), Direction.PULL)
    assert validate_mapping(NameMapping("mirror"), Direction.PULL).destination_prefix == "mirror"
    with pytest.raises(RuleError):
        validate_mapping(NameMapping("Not Valid"), Direction.PUSH)


def test_cron_subset_finds_the_next_time() -> None:
    start = datetime(2026, 12, 4, 10, 7)  # a Friday
    assert parse_cron("*/15 * * * *").next_after(start) == datetime(2026, 12, 4, 10, 15)
    assert parse_cron("30 2 * * *").next_after(start) == datetime(2026, 12, 5, 2, 30)
    # Weekdays only: Friday 10:07 -> Monday 03:00.
    assert parse_cron("0 3 * * 1-5").next_after(start) == datetime(2026, 12, 7, 3, 0)
    assert parse_cron("0 0 1 1 *").next_after(start) == datetime(2027, 1, 1, 0, 0)
    assert parse_cron("5,10 * * * *").next_after(start) == datetime(2026, 12, 4, 10, 10)


@pytest.mark.parametrize(
    "expression", ["* * * *", "61 * * * *", "*/0 * * * *", "a * * * *", "0 0 31 2 *", "5-1 * * * *"]
)
def test_bad_cron_expressions_are_refused(expression: str) -> None:
    with pytest.raises(RuleError):
        parse_cron(expression)


def test_schedules_need_exactly_one_of_interval_and_cron() -> None:
    with pytest.raises(RuleError):
        validate_schedule(Schedule())
    with pytest.raises(RuleError):
        validate_schedule(Schedule(60, "* * * * *"))
    with pytest.raises(RuleError):
        validate_schedule(Schedule(1))
    start = datetime(2026, 1, 1)
    assert validate_schedule(Schedule(60)).next_after(start) == datetime(2026, 1, 1, 0, 1)


def test_back_off_doubles_up_to_a_cap_and_gives_up() -> None:
    backoff = Backoff(base_seconds=2, max_seconds=10, max_attempts=4)
    assert [backoff.delay(n) for n in range(1, 6)] == [2, 4, 8, 10, 10]
    assert backoff.delay(10_000) == 10
    # A random draw spreads each wait over its upper half, never beyond the cap.
    assert [backoff.delay(3, draw) for draw in (0.0, 0.5, 1.0)] == [4, 6, 8]
    assert backoff.delay(10_000, 0.0) == 5
    assert backoff.delay(2, 7.0) == 4
    assert backoff.delay(2, -1.0) == 2
    assert not backoff.gives_up(3)
    assert backoff.gives_up(4)


def test_execution_status_from_task_counts() -> None:
    assert execution_status(0, 0, 0, 0) == "succeeded"
    assert execution_status(2, 0, 0, 0) == "pending"
    assert execution_status(1, 1, 0, 0) == "running"
    assert execution_status(1, 0, 1, 0) == "running"
    assert execution_status(0, 0, 3, 0) == "succeeded"
    assert execution_status(0, 0, 0, 2) == "failed"
    assert execution_status(0, 0, 2, 1) == "partial"
