"""A tag pushed while a retention run deletes is never lost: the run's deletion re-checks the
manifest's tags at delete:manifest, and the registry's delete insists that what the check read
still holds when it writes (in process, on SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from moorage.domain.events import Actor
from moorage.domain.policy import DecisionPoint
from moorage.domain.retention import make_rule
from moorage.metadata.database import make_engine
from moorage.metadata.lifecycle.pull_store import PullStore
from moorage.metadata.lifecycle.retention_store import RetentionStore
from moorage.services.events import EventBus
from moorage.services.lifecycle.retention import RetentionService
from tests.registry.test_immutable_tags import Registry

ADMIN = Actor(name="admin", kind="user")


@pytest.fixture
def registry(tmp_path: Path, metadata_url: str) -> Iterator[tuple[Registry, RetentionService]]:
    registry = Registry(tmp_path, metadata_url)
    engine = make_engine(metadata_url, pool_size=2)
    service = RetentionService(
        RetentionStore(engine),
        PullStore(engine),
        registry.metadata,
        registry.service,
        registry.immutability,
        registry.policies,
        registry.threads,
        EventBus(),
    )
    yield registry, service
    engine.dispose()
    registry.close()


@pytest.mark.parametrize("dry_run", [True, False])
def test_a_tag_pushed_between_check_and_delete_keeps_its_manifest(
    registry: tuple[Registry, RetentionService], dry_run: bool
) -> None:
    reg, service = registry
    old, new = reg.manifest("team/app"), reg.manifest("team/app")
    reg.store("team/app", old, "old")
    reg.store("team/app", new, "new")

    async def scenario() -> list[tuple[str, str, str]]:
        rules = (make_rule("latestPushed", 1),)
        immutable = await reg.threads.run(reg.immutability.rules_of, "team")
        plan = await service._plan(rules, "team/app", immutable, datetime.now(UTC))
        assert plan.removals == (old.digest,)
        # Another client tags the old manifest right after the delete checks decided.
        reg.once_after_checks(
            DecisionPoint.DELETE_MANIFEST, lambda: reg.store("team/app", old, "hotfix")
        )
        decided = await service._carry_out(ADMIN, plan, dry_run=dry_run)
        return [(d.digest, d.outcome, d.reason) for d in decided]

    decided = {digest: (outcome, reason) for digest, outcome, reason in asyncio.run(scenario())}
    if dry_run:
        # The dry run checks once; the tag arrives after its check: it would remove.
        assert decided[old.digest][0] == "would-remove"
    else:
        assert decided[old.digest][0] == "skipped"
        assert "hotfix" in decided[old.digest][1]
    assert reg.metadata.manifest_tags("team/app", old.digest) == ["hotfix", "old"]


def test_a_tag_pushed_after_evaluation_is_skipped(
    registry: tuple[Registry, RetentionService],
) -> None:
    reg, service = registry
    old, new = reg.manifest("team/app"), reg.manifest("team/app")
    reg.store("team/app", old, "old")
    reg.store("team/app", new, "new")

    async def scenario() -> dict[str, str]:
        plan = await service._plan(
            (make_rule("latestPushed", 1),), "team/app", (), datetime.now(UTC)
        )
        reg.store("team/app", old, "again")
        decided = await service._carry_out(ADMIN, plan, dry_run=False)
        return {d.digest: d.outcome for d in decided}

    assert asyncio.run(scenario()) == {old.digest: "skipped", new.digest: "kept"}
    assert sorted(reg.metadata.manifest_tags("team/app", old.digest)) == ["again", "old"]
