"""A scheduled retention policy fires once per deployment: two nodes (Redis, one database),
both looking for due policies every second, one run per cron firing; and the pulls served by
either node count for `latestPulled`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.api import api_client, create_project, eventually
from tests.support.auth import RegistryAuth
from tests.support.nodes import Nodes
from tests.support.oci import push_image
from tests.support.services import RedisServer

pytestmark = pytest.mark.tools("redis-server")


def test_two_nodes_run_each_firing_once(tmp_path: Path) -> None:
    env = {"MOORAGE_RETENTION_CHECK_SECONDS": "1", "MOORAGE_PULL_FLUSH_SECONDS": "0.2"}
    with RedisServer() as redis, Nodes(tmp_path, redis.url, env=env) as nodes:
        with api_client(nodes[0]) as admin:
            project = create_project(admin, "retnodes")
        app = f"{project}/app"
        with httpx.Client(base_url=nodes[1].url, timeout=30, auth=RegistryAuth()) as v2:
            images = [push_image(v2, app, f"v{i}") for i in range(3)]
            # Pulled through node 1 only: the policy keeps it.
            pulled = v2.get(f"/v2/{app}/manifests/v0", headers={"Accept": images[0].media_type})
            assert pulled.status_code == 200
        rules = [
            {"criterion": "latestPulled", "count": 1},
            {"criterion": "latestPushed", "count": 1},
        ]
        with api_client(nodes[0]) as admin:
            path = f"/projects/{project}/retention-policy"
            assert admin.put(path, json={"rules": rules}).status_code == 201

            def pull_recorded() -> bool:
                dry = admin.post(f"/projects/{project}/retention-runs", json={"dryRun": True})
                assert dry.status_code == 201, dry.text
                return bool(dry.json()["removed"] == 1)

            eventually(pull_recorded, what="node 1's pull to be recorded")
            response = admin.put(path, json={"rules": rules, "cron": "* * * * *"})
            assert response.status_code == 200, response.text

            def scheduled() -> list[dict[str, Any]]:
                runs = admin.get(f"/projects/{project}/retention-runs").json()
                return [r for r in runs if r["trigger"] == "schedule" and r["status"] != "running"]

            # Two firings: by the second, a duplicate of the first would long exist.
            eventually(lambda: len(scheduled()) >= 2, timeout=200, what="two scheduled runs")
            runs = scheduled()
            minutes = [r["startedAt"][:16] for r in runs]
            assert len(minutes) == len(set(minutes)), runs
            first = runs[-1]
            assert first["removed"] == 1  # v1: neither the latest pushed nor ever pulled
        with httpx.Client(base_url=nodes[0].url, timeout=30, auth=RegistryAuth()) as v2:
            assert v2.head(f"/v2/{app}/manifests/{images[0].digest}").status_code == 200
            assert v2.head(f"/v2/{app}/manifests/{images[1].digest}").status_code == 404
            assert v2.head(f"/v2/{app}/manifests/{images[2].digest}").status_code == 200
