"""Replication against real registries: Debian's docker-registry (CNCF Distribution) with and
without htpasswd auth, and a second Moorage server, all started by the tests; Moorage is driven
over HTTP only. Everything asynchronous is polled, never timed.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.api import (
    PASSWORD,
    api_client,
    assert_problem,
    create_project,
    create_user,
    eventually,
    unique,
)
from tests.support.auth import ADMIN_PASSWORD, ADMIN_USER, RegistryAuth
from tests.support.backends import database_text, server_database_url
from tests.support.distribution import Distribution
from tests.support.oci import (
    OCI_INDEX,
    OCI_MANIFEST,
    Pushed,
    digest_of,
    encode,
    image_manifest,
    platform,
    push_blob_object,
    push_image,
    push_manifest,
    push_multi_platform,
    random_bytes,
)
from tests.support.server import RegistryProcess, database_url_for
from tests.support.tools import have_tool

pytestmark = pytest.mark.tools("docker-registry")

ACCEPT = {"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"}
REMOTE_USER = "replicator"
REMOTE_PASSWORD = "remote-secret-9d2e71"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    """Two workers: pushes reach either, only the first runs the replication queue. Retries
    back off for one second, then two."""
    with RegistryProcess(
        tmp_path_factory.mktemp("replication") / "data",
        workers=2,
        env={
            "MOORAGE_REPLICATION_RETRY_BASE_SECONDS": "1",
            "MOORAGE_REPLICATION_RETRY_MAX_SECONDS": "2",
            "MOORAGE_REPLICATION_MAX_ATTEMPTS": "30",
            "MOORAGE_REPLICATION_CHUNK_BYTES": str(1 << 20),
        },
    ).start() as process:
        yield process


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Distribution]:
    with Distribution(tmp_path_factory.mktemp("target")).start() as registry:
        yield registry


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Distribution]:
    with Distribution(
        tmp_path_factory.mktemp("secured"), users={REMOTE_USER: REMOTE_PASSWORD}
    ).start() as registry:
        yield registry


@pytest.fixture
def registry(server: RegistryProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60, auth=RegistryAuth()) as http:
        yield http


def add_endpoint(admin: httpx.Client, url: str, **fields: Any) -> int:
    body = {"name": unique("remote"), "url": url, "allowPrivateNetwork": True, **fields}
    response = admin.post("/replication/registries", json=body)
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def add_rule(admin: httpx.Client, endpoint: int, **fields: Any) -> dict[str, Any]:
    body = {"name": unique("rule"), "endpointId": endpoint, "direction": "push", **fields}
    response = admin.post("/replication/rules", json=body)
    assert response.status_code == 201, response.text
    rule: dict[str, Any] = response.json()
    return rule


def executions(admin: httpx.Client, rule: dict[str, Any]) -> list[dict[str, Any]]:
    response = admin.get(f"/replication/rules/{rule['id']}/executions")
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()
    return found


def tasks(admin: httpx.Client, execution: int) -> list[dict[str, Any]]:
    response = admin.get(f"/replication/executions/{execution}/tasks")
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()
    return found


def finished(admin: httpx.Client, execution: int) -> dict[str, Any]:
    """Poll an execution until it ends; the execution."""
    state: dict[str, Any] = {}

    def done() -> bool:
        state.update(admin.get(f"/replication/executions/{execution}").json())
        return state["status"] in ("succeeded", "failed", "partial")

    eventually(done, timeout=60, what=f"execution {execution} to finish")
    return state


def run_rule(admin: httpx.Client, rule: dict[str, Any]) -> dict[str, Any]:
    response = admin.post(f"/replication/rules/{rule['id']}/run")
    assert response.status_code == 202, response.text
    return finished(admin, response.json()["id"])


def remote_digest(client: httpx.Client, repository: str, reference: str) -> str | None:
    response = client.head(f"/v2/{repository}/manifests/{reference}", headers=ACCEPT)
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    return response.headers["Docker-Content-Digest"]


def wait_for_manifest(client: httpx.Client, repository: str, reference: str, digest: str) -> None:
    eventually(
        lambda: remote_digest(client, repository, reference) == digest,
        timeout=60,
        what=f"{repository}:{reference} to arrive",
    )


def assert_image_complete(client: httpx.Client, repository: str, image: Pushed) -> None:
    """The manifest and every blob it names are on the remote, byte for byte."""
    response = client.get(f"/v2/{repository}/manifests/{image.digest}", headers=ACCEPT)
    assert response.status_code == 200, response.text
    assert response.content == image.body
    document = json.loads(image.body)
    for descriptor in [document["config"], *document["layers"]]:
        blob = client.get(f"/v2/{repository}/blobs/{descriptor['digest']}")
        assert blob.status_code == 200
        assert digest_of(blob.content) == descriptor["digest"]


def test_a_push_is_replicated_to_distribution_on_the_event(
    admin: httpx.Client, registry: httpx.Client, target: Distribution
) -> None:
    project = create_project(admin, "src")
    endpoint = add_endpoint(admin, target.url, kind="distribution")
    rule = add_rule(admin, endpoint, trigger="event", repositories=[f"{project}/**"])
    image = push_image(registry, f"{project}/app", "v1", layer_count=2)
    with target.client() as remote:
        wait_for_manifest(remote, f"{project}/app", "v1", image.digest)
        assert_image_complete(remote, f"{project}/app", image)
    # skopeo, a real client, sees the replicated image.
    if have_tool("skopeo"):
        inspected = subprocess.run(
            [
                "skopeo",
                "inspect",
                "--raw",
                "--tls-verify=false",
                f"docker://127.0.0.1:{target.port}/{project}/app:v1",
            ],
            check=True,
            capture_output=True,
        )
        assert digest_of(inspected.stdout) == image.digest
    # The history shows the run, its task and its progress.
    history = executions(admin, rule)
    assert len(history) == 1
    run = finished(admin, history[0]["id"])
    assert run["status"] == "succeeded"
    assert run["trigger"] == "event"
    assert (run["total"], run["succeeded"]) == (1, 1)
    (task,) = tasks(admin, run["id"])
    assert task["operation"] == "copy"
    assert (task["source"], task["destination"], task["tag"]) == (
        f"{project}/app",
        f"{project}/app",
        "v1",
    )
    assert task["digest"] == image.digest
    assert task["blobsCopied"] == 3
    assert task["bytesCopied"] > 0
    assert task["error"] is None


def test_two_rules_copying_one_image_at_once_send_each_blob_once(
    admin: httpx.Client, registry: httpx.Client, target: Distribution
) -> None:
    """Two tasks that push the same blobs to one remote repository at once take turns per
    blob: racing uploads of one blob make Distribution refuse them, and a retry would then
    race again."""
    project = create_project(admin, "twice")
    endpoint = add_endpoint(admin, target.url, kind="distribution")
    rules = [
        add_rule(admin, endpoint, trigger="event", repositories=[f"{project}/**"]) for _ in range(2)
    ]
    image = push_image(registry, f"{project}/app", "v1", layer_count=3)
    with target.client() as remote:
        wait_for_manifest(remote, f"{project}/app", "v1", image.digest)
        assert_image_complete(remote, f"{project}/app", image)
    copied = 0
    for rule in rules:
        (execution,) = executions(admin, rule)
        run = finished(admin, execution["id"])
        (task,) = tasks(admin, run["id"])
        assert run["status"] == "succeeded", task
        assert task["attempts"] == 1, task
        copied += task["blobsCopied"]
    assert copied == 4  # three layers and the config, each sent once


def test_an_index_is_pushed_children_first_and_shared_blobs_are_skipped(
    admin: httpx.Client, registry: httpx.Client, target: Distribution
) -> None:
    project = create_project(admin, "multi")
    endpoint = add_endpoint(admin, target.url, kind="distribution")
    rule = add_rule(
        admin,
        endpoint,
        trigger="event",
        repositories=[f"{project}/**"],
        destinationPrefix="copies",
        stripSegments=1,
    )
    index, children = push_multi_platform(
        registry, f"{project}/tool", [platform("linux", "amd64"), platform("linux", "arm64")], "1.0"
    )
    with target.client() as remote:
        wait_for_manifest(remote, "copies/tool", "1.0", index.digest)
        for child in children:
            assert_image_complete(remote, "copies/tool", child)
    # Tagging the same index again sends no blob: the remote has them all.
    response = registry.put(
        f"/v2/{project}/tool/manifests/again",
        content=index.body,
        headers={"Content-Type": index.media_type},
    )
    assert response.status_code == 201
    with target.client() as remote:
        wait_for_manifest(remote, "copies/tool", "again", index.digest)
    eventually(lambda: all(e["status"] == "succeeded" for e in executions(admin, rule)), timeout=60)
    latest = executions(admin, rule)[0]
    (task,) = tasks(admin, latest["id"])
    assert task["tag"] == "again"
    assert task["blobsCopied"] == 0


def test_htpasswd_credentials_work_and_never_leave_the_registry(
    server: RegistryProcess, admin: httpx.Client, registry: httpx.Client, secured: Distribution
) -> None:
    project = create_project(admin, "secret")
    endpoint = add_endpoint(
        admin,
        secured.url,
        kind="distribution",
        username=REMOTE_USER,
        password=REMOTE_PASSWORD,
    )
    check = admin.post(f"/replication/registries/{endpoint}/check")
    assert check.json()["ok"] is True, check.text
    add_rule(admin, endpoint, trigger="event", repositories=[f"{project}/**"])
    image = push_image(registry, f"{project}/app", "v1")
    with secured.client() as remote:
        wait_for_manifest(remote, f"{project}/app", "v1", image.digest)
    # Without credentials the remote refuses: the copy really signed in.
    with httpx.Client(base_url=secured.url) as anonymous:
        assert anonymous.get(f"/v2/{project}/app/tags/list").status_code == 401
    shown = admin.get(f"/replication/registries/{endpoint}").json()
    assert shown["credential"] == "password"
    assert shown["username"] == REMOTE_USER
    listed = admin.get("/replication/registries").text
    audit = admin.get("/audit-logs", params={"limit": 100}).text
    assert "replication:endpoint-create" in audit
    for text in (json.dumps(shown), listed, audit, server.logs()):
        assert REMOTE_PASSWORD not in text
    # Stored sealed: the database files never hold it in clear.
    if database_url_for(server.data_dir) is not None:
        stored_text = database_text(server_database_url(server.data_dir))
        assert "replication_endpoints" in stored_text
        assert REMOTE_PASSWORD not in stored_text
    else:
        database_files = list(server.data_dir.glob("moorage.db*"))
        assert database_files
        for stored in database_files:
            assert REMOTE_PASSWORD.encode() not in stored.read_bytes()
    # The same credential pulls from the remote: a manual pull of one named repository.
    project_copy = create_project(admin, "pulled")
    pull = add_rule(
        admin,
        endpoint,
        direction="pull",
        repositories=[f"{project}/app"],
        destinationPrefix=project_copy,
    )
    run = run_rule(admin, pull)
    assert run["status"] == "succeeded", tasks(admin, run["id"])
    assert remote_digest(registry, f"{project_copy}/{project}/app", "v1") == image.digest
    assert_image_complete(registry, f"{project_copy}/{project}/app", image)
    # A wrong password is reported by the check, without echoing it.
    wrong = "not-the-password-7a1b"
    replaced = admin.put(
        f"/replication/registries/{endpoint}",
        json={
            "name": shown["name"],
            "url": secured.url,
            "kind": "distribution",
            "username": REMOTE_USER,
            "password": wrong,
            "allowPrivateNetwork": True,
        },
    )
    assert replaced.status_code == 200, replaced.text
    check = admin.post(f"/replication/registries/{endpoint}/check").json()
    assert check["ok"] is False
    assert check["message"].startswith("unauthorized")
    assert wrong not in check["message"]
    assert wrong not in replaced.text


def test_manual_runs_follow_repository_and_tag_filters(
    admin: httpx.Client, registry: httpx.Client, target: Distribution
) -> None:
    project = create_project(admin, "filter")
    pushed = {
        (repository, tag): push_image(registry, f"{project}/{repository}", tag)
        for repository, tag in [
            ("keep/a", "v1"),
            ("keep/a", "v2-rc"),
            ("keep/a", "latest"),
            ("keep/deep/b", "v3"),
            ("skip/c", "v1"),
            ("keep-not/d", "v1"),
        ]
    }
    endpoint = add_endpoint(admin, target.url, kind="distribution")
    rule = add_rule(
        admin,
        endpoint,
        trigger="manual",
        repositories=[f"{project}/keep/**"],
        excludeRepositories=[f"{project}/keep/deep/**"],
        tags=["v*"],
        excludeTags=["*-rc"],
        destinationPrefix=f"f{project}",
        stripSegments=1,
    )
    run = run_rule(admin, rule)
    assert run["status"] == "succeeded", run
    assert run["trigger"] == "manual"
    copied = {(t["source"], t["tag"]) for t in tasks(admin, run["id"])}
    assert copied == {(f"{project}/keep/a", "v1")}
    with target.client() as remote:
        assert remote_digest(remote, f"f{project}/keep/a", "v1") == pushed["keep/a", "v1"].digest
        for repository, tag in [("keep/a", "v2-rc"), ("keep/a", "latest")]:
            assert remote_digest(remote, f"f{project}/{repository}", tag) is None
        for repository in ("keep/deep/b", "skip/c", "keep-not/d"):
            assert remote.get(f"/v2/f{project}/{repository}/tags/list").status_code == 404


def test_a_scheduled_pull_copies_matching_images_from_distribution(
    admin: httpx.Client, registry: httpx.Client, target: Distribution
) -> None:
    upstream = unique("up")
    with target.client() as remote:
        first = push_image(remote, f"{upstream}/lib/app", "1.0", layer_count=2)
        second = push_image(remote, f"{upstream}/lib/app", "2.0")
        push_image(remote, f"{upstream}/lib/app", "3.0-beta")
        push_image(remote, f"{upstream}/other/x", "1.0")
        index, children = push_multi_platform(
            remote,
            f"{upstream}/lib/multi",
            [platform("linux", "amd64"), platform("linux", "arm64")],
            "1.0",
        )
    project = create_project(admin, "mirror")
    endpoint = add_endpoint(admin, target.url, kind="distribution")
    rule = add_rule(
        admin,
        endpoint,
        direction="pull",
        trigger="schedule",
        intervalSeconds=5,
        repositories=[f"{upstream}/lib/**"],
        excludeTags=["*-beta"],
        destinationPrefix=project,
    )
    assert rule["nextRunAt"] is not None
    eventually(lambda: bool(executions(admin, rule)), timeout=60, what="a scheduled run")
    run = finished(admin, executions(admin, rule)[-1]["id"])
    assert run["status"] == "succeeded", (run, tasks(admin, run["id"]))
    assert run["trigger"] == "schedule"
    local = f"{project}/{upstream}/lib/app"
    for tag, image in (("1.0", first), ("2.0", second)):
        assert remote_digest(registry, local, tag) == image.digest
        assert_image_complete(registry, local, image)
    assert remote_digest(registry, local, "3.0-beta") is None
    assert remote_digest(registry, f"{project}/{upstream}/lib/multi", "1.0") == index.digest
    for child in children:
        assert_image_complete(registry, f"{project}/{upstream}/lib/multi", child)
    assert registry.get(f"/v2/{project}/{upstream}/other/x/tags/list").status_code == 404
    # The next scheduled run finds every tag unchanged and stores nothing again.
    eventually(lambda: len(executions(admin, rule)) >= 2, timeout=60, what="a second run")
    again = finished(admin, executions(admin, rule)[0]["id"])
    assert again["status"] == "succeeded"
    assert all(t["blobsCopied"] == 0 for t in tasks(admin, again["id"]))
    assert admin.delete(f"/replication/rules/{rule['id']}").status_code == 204
    # What replication stored went through the registry: the audit log names its actor.
    audit = admin.get("/audit-logs", params={"action": "manifest:pushed", "limit": 100}).json()
    assert any(
        entry["actor"] == f"replication:{endpoint}" and local in (entry.get("resource") or "")
        for entry in audit
    ), audit


def test_local_deletions_are_replicated_when_the_rule_says_so(
    admin: httpx.Client, registry: httpx.Client, target: Distribution
) -> None:
    project = create_project(admin, "del")
    endpoint = add_endpoint(admin, target.url, kind="distribution")
    add_rule(
        admin, endpoint, trigger="event", repositories=[f"{project}/**"], replicateDeletions=True
    )
    kept = push_image(registry, f"{project}/app", "kept")
    doomed = push_image(registry, f"{project}/app", "doomed")
    untagged = push_image(registry, f"{project}/app", "by-digest")
    with target.client() as remote:
        for tag, image in (("kept", kept), ("doomed", doomed), ("by-digest", untagged)):
            wait_for_manifest(remote, f"{project}/app", tag, image.digest)
        # A tag deletion here deletes what the tag pointed at there.
        assert registry.delete(f"/v2/{project}/app/manifests/doomed").status_code == 202
        eventually(
            lambda: (
                remote.get(
                    f"/v2/{project}/app/manifests/{doomed.digest}", headers=ACCEPT
                ).status_code
                == 404
            ),
            timeout=60,
            what="the remote deletion",
        )
        # A manifest deletion by digest here deletes it by digest there.
        assert registry.delete(f"/v2/{project}/app/manifests/{untagged.digest}").status_code == 202
        eventually(
            lambda: remote_digest(remote, f"{project}/app", untagged.digest) is None,
            timeout=60,
            what="the remote deletion by digest",
        )
        assert remote_digest(remote, f"{project}/app", "kept") == kept.digest


def test_a_rule_without_deletions_leaves_the_remote_alone(
    admin: httpx.Client, registry: httpx.Client, target: Distribution
) -> None:
    project = create_project(admin, "nodel")
    endpoint = add_endpoint(admin, target.url, kind="distribution")
    rule = add_rule(admin, endpoint, trigger="event", repositories=[f"{project}/**"])
    image = push_image(registry, f"{project}/app", "v1")
    with target.client() as remote:
        wait_for_manifest(remote, f"{project}/app", "v1", image.digest)
        assert registry.delete(f"/v2/{project}/app/manifests/v1").status_code == 202
        # The deletion's event is recorded as soon as its request has finished, so by the time
        # a later push has been replicated, a deletion run would have been queued.
        later = push_image(registry, f"{project}/app", "v2")
        wait_for_manifest(remote, f"{project}/app", "v2", later.digest)
        eventually(
            lambda: all(e["status"] == "succeeded" for e in executions(admin, rule)), timeout=60
        )
        assert len(executions(admin, rule)) == 2
        assert remote_digest(remote, f"{project}/app", "v1") == image.digest


def test_a_push_is_retried_with_back_off_until_the_target_is_back(
    server: RegistryProcess,
    admin: httpx.Client,
    registry: httpx.Client,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    flaky = Distribution(tmp_path_factory.mktemp("flaky")).start()
    try:
        project = create_project(admin, "retry")
        endpoint = add_endpoint(admin, flaky.url, kind="distribution")
        rule = add_rule(admin, endpoint, trigger="event", repositories=[f"{project}/**"])
        flaky.stop()
        image = push_image(registry, f"{project}/app", "v1")
        eventually(lambda: bool(executions(admin, rule)), timeout=60, what="the execution")
        execution = executions(admin, rule)[0]["id"]

        def failed_once() -> bool:
            (task,) = tasks(admin, execution)
            return task["attempts"] >= 1 and bool(task["error"]) and task["status"] == "pending"

        eventually(failed_once, timeout=60, what="a failed attempt")
        (task,) = tasks(admin, execution)
        assert task["error"].startswith("unavailable"), task
        # The queue is in the database: it outlives a restart of the registry.
        server.restart()
        flaky.start()
        run = finished(admin, execution)
        assert run["status"] == "succeeded"
        (task,) = tasks(admin, execution)
        assert task["attempts"] >= 2
        assert task["error"] is None
        with flaky.client() as remote:
            assert remote_digest(remote, f"{project}/app", "v1") == image.digest
    finally:
        flaky.stop()


def test_a_second_moorage_is_a_target_with_token_auth(
    admin: httpx.Client,
    registry: httpx.Client,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    second = RegistryProcess(tmp_path_factory.mktemp("second") / "data").start()
    try:
        with api_client(second) as remote_admin:
            destination = create_project(remote_admin, "replica")
            pusher = create_user(remote_admin, "pusher")
            response = remote_admin.put(
                f"/projects/{destination}/members/user/{pusher}", json={"role": "maintainer"}
            )
            assert response.status_code == 200, response.text
        project = create_project(admin, "origin")
        endpoint = add_endpoint(
            admin, second.url, kind="moorage", username=pusher, password=PASSWORD
        )
        assert admin.post(f"/replication/registries/{endpoint}/check").json()["ok"] is True
        add_rule(
            admin,
            endpoint,
            trigger="event",
            repositories=[f"{project}/**"],
            destinationPrefix=destination,
            stripSegments=1,
            replicateDeletions=True,
        )
        image = push_image(registry, f"{project}/svc", "v1", layer_count=2)
        other = push_image(registry, f"{project}/svc", "v2")
        with httpx.Client(
            base_url=second.url, timeout=60, auth=RegistryAuth(ADMIN_USER, ADMIN_PASSWORD)
        ) as remote:
            # The second Moorage answers /v2 with a Bearer challenge: the copy used its tokens.
            challenge = httpx.get(f"{second.url}/v2/").headers.get("WWW-Authenticate", "")
            assert challenge.lower().startswith("bearer")
            wait_for_manifest(remote, f"{destination}/svc", "v1", image.digest)
            wait_for_manifest(remote, f"{destination}/svc", "v2", other.digest)
            assert_image_complete(remote, f"{destination}/svc", image)
            # Moorage deletes tags by name: the manifest stays, only the tag goes.
            assert registry.delete(f"/v2/{project}/svc/manifests/v1").status_code == 202
            eventually(
                lambda: remote_digest(remote, f"{destination}/svc", "v1") is None,
                timeout=60,
                what="the remote tag deletion",
            )
            assert remote_digest(remote, f"{destination}/svc", image.digest) == image.digest
            # And the other way: pull from the second Moorage, with its tokens, into a project.
            upstream_image = push_image(remote, f"{destination}/tool", "2.1", layer_count=2)
        local = create_project(admin, "fromsecond")
        pull = add_rule(
            admin,
            endpoint,
            direction="pull",
            repositories=[f"{destination}/tool"],
            destinationPrefix=local,
            stripSegments=1,
        )
        run = run_rule(admin, pull)
        assert run["status"] == "succeeded", tasks(admin, run["id"])
        assert remote_digest(registry, f"{local}/tool", "2.1") == upstream_image.digest
        assert_image_complete(registry, f"{local}/tool", upstream_image)
    finally:
        second.stop()


def test_rules_and_endpoints_are_validated_and_admin_only(
    server: RegistryProcess, admin: httpx.Client, target: Distribution
) -> None:
    endpoint = add_endpoint(admin, target.url)
    # Pull rules have no events to run on and need a local destination.
    assert_problem(
        admin.post(
            "/replication/rules",
            json={
                "name": unique("r"),
                "endpointId": endpoint,
                "direction": "pull",
                "trigger": "event",
                "destinationPrefix": "x",
            },
        ),
        422,
    )
    assert_problem(
        admin.post(
            "/replication/rules",
            json={"name": unique("r"), "endpointId": endpoint, "direction": "pull"},
        ),
        422,
    )
    bad_cron = {
        "name": unique("r"),
        "endpointId": endpoint,
        "direction": "push",
        "trigger": "schedule",
        "cron": "61 * * * *",
    }
    assert_problem(admin.post("/replication/rules", json=bad_cron), 422)
    cron = add_rule(admin, endpoint, trigger="schedule", cron="*/15 3 * * 1-5")
    assert cron["nextRunAt"] is not None
    # Loopback needs allowPrivateNetwork.
    assert_problem(
        admin.post("/replication/registries", json={"name": unique("r"), "url": target.url}), 422
    )
    # An endpoint in use cannot be removed; its rule first.
    assert_problem(admin.delete(f"/replication/registries/{endpoint}"), 409)
    assert admin.delete(f"/replication/rules/{cron['id']}").status_code == 204
    assert admin.delete(f"/replication/registries/{endpoint}").status_code == 204
    assert_problem(admin.get(f"/replication/registries/{endpoint}"), 404)
    # Nobody but an administrator sees or changes replication.
    user = create_user(admin, "plain")
    with api_client(server, user, PASSWORD) as plain:
        assert_problem(plain.get("/replication/registries"), 403)
        assert_problem(plain.get("/replication/rules"), 403)
        assert_problem(
            plain.post("/replication/registries", json={"name": "x", "url": target.url}), 403
        )


def test_large_blobs_go_in_chunks_and_known_blobs_are_mounted(
    admin: httpx.Client, registry: httpx.Client, target: Distribution
) -> None:
    project = create_project(admin, "big")
    endpoint = add_endpoint(admin, target.url, kind="distribution")
    rule = add_rule(admin, endpoint, trigger="event", repositories=[f"{project}/**"])
    config = push_blob_object(
        registry, f"{project}/big", "application/vnd.oci.image.config.v1+json", encode({"a": 1})
    )
    # Two and a half chunks of the server's 1 MiB chunk size.
    layer = push_blob_object(
        registry,
        f"{project}/big",
        "application/vnd.oci.image.layer.v1.tar",
        random_bytes((5 << 20) // 2),
    )
    body = encode(image_manifest(config, [layer]))
    image = push_manifest(registry, f"{project}/big", body, OCI_MANIFEST, "v1")
    with target.client() as remote:
        wait_for_manifest(remote, f"{project}/big", "v1", image.digest)
        assert_image_complete(remote, f"{project}/big", image)
    patches = re.findall(
        rf'"PATCH /v2/{project}/big/blobs/uploads/[^ ]* HTTP/1.1" 202', target.logs()
    )
    assert len(patches) == 3
    # The same blobs in a second repository: the remote mounts them instead of a new upload.
    for blob in (config, layer):
        mounted = registry.post(
            f"/v2/{project}/copy/blobs/uploads/",
            params={"mount": blob.digest, "from": f"{project}/big"},
        )
        assert mounted.status_code == 201, mounted.text
    push_manifest(registry, f"{project}/copy", body, OCI_MANIFEST, "v1")
    with target.client() as remote:
        wait_for_manifest(remote, f"{project}/copy", "v1", image.digest)
    assert target.requests("POST", f"/v2/{project}/copy/blobs/uploads/", 201) == 2
    eventually(lambda: all(e["status"] == "succeeded" for e in executions(admin, rule)), timeout=60)
    latest = executions(admin, rule)[0]
    (task,) = tasks(admin, latest["id"])
    assert (task["blobsCopied"], task["blobsSkipped"], task["bytesCopied"]) == (0, 2, 0)


def test_a_remote_that_refuses_deletes_records_the_reason(
    admin: httpx.Client, registry: httpx.Client, tmp_path_factory: pytest.TempPathFactory
) -> None:
    keeper = Distribution(tmp_path_factory.mktemp("keeper"), delete_enabled=False).start()
    try:
        project = create_project(admin, "keep")
        endpoint = add_endpoint(admin, keeper.url, kind="distribution")
        rule = add_rule(
            admin,
            endpoint,
            trigger="event",
            repositories=[f"{project}/**"],
            replicateDeletions=True,
        )
        image = push_image(registry, f"{project}/app", "v1")
        with keeper.client() as remote:
            wait_for_manifest(remote, f"{project}/app", "v1", image.digest)
            assert registry.delete(f"/v2/{project}/app/manifests/v1").status_code == 202
            eventually(
                lambda: len(executions(admin, rule)) == 2, timeout=60, what="the deletion run"
            )
            run = finished(admin, executions(admin, rule)[0]["id"])
            assert run["status"] == "failed"
            (task,) = tasks(admin, run["id"])
            assert task["operation"] == "delete"
            assert task["attempts"] == 1  # a refusal is final: no retries
            assert "405" in task["error"], task
            assert remote_digest(remote, f"{project}/app", "v1") == image.digest
    finally:
        keeper.stop()
