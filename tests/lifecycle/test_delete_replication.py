"""A repository's deletion replicated by a push rule that replicates deletions: what the rule
copied from it is deleted at the target (Distribution), and nothing else there."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support.api import api_client, create_project, eventually, unique
from tests.support.auth import RegistryAuth
from tests.support.distribution import Distribution
from tests.support.oci import OCI_INDEX, OCI_MANIFEST, push_image
from tests.support.server import RegistryProcess

pytestmark = pytest.mark.tools("docker-registry")

ACCEPT = {"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    data_dir = tmp_path_factory.mktemp("delete-replication") / "data"
    environment = {
        "MOORAGE_REPLICATION_RETRY_BASE_SECONDS": "1",
        "MOORAGE_REPLICATION_RETRY_MAX_SECONDS": "2",
    }
    with RegistryProcess(data_dir, env=environment).start() as process:
        yield process


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Distribution]:
    with Distribution(tmp_path_factory.mktemp("target")).start() as registry:
        yield registry


def remote_digest(client: httpx.Client, repository: str, reference: str) -> str | None:
    response = client.head(f"/v2/{repository}/manifests/{reference}", headers=ACCEPT)
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    return response.headers["Docker-Content-Digest"]


def arrived(client: httpx.Client, repository: str, reference: str, digest: str) -> bool:
    response = client.head(f"/v2/{repository}/manifests/{reference}", headers=ACCEPT)
    # Distribution answers 500 to a HEAD that meets its own tag write half done: not yet.
    if response.status_code in (404, 500):
        return False
    assert response.status_code == 200, response.text
    return response.headers["Docker-Content-Digest"] == digest


def test_a_deleted_repository_is_deleted_at_the_target(
    server: RegistryProcess, target: Distribution
) -> None:
    with (
        api_client(server) as admin,
        httpx.Client(base_url=server.url, timeout=60, auth=RegistryAuth()) as local,
        target.client() as remote,
    ):
        project = create_project(admin, "repl")
        endpoint = admin.post(
            "/replication/registries",
            json={"name": unique("remote"), "url": target.url, "kind": "distribution"}
            | {"allowPrivateNetwork": True},
        )
        assert endpoint.status_code == 201, endpoint.text
        rule = {
            "name": unique("rule"),
            "endpointId": endpoint.json()["id"],
            "direction": "push",
            "trigger": "event",
            "repositories": [f"{project}/**"],
            "replicateDeletions": True,
        }
        created = admin.post("/replication/rules", json=rule)
        assert created.status_code == 201, created.text
        images = {
            (f"{project}/app", tag): push_image(local, f"{project}/app", tag)
            for tag in ("v1", "v2")
        }
        images[(f"{project}/keep", "v1")] = push_image(local, f"{project}/keep", "v1")
        for (repository, tag), image in images.items():
            eventually(
                lambda r=repository, t=tag, d=image.digest: arrived(remote, r, t, d),
                timeout=60,
                what=f"{repository}:{tag} at the target",
            )

        assert admin.delete(f"/projects/{project}/repositories/app").status_code == 200

        for tag in ("v1", "v2"):
            eventually(
                lambda t=tag: remote_digest(remote, f"{project}/app", t) is None,
                timeout=60,
                what=f"{project}/app:{tag} deleted at the target",
            )
        keep = images[(f"{project}/keep", "v1")]
        assert remote_digest(remote, f"{project}/keep", "v1") == keep.digest
