"""Periodic jobs fire once per deployment, not once per node: two nodes with audit retention on
both start their prune at boot; one prunes (an `audit:prune` entry), the other logs that it is
another node's turn."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.api import api_client
from tests.support.nodes import Nodes
from tests.support.server import RegistryProcess
from tests.support.services import RedisServer
from tests.support.wait import wait_until

pytestmark = pytest.mark.tools("redis-server")

SKIPPED = "periodic job audit-prune: not this node's turn"


def prunes(node: RegistryProcess) -> int:
    with api_client(node) as admin:
        response = admin.get("/audit-logs", params={"action": "audit:prune", "limit": 100})
        assert response.status_code == 200, response.text
        return len(response.json())


def test_the_audit_prune_runs_on_one_node_of_two(tmp_path: Path) -> None:
    with (
        RedisServer() as redis,
        Nodes(tmp_path, redis.url, env={"MOORAGE_AUDIT_RETENTION_DAYS": "30"}) as nodes,
    ):
        # Both nodes have decided: one pruned, the other skipped its turn.
        wait_until(
            lambda: prunes(nodes[0]) >= 1 and any(SKIPPED in node.logs() for node in nodes),
            60,
            lambda: "one prune and one skipped turn:\n" + "\n".join(n.logs() for n in nodes),
        )
        assert prunes(nodes[1]) == 1
        assert sum(SKIPPED in node.logs() for node in nodes) == 1


def test_without_redis_each_machine_prunes_on_its_own(tmp_path: Path) -> None:
    """The embedded default is unchanged: no Redis, the node's worker 0 prunes."""
    with Nodes(tmp_path, None, env={"MOORAGE_AUDIT_RETENTION_DAYS": "30"}).start(1)[0] as node:
        wait_until(lambda: prunes(node) == 1, 60, "the prune at start")
        assert SKIPPED not in node.logs()
