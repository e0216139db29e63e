"""Real clients against the authenticating registry: who may push, pull and list, and how.

skopeo and podman sign in as ordinary users, robots, personal access tokens or nobody, against
projects made through the management API; what they may do is what their membership (or the
project being public) allows. Where a client only says "it failed", the same refusal is also
checked at the HTTP level: the token the token service issues and the registry's answer to it.

The module has its own server: refused sign-ins here count against the loopback address, and
must not make the shared server throttle the tests that sign in correctly.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.registry.test_clients_skopeo import (
    Podman,
    Skopeo,
    ToolEnvironment,
    assert_image_in_registry,
    assert_layout_blobs_intact,
    docker_ref,
    podman_environment,
    tool_environment,
)
from tests.support.api import (
    PASSWORD,
    api_client,
    create_project,
    create_user,
    eventually,
    set_role,
    unique,
)
from tests.support.auth import RegistryAuth, parse_challenge
from tests.support.images import (
    Image,
    Layout,
    bearer,
    busybox_image,
    fetch_blob,
    fetch_manifest,
    read_layout_tag,
    registry_token,
    sha256_digest,
    stored_size,
    upload_id,
    write_layout,
)
from tests.support.server import RegistryProcess
from tests.support.tools import require_tool

pytestmark = [
    pytest.mark.clients,
    pytest.mark.tools("skopeo"),
]


# -- fixtures and helpers


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    with RegistryProcess(tmp_path_factory.mktemp("clients-auth") / "data").start() as process:
        yield process


@pytest.fixture
def admin_api(server: RegistryProcess) -> Iterator[httpx.Client]:
    with api_client(server) as http:
        yield http


@pytest.fixture
def admin_v2(server: RegistryProcess) -> Iterator[httpx.Client]:
    """/v2 as the administrator, to check what the clients left in the registry."""
    with httpx.Client(base_url=server.url, timeout=60, auth=RegistryAuth()) as http:
        yield http


@pytest.fixture(scope="module")
def tools(tmp_path_factory: pytest.TempPathFactory) -> ToolEnvironment:
    return tool_environment(tmp_path_factory.mktemp("auth-tools"))


@pytest.fixture(scope="module")
def admin_skopeo(tools: ToolEnvironment) -> Skopeo:
    return Skopeo(tools)


@pytest.fixture(scope="module")
def image_layout(tmp_path_factory: pytest.TempPathFactory) -> tuple[Image, Layout]:
    image = busybox_image(label="auth")
    return image, write_layout(tmp_path_factory.mktemp("layout") / "auth", "v1", image)


def token_access(token: str) -> list[dict[str, Any]]:
    """The `access` claim of a registry token (read, not verified: the registry verifies)."""
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    access: list[dict[str, Any]] = claims["access"]
    return access


def assert_refused(skopeo: Skopeo, args: list[str], *messages: str) -> str:
    """skopeo fails, and its error says why; returns the error output."""
    result = skopeo.attempt(*args)
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode != 0, f"skopeo {' '.join(args)} succeeded:\n{stderr}"
    for message in messages:
        assert message in stderr, stderr
    return stderr


def assert_not_in_registry(admin_v2: httpx.Client, repository: str, tag: str) -> None:
    response = admin_v2.get(f"/v2/{repository}/manifests/{tag}")
    assert response.status_code == 404, response.text
    assert response.json()["errors"][0]["code"] in ("MANIFEST_UNKNOWN", "NAME_UNKNOWN")


def assert_pulled(
    skopeo: Skopeo, server: RegistryProcess, repository: str, image: Image, out: Path
) -> None:
    """skopeo copies the image out of the registry, every blob intact and digests preserved."""
    skopeo.copy(docker_ref(server, repository, "v1"), f"oci:{out}:pulled")
    assert read_layout_tag(out, "pulled")["digest"] == image.manifest.digest
    assert assert_layout_blobs_intact(out) == {
        blob.digest for blob in (*image.blobs, image.manifest)
    }


def member(admin_api: httpx.Client, project: str, role: str, prefix: str = "user") -> str:
    username = create_user(admin_api, prefix)
    set_role(admin_api, project, username, role)
    return username


def catalog(server: RegistryProcess, token: str) -> list[str]:
    """Every repository the catalog lists for `token`, following its pages."""
    names: list[str] = []
    url: str | None = "/v2/_catalog?n=100"
    with httpx.Client(base_url=server.url, timeout=30, headers=bearer(token)) as http:
        while url is not None:
            response = http.get(url)
            assert response.status_code == 200, response.text
            names.extend(response.json()["repositories"])
            link = response.headers.get("Link")
            url = link.split(";")[0].strip("<>") if link else None
    return names


def v2_push_attempt(server: RegistryProcess, repository: str, token: str | None) -> httpx.Response:
    """Open an upload session, the first write of every push."""
    headers = bearer(token) if token is not None else {}
    return httpx.post(f"{server.url}/v2/{repository}/blobs/uploads/", headers=headers, timeout=30)


def assert_unauthorized(response: httpx.Response, repository: str) -> dict[str, str]:
    """401 UNAUTHORIZED with a challenge for push on `repository`; returns the challenge."""
    assert response.status_code == 401, response.text
    assert response.json()["errors"][0]["code"] == "UNAUTHORIZED"
    challenge = parse_challenge(response.headers["WWW-Authenticate"])
    assert challenge["scope"] == f"repository:{repository}:pull,push"
    return challenge


# -- skopeo as an ordinary user


def test_skopeo_with_a_members_credentials_pushes_and_pulls(
    server: RegistryProcess,
    admin_api: httpx.Client,
    admin_v2: httpx.Client,
    tools: ToolEnvironment,
    image_layout: tuple[Image, Layout],
    tmp_path: Path,
) -> None:
    image, layout = image_layout
    project = create_project(admin_api)
    developer = member(admin_api, project, "developer")
    skopeo = Skopeo(tools, creds=f"{developer}:{PASSWORD}")
    repository = f"{project}/app"

    skopeo.copy(layout.reference, docker_ref(server, repository, "v1"))

    assert_image_in_registry(admin_v2, repository, image)
    assert fetch_manifest(admin_v2, repository, "v1").headers["Docker-Content-Digest"] == (
        image.manifest.digest
    )
    assert_pulled(skopeo, server, repository, image, tmp_path / "out")
    listed = json.loads(
        skopeo.run(
            "list-tags",
            "--tls-verify=false",
            *skopeo.creds_args(),
            f"docker://{server.host}/{repository}",
        )
    )
    assert listed["Tags"] == ["v1"]


def test_skopeo_with_a_wrong_password_fails_clearly(
    server: RegistryProcess,
    admin_api: httpx.Client,
    admin_v2: httpx.Client,
    tools: ToolEnvironment,
    admin_skopeo: Skopeo,
    image_layout: tuple[Image, Layout],
) -> None:
    image, layout = image_layout
    project = create_project(admin_api)
    developer = member(admin_api, project, "developer")
    admin_skopeo.copy(layout.reference, docker_ref(server, f"{project}/app", "v1"))
    wrong = Skopeo(tools, creds=f"{developer}:not-the-password")

    # The token service refuses the credentials, and skopeo says so.
    assert_refused(
        wrong,
        wrong.copy_args(layout.reference, docker_ref(server, f"{project}/app", "wrong")),
        "invalid username or password",
    )
    assert_refused(
        wrong,
        [
            "inspect",
            "--tls-verify=false",
            *wrong.creds_args(),
            docker_ref(server, f"{project}/app", "v1"),
        ],
        "invalid username or password",
    )
    assert_not_in_registry(admin_v2, f"{project}/app", "wrong")
    # The right password still works: the refusals did not lock the account out.
    right = Skopeo(tools, creds=f"{developer}:{PASSWORD}")
    summary = json.loads(right.inspect(docker_ref(server, f"{project}/app", "v1")))
    assert summary["Digest"] == image.manifest.digest


# -- podman


@pytest.fixture
def podman(tmp_path: Path) -> Iterator[Podman]:
    require_tool("podman")
    tool = podman_environment(tmp_path / "podman")
    yield tool
    tool.attempt("rmi", "--all", "--force")


def auth_file_hosts(podman: Podman) -> set[str]:
    document = json.loads(Path(podman.tools.env["REGISTRY_AUTH_FILE"]).read_text() or "{}")
    return set(document.get("auths", {}))


def test_podman_login_push_pull_and_logout(
    server: RegistryProcess,
    admin_api: httpx.Client,
    admin_v2: httpx.Client,
    admin_skopeo: Skopeo,
    podman: Podman,
    image_layout: tuple[Image, Layout],
) -> None:
    image, layout = image_layout
    project = create_project(admin_api)
    developer = member(admin_api, project, "developer")
    admin_skopeo.copy(layout.reference, docker_ref(server, f"{project}/app", "v1"))
    source = f"{server.host}/{project}/app:v1"
    target = f"{server.host}/{project}/retagged:v2"

    podman.login(server.host, developer, PASSWORD)
    assert server.host in auth_file_hosts(podman)

    podman.run("pull", "--quiet", "--tls-verify=false", source)
    assert podman.image_info(source)["Digest"] == image.manifest.digest
    podman.run("tag", source, target)
    digest_file = podman.tools.root / "pushed-digest"
    podman.run("push", "--quiet", "--tls-verify=false", "--digestfile", str(digest_file), target)
    pushed_digest = digest_file.read_text().strip()
    response = fetch_manifest(admin_v2, f"{project}/retagged", "v2")
    assert response.headers["Docker-Content-Digest"] == pushed_digest
    for descriptor in [response.json()["config"], *response.json()["layers"]]:
        content = fetch_blob(admin_v2, f"{project}/retagged", descriptor["digest"])
        assert sha256_digest(content) == descriptor["digest"]

    podman.run("rmi", "--all", "--force")
    by_digest = f"{server.host}/{project}/retagged@{pushed_digest}"
    podman.run("pull", "--quiet", "--tls-verify=false", by_digest)
    assert f"sha256:{podman.image_info(by_digest)['Id']}" == image.config.digest

    podman.run("logout", server.host)
    assert server.host not in auth_file_hosts(podman)
    podman.run("rmi", "--all", "--force")
    refused = podman.attempt("pull", "--quiet", "--tls-verify=false", source)
    stderr = refused.stderr.decode(errors="replace")
    assert refused.returncode != 0, stderr
    assert "unauthorized" in stderr, stderr
    assert podman.attempt("image", "exists", source).returncode != 0


# -- anonymous access to a public project


def test_anonymous_may_pull_a_public_project_but_not_push(
    server: RegistryProcess,
    admin_api: httpx.Client,
    admin_v2: httpx.Client,
    tools: ToolEnvironment,
    admin_skopeo: Skopeo,
    image_layout: tuple[Image, Layout],
    tmp_path: Path,
) -> None:
    image, layout = image_layout
    project = create_project(admin_api)
    repository = f"{project}/app"
    admin_skopeo.copy(layout.reference, docker_ref(server, repository, "v1"))
    anonymous = Skopeo(tools, creds=None)

    # Private: nobody signed in sees it.
    assert_refused(
        anonymous,
        [
            "inspect",
            "--tls-verify=false",
            *anonymous.creds_args(),
            docker_ref(server, repository, "v1"),
        ],
        "unauthorized",
    )

    response = admin_api.patch(f"/projects/{project}", json={"public": True})
    assert response.status_code == 200, response.text
    assert response.json()["public"] is True

    def anonymous_pull_allowed() -> bool:
        token = registry_token(server.url, f"repository:{repository}:pull", username=None)
        with httpx.Client(base_url=server.url, timeout=30, headers=bearer(token)) as http:
            return http.get(f"/v2/{repository}/manifests/v1").status_code == 200

    eventually(anonymous_pull_allowed, what="anonymous pull of the public project")
    assert_pulled(anonymous, server, repository, image, tmp_path / "out")

    # Pushing stays closed: skopeo is refused...
    assert_refused(
        anonymous,
        anonymous.copy_args(layout.reference, docker_ref(server, f"{project}/anon", "v1")),
        "unauthorized",
    )
    assert_not_in_registry(admin_v2, f"{project}/anon", "v1")

    # ...because the anonymous token grants pull only, and the registry answers 401.
    token = registry_token(server.url, f"repository:{project}/anon:pull,push", username=None)
    assert token_access(token) == [
        {"type": "repository", "name": f"{project}/anon", "actions": ["pull"]}
    ]
    challenge = assert_unauthorized(
        v2_push_attempt(server, f"{project}/anon", token), f"{project}/anon"
    )
    assert challenge["error"] == "insufficient_scope"
    # Without any token it is the same answer: sign in first.
    assert_unauthorized(v2_push_attempt(server, f"{project}/anon", None), f"{project}/anon")


# -- robots


def test_a_pull_only_robot_pulls_but_cannot_push(
    server: RegistryProcess,
    admin_api: httpx.Client,
    admin_v2: httpx.Client,
    tools: ToolEnvironment,
    admin_skopeo: Skopeo,
    image_layout: tuple[Image, Layout],
    tmp_path: Path,
) -> None:
    image, layout = image_layout
    project = create_project(admin_api)
    repository = f"{project}/app"
    admin_skopeo.copy(layout.reference, docker_ref(server, repository, "v1"))
    created = admin_api.post(
        f"/projects/{project}/robots",
        json={
            "name": "puller",
            "permissions": [{"project": project, "repositories": "**", "actions": ["pull"]}],
        },
    )
    assert created.status_code == 201, created.text
    name, secret = created.json()["name"], created.json()["secret"]
    assert name == f"robot${project}+puller"
    robot = Skopeo(tools, creds=f"{name}:{secret}")

    assert_pulled(robot, server, repository, image, tmp_path / "out")

    assert_refused(
        robot,
        robot.copy_args(layout.reference, docker_ref(server, repository, "robot")),
        "unauthorized",
    )
    assert_not_in_registry(admin_v2, repository, "robot")

    token = registry_token(
        server.url, f"repository:{repository}:pull,push", username=name, password=secret
    )
    assert token_access(token) == [{"type": "repository", "name": repository, "actions": ["pull"]}]
    challenge = assert_unauthorized(v2_push_attempt(server, repository, token), repository)
    assert challenge["error"] == "insufficient_scope"


# -- personal access tokens


def test_a_personal_access_token_is_a_password_for_skopeo(
    server: RegistryProcess,
    admin_api: httpx.Client,
    admin_v2: httpx.Client,
    tools: ToolEnvironment,
    image_layout: tuple[Image, Layout],
    tmp_path: Path,
) -> None:
    image, layout = image_layout
    project = create_project(admin_api)
    developer = member(admin_api, project, "developer")
    with api_client(server, developer, PASSWORD) as user_api:
        created = user_api.post("/users/me/tokens", json={"name": unique("skopeo")})
    assert created.status_code == 201, created.text
    token = created.json()["token"]
    skopeo = Skopeo(tools, creds=f"{developer}:{token}")
    repository = f"{project}/app"

    skopeo.copy(layout.reference, docker_ref(server, repository, "v1"))

    assert_image_in_registry(admin_v2, repository, image)
    assert_pulled(skopeo, server, repository, image, tmp_path / "out")


# -- no membership, no access


def test_a_user_without_membership_neither_pulls_nor_lists_a_private_image(
    server: RegistryProcess,
    admin_api: httpx.Client,
    tools: ToolEnvironment,
    admin_skopeo: Skopeo,
    image_layout: tuple[Image, Layout],
    tmp_path: Path,
) -> None:
    image, layout = image_layout
    project = create_project(admin_api)
    repository = f"{project}/app"
    admin_skopeo.copy(layout.reference, docker_ref(server, repository, "v1"))
    outsider = create_user(admin_api, "outsider")
    guest = member(admin_api, project, "guest")
    skopeo = Skopeo(tools, creds=f"{outsider}:{PASSWORD}")

    assert_refused(
        skopeo,
        skopeo.copy_args(docker_ref(server, repository, "v1"), f"oci:{tmp_path / 'out'}:pulled"),
        "unauthorized",
    )
    assert_refused(
        skopeo,
        [
            "inspect",
            "--tls-verify=false",
            *skopeo.creds_args(),
            docker_ref(server, repository, "v1"),
        ],
        "unauthorized",
    )
    # The refusal is the registry's, not a failed sign-in: the token simply grants nothing.
    outsider_token = registry_token(
        server.url, f"repository:{repository}:pull", username=outsider, password=PASSWORD
    )
    assert token_access(outsider_token) == []

    catalog_scope = "registry:catalog:*"
    outsider_catalog = registry_token(
        server.url, catalog_scope, username=outsider, password=PASSWORD
    )
    assert repository not in catalog(server, outsider_catalog)
    # The same listing shows it to a member and to the administrator.
    guest_catalog = registry_token(server.url, catalog_scope, username=guest, password=PASSWORD)
    assert repository in catalog(server, guest_catalog)
    assert repository in catalog(server, registry_token(server.url, catalog_scope))
    guest_skopeo = Skopeo(tools, creds=f"{guest}:{PASSWORD}")
    assert json.loads(guest_skopeo.inspect(docker_ref(server, repository, "v1")))["Digest"] == (
        image.manifest.digest
    )


# -- upload sessions belong to whoever opened them


def test_an_upload_session_is_unknown_to_another_pusher(
    server: RegistryProcess, admin_api: httpx.Client
) -> None:
    project = create_project(admin_api)
    repository = f"{project}/app"
    alice = member(admin_api, project, "developer", "alice")
    bob = member(admin_api, project, "developer", "bob")
    data = os.urandom(300_000)
    scope = f"repository:{repository}:pull,push"
    alice_token = registry_token(server.url, scope, username=alice, password=PASSWORD)
    bob_token = registry_token(server.url, scope, username=bob, password=PASSWORD)
    # Both may push here: the refusal below is about the session, not the repository.
    for token in (alice_token, bob_token):
        assert token_access(token) == [
            {"type": "repository", "name": repository, "actions": ["pull", "push"]}
        ]

    with httpx.Client(base_url=server.url, timeout=60, headers=bearer(alice_token)) as as_alice:
        opened = as_alice.post(f"/v2/{repository}/blobs/uploads/")
        assert opened.status_code == 202, opened.text
        patched = as_alice.patch(
            opened.headers["Location"],
            content=data[:100_000],
            headers={"Content-Type": "application/octet-stream", "Content-Range": "0-99999"},
        )
        assert patched.status_code == 202, patched.text
        location = patched.headers["Location"]

    with httpx.Client(base_url=server.url, timeout=60, headers=bearer(bob_token)) as as_bob:
        attempts = [
            as_bob.get(location),
            as_bob.patch(
                location,
                content=data[100_000:],
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"100000-{len(data) - 1}",
                },
            ),
            as_bob.put(location, params={"digest": sha256_digest(data[:100_000])}),
            as_bob.delete(location),
        ]
        for response in attempts:
            assert response.status_code == 404, f"{response.request.method}: {response.text}"
            assert response.json()["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN"
        # Bob's own session in the same repository works.
        own = as_bob.post(f"/v2/{repository}/blobs/uploads/")
        assert own.status_code == 202, own.text
        assert upload_id(own.headers["Location"]) != upload_id(location)

    with httpx.Client(base_url=server.url, timeout=60, headers=bearer(alice_token)) as as_alice:
        # Untouched by Bob: still Alice's, with exactly her bytes, and she can finish it.
        status = as_alice.get(location)
        assert status.status_code == 204, status.text
        assert stored_size(status.headers["Range"]) == 100_000
        finished = as_alice.put(
            location,
            params={"digest": sha256_digest(data)},
            content=data[100_000:],
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Range": f"100000-{len(data) - 1}",
            },
        )
        assert finished.status_code == 201, finished.text
        assert fetch_blob(as_alice, repository, sha256_digest(data)) == data


# -- narrowed credentials stay narrow


def test_a_pull_only_personal_access_token_cannot_push_into_a_new_project(
    server: RegistryProcess,
    admin_api: httpx.Client,
    tools: ToolEnvironment,
    admin_skopeo: Skopeo,
    image_layout: tuple[Image, Layout],
) -> None:
    image, layout = image_layout
    existing = create_project(admin_api)
    admin_skopeo.copy(layout.reference, docker_ref(server, f"{existing}/app", "v1"))
    created = admin_api.post(
        "/users/me/tokens",
        json={"name": unique("read-only"), "scopes": [{"project": "*", "actions": ["pull"]}]},
    )
    assert created.status_code == 201, created.text
    read_only = Skopeo(tools, creds=f"admin:{created.json()['token']}")
    # The token works for what it allows...
    summary = json.loads(read_only.inspect(docker_ref(server, f"{existing}/app", "v1")))
    assert summary["Digest"] == image.manifest.digest

    # ...and nothing more: no push, not even into a project it would create. The token's
    # ceiling travels with the registry token it is traded for, so the refusal says why.
    new_project = unique("via-pull-token")
    assert_refused(
        read_only,
        read_only.copy_args(layout.reference, docker_ref(server, f"{new_project}/app", "v1")),
        "you may not create projects",
    )
    assert admin_api.get(f"/projects/{new_project}").status_code == 404


def test_a_push_refused_for_lack_of_scope_creates_no_project(
    server: RegistryProcess, admin_api: httpx.Client
) -> None:
    repository = f"{unique('refused')}/app"
    pull_only = registry_token(server.url, f"repository:{repository}:pull")
    assert token_access(pull_only) == [
        {"type": "repository", "name": repository, "actions": ["pull"]}
    ]

    challenge = assert_unauthorized(v2_push_attempt(server, repository, pull_only), repository)

    assert challenge["error"] == "insufficient_scope"
    assert admin_api.get(f"/projects/{repository.split('/')[0]}").status_code == 404
