"""A node whose Redis does not answer keeps serving, safely: pushes, pulls and changes work,
locks fall back to the machine's own, periodic jobs skip their turn, and the warning it logs
never shows the password of the Redis URL."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.support.api import PASSWORD, api_client, create_project, create_user, set_role
from tests.support.auth import RegistryAuth
from tests.support.nodes import Nodes
from tests.support.oci import OCI_INDEX, OCI_MANIFEST, push_image
from tests.support.server import free_port
from tests.support.wait import wait_until

ACCEPT = {"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"}
REDIS_PASSWORD = "redis-secret-b7e2"


def test_a_node_without_its_redis_serves_and_never_logs_the_password(tmp_path: Path) -> None:
    dead = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{free_port()}/0"  # nothing listens there
    with Nodes(tmp_path, dead).start(1)[0] as node:
        with api_client(node) as admin:
            project = create_project(admin, "outage")
            user = create_user(admin)
            set_role(admin, project, user, "developer")
        with httpx.Client(base_url=node.url, timeout=60, auth=RegistryAuth()) as client:
            pushed = push_image(client, f"{project}/app", "v1")
        with httpx.Client(
            base_url=node.url, timeout=60, auth=RegistryAuth(user, PASSWORD)
        ) as client:
            response = client.get(f"/v2/{project}/app/manifests/v1", headers=ACCEPT)
            assert response.status_code == 200, response.text
            assert response.headers["Docker-Content-Digest"] == pushed.digest
        # A change still takes effect on this node at once (its own caches are cleared).
        with api_client(node) as admin:
            removed = admin.delete(f"/projects/{project}/members/user/{user}")
            assert removed.status_code in (200, 204), removed.text
        with httpx.Client(
            base_url=node.url, timeout=60, auth=RegistryAuth(user, PASSWORD)
        ) as client:
            response = client.get(f"/v2/{project}/app/manifests/v1", headers=ACCEPT)
            assert response.status_code in (401, 403, 404), response.text
        wait_until(lambda: "redis unavailable" in node.logs(), 60, "the outage to be logged")
        assert "periodic job upload-purge: not this node's turn" in node.logs()
        assert REDIS_PASSWORD not in node.logs()
