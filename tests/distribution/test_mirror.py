"""Transparent mirror mode against real processes: Moorage, Debian's docker-registry (CNCF
Distribution) as the upstreams, and skopeo and podman as the clients a `registry-mirrors` or
containerd `hosts.toml` mirror would be.

A name without a project (`library/busybox`) is served by the default mirror; containerd's
`ns=<upstream host>` picks the proxy-cache project by its upstream; local projects keep their
own names; pushes are never mirrored; tokens name the real repositories.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from moorage.services.distribution.mirror import normalize_host
from tests.registry.test_clients_skopeo import Podman, Skopeo, podman_environment, tool_environment
from tests.support.api import (
    PASSWORD,
    api_client,
    assert_problem,
    create_project,
    create_user,
    eventually,
    set_role,
)
from tests.support.auth import ADMIN_USER, RegistryAuth, parse_challenge
from tests.support.distribution import Distribution
from tests.support.images import Image, busybox_image, write_layout
from tests.support.oci import (
    OCI_INDEX,
    OCI_MANIFEST,
    Pushed,
    assert_oci_error,
    fetch_token,
    push_image,
    token_claims,
)
from tests.support.server import RegistryProcess

pytestmark = pytest.mark.tools("docker-registry")

ACCEPT = {"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    with RegistryProcess(tmp_path_factory.mktemp("mirror") / "data").start() as process:
        yield process


@pytest.fixture(scope="module")
def second_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Distribution]:
    with Distribution(tmp_path_factory.mktemp("upstream-b")).start() as registry:
        yield registry


def make_proxy(admin: httpx.Client, upstream: Distribution, prefix: str = "hub") -> str:
    project = create_project(admin, prefix)
    body = {"url": upstream.url, "allowPrivateNetwork": True}
    response = admin.put(f"/projects/{project}/proxy", json=body)
    assert response.status_code == 200, response.text
    return project


def set_mirror(admin: httpx.Client, project: str | None) -> dict[str, Any]:
    response = admin.put("/mirror", json={"project": project})
    assert response.status_code == 200, response.text
    shown: dict[str, Any] = response.json()
    return shown


def mirror_serves(client: httpx.Client, name: str, reference: str, digest: str) -> bool:
    """Whether the mirror path answers with `digest` yet (settings reach workers within 2 s)."""
    response = client.get(f"/v2/{name}/manifests/{reference}", headers=ACCEPT)
    return response.status_code == 200 and response.headers["Docker-Content-Digest"] == digest


def upstream_image(upstream: Distribution, repository: str, tag: str) -> Pushed:
    with upstream.client() as client:
        return push_image(client, repository, tag, layer_count=2)


def unique_path(admin: httpx.Client, prefix: str) -> str:
    """A repository path below `library/` that no other test uses."""
    return f"library/{create_project(admin, prefix)}"


def test_a_name_without_a_project_is_served_by_the_mirror_with_a_token(
    server: RegistryProcess,
    upstream: Distribution,
    admin: httpx.Client,
    puller: httpx.Client,
) -> None:
    hub = make_proxy(admin, upstream)
    name = unique_path(admin, "plain")
    image = upstream_image(upstream, name, "1")
    set_mirror(admin, hub)
    eventually(lambda: mirror_serves(puller, name, "1", image.digest), what="mirror in effect")
    # The content was stored in the proxy-cache project under its own name ...
    cached = puller.get(f"/v2/{hub}/{name}/manifests/{image.digest}", headers=ACCEPT)
    assert cached.status_code == 200
    document = json.loads(image.body)
    for descriptor in [document["config"], *document["layers"]]:
        blob = puller.get(f"/v2/{name}/blobs/{descriptor['digest']}")
        assert blob.status_code == 200, blob.text
    # ... and fetched from the upstream once, whichever name asked.
    assert upstream.requests("GET", f"/v2/{name}/manifests/1") == 1
    tags = puller.get(f"/v2/{name}/tags/list")
    assert tags.status_code == 200
    assert tags.json()["tags"] == ["1"]

    # The challenge names what the client asked for; the token names the real repository.
    anonymous = httpx.get(f"{server.url}/v2/{name}/manifests/1", headers=ACCEPT)
    assert anonymous.status_code == 401
    challenge = parse_challenge(anonymous.headers["WWW-Authenticate"])
    assert challenge["scope"] == f"repository:{name}:pull"
    token = fetch_token(server.url, [challenge["scope"]])
    access = {entry["name"]: entry["actions"] for entry in token_claims(token)["access"]}
    assert access[f"{hub}/{name}"] == ["pull", "upstream-fetch"]
    guest = create_user(admin, "guest")
    set_role(admin, hub, guest, "guest")
    guest_token = fetch_token(server.url, [challenge["scope"]], (guest, PASSWORD))
    # Only the real repository, with what a guest may do there: no project `library` exists.
    assert token_claims(guest_token)["access"] == [
        {"type": "repository", "name": f"{hub}/{name}", "actions": ["pull"]}
    ]
    with_token = httpx.get(
        f"{server.url}/v2/{name}/manifests/1",
        headers={**ACCEPT, "Authorization": f"Bearer {token}"},
    )
    assert with_token.status_code == 200
    assert with_token.headers["Docker-Content-Digest"] == image.digest


def test_mirror_pulls_need_pull_on_the_mirror_project_and_upstream_fetch_for_new_content(
    server: RegistryProcess, upstream: Distribution, admin: httpx.Client, puller: httpx.Client
) -> None:
    hub = make_proxy(admin, upstream)
    name = unique_path(admin, "perm")
    cached = upstream_image(upstream, name, "cached")
    fresh = upstream_image(upstream, name, "fresh")
    set_mirror(admin, hub)
    eventually(lambda: mirror_serves(puller, name, "cached", cached.digest), what="mirror")
    outsider = create_user(admin, "outsider")
    guest = create_user(admin, "guest")
    set_role(admin, hub, guest, "guest")

    with httpx.Client(
        base_url=server.url, timeout=60, auth=RegistryAuth(outsider, PASSWORD)
    ) as client:
        refused = client.get(f"/v2/{name}/manifests/cached", headers=ACCEPT)
        assert_oci_error(refused, 401, "UNAUTHORIZED")
        assert 'error="insufficient_scope"' in refused.headers["WWW-Authenticate"]
    token = fetch_token(server.url, [f"repository:{name}:pull"], (outsider, PASSWORD))
    assert token_claims(token)["access"] == []

    with httpx.Client(
        base_url=server.url, timeout=60, auth=RegistryAuth(guest, PASSWORD)
    ) as client:
        # What is cached pulls with `pull` alone ...
        assert mirror_serves(client, name, "cached", cached.digest)
        # ... and new content needs upstream-fetch, as in the proxy-cache project itself.
        error = assert_oci_error(
            client.get(f"/v2/{name}/manifests/fresh", headers=ACCEPT), 403, "DENIED"
        )
        assert "upstream-fetch" in error["message"]
    assert upstream.requests("GET", f"/v2/{name}/manifests/fresh") == 0
    assert mirror_serves(puller, name, "fresh", fresh.digest)


def test_local_projects_keep_their_names(
    upstream: Distribution, admin: httpx.Client, puller: httpx.Client
) -> None:
    hub = make_proxy(admin, upstream)
    set_mirror(admin, hub)
    local = create_project(admin, "local")
    mine = push_image(puller, f"{local}/app", "1")
    # The upstream has an organization of the same name with other content.
    theirs = upstream_image(upstream, f"{local}/app", "1")
    assert mine.digest != theirs.digest
    eventually(
        lambda: mirror_serves(puller, f"{local}/app", "1", mine.digest), what="local content"
    )
    assert upstream.requests("GET", f"/v2/{local}/app/manifests/1", status=None) == 0
    # The upstream's organization stays reachable through the mirror project's own prefix.
    assert mirror_serves(puller, f"{hub}/{local}/app", "1", theirs.digest)


def test_pushes_without_a_project_are_not_mirrored(
    server: RegistryProcess, upstream: Distribution, admin: httpx.Client, puller: httpx.Client
) -> None:
    hub = make_proxy(admin, upstream)
    name = unique_path(admin, "push")
    image = upstream_image(upstream, name, "1")
    set_mirror(admin, hub)
    eventually(lambda: mirror_serves(puller, name, "1", image.digest), what="mirror")
    developer = create_user(admin, "developer")
    set_role(admin, hub, developer, "developer")
    uploads_before = upstream.requests("POST", f"/v2/{name}/blobs/uploads/", status=None)
    with httpx.Client(
        base_url=server.url, timeout=60, auth=RegistryAuth(developer, PASSWORD)
    ) as client:
        # The normal answer for a project that does not exist: not a push into the mirror.
        response = client.post(f"/v2/{name}/blobs/uploads/")
        error = assert_oci_error(response, 403, "DENIED")
        assert "project 'library' does not exist" in error["message"]
        deleted = client.delete(f"/v2/{name}/manifests/{image.digest}")
        assert deleted.status_code in (401, 403, 404), deleted.text
    # Nothing reached the proxy-cache project's refusal or the upstream.
    assert puller.get(f"/v2/{hub}/{name}/manifests/{image.digest}").status_code == 200
    assert upstream.requests("POST", f"/v2/{name}/blobs/uploads/", status=None) == uploads_before


def test_ns_chooses_among_proxy_projects_by_upstream_host(
    server: RegistryProcess,
    upstream: Distribution,
    second_upstream: Distribution,
    admin: httpx.Client,
    puller: httpx.Client,
) -> None:
    first = make_proxy(admin, upstream, "first")
    second = make_proxy(admin, second_upstream, "second")
    set_mirror(admin, first)
    name = unique_path(admin, "ns")
    one = upstream_image(upstream, name, "1")
    two = upstream_image(second_upstream, name, "1")
    eventually(lambda: mirror_serves(puller, name, "1", one.digest), what="default mirror")

    def pull(ns: str) -> httpx.Response:
        return puller.get(f"/v2/{name}/manifests/1", params={"ns": ns}, headers=ACCEPT)

    host_one = upstream.url.removeprefix("http://")
    host_two = second_upstream.url.removeprefix("http://")
    assert pull(host_one).headers["Docker-Content-Digest"] == one.digest
    assert pull(host_two).headers["Docker-Content-Digest"] == two.digest
    # What `ns` chose was cached in that project.
    stored = puller.get(f"/v2/{second}/{name}/manifests/1", headers=ACCEPT)
    assert stored.headers["Docker-Content-Digest"] == two.digest
    # Blobs and tags follow `ns` too.
    layer = json.loads(two.body)["layers"][0]["digest"]
    blob = puller.get(f"/v2/{name}/blobs/{layer}", params={"ns": host_two})
    assert blob.status_code == 200
    assert puller.get(f"/v2/{name}/blobs/{layer}").status_code == 404
    # A token for the client's name covers whichever project `ns` picks, as far as the caller
    # may pull there: a user of the second project only.
    user = create_user(admin, "second-only")
    set_role(admin, second, user, "guest")
    with httpx.Client(base_url=server.url, timeout=60, auth=RegistryAuth(user, PASSWORD)) as client:
        chosen = client.get(f"/v2/{name}/manifests/1", params={"ns": host_two}, headers=ACCEPT)
        assert chosen.headers["Docker-Content-Digest"] == two.digest
        default = client.get(f"/v2/{name}/manifests/1", headers=ACCEPT)
        assert_oci_error(default, 401, "UNAUTHORIZED")
    # An upstream no project mirrors: not found, so containerd tries its next host.
    error = assert_oci_error(pull("ghcr.io"), 404, "NAME_UNKNOWN")
    assert "ghcr.io" in error["message"]
    # `ns` naming this registry itself: the name is local.
    local = create_project(admin, "own")
    pushed = push_image(puller, f"{local}/app", "1")
    own = puller.get(f"/v2/{local}/app/manifests/1", params={"ns": server.host}, headers=ACCEPT)
    assert own.headers["Docker-Content-Digest"] == pushed.digest
    # A name that already carries the chosen project's prefix keeps it (override_path hosts).
    prefixed = puller.get(
        f"/v2/{second}/{name}/manifests/1", params={"ns": host_two}, headers=ACCEPT
    )
    assert prefixed.headers["Docker-Content-Digest"] == two.digest


def test_docker_hub_hosts_are_one_host() -> None:
    for name in ("docker.io", "index.docker.io", "registry-1.docker.io", "Docker.IO"):
        assert normalize_host(name) == "docker.io"
    assert normalize_host("registry-1.docker.io:443") == "docker.io"
    assert normalize_host("ghcr.io") == "ghcr.io"
    assert normalize_host("127.0.0.1:5000") == "127.0.0.1:5000"
    assert normalize_host("bad host/x") is None


def test_the_mirror_setting_api_and_its_audit(
    upstream: Distribution, admin: httpx.Client, server: RegistryProcess
) -> None:
    hub = make_proxy(admin, upstream)
    plain = create_project(admin, "plain")
    assert_problem(admin.put("/mirror", json={"project": plain}), 400)
    assert_problem(admin.put("/mirror", json={"project": "no-such-project"}), 404)
    assert_problem(admin.put("/mirror", json={"project": "Not A Name"}), 422)
    shown = set_mirror(admin, hub)
    assert shown["project"] == hub
    assert shown["source"] == "api"
    assert shown["updatedBy"] == ADMIN_USER
    assert admin.get("/mirror").json()["project"] == hub
    none = set_mirror(admin, None)
    assert none["project"] is None
    assert none["source"] == "none"
    reset = admin.delete("/mirror")
    assert reset.status_code == 200
    assert reset.json()["source"] == "none"
    user = create_user(admin, "nonadmin")
    with api_client(server, user, PASSWORD) as other:
        assert_problem(other.get("/mirror"), 403)
        assert_problem(other.put("/mirror", json={"project": hub}), 403)

    def entries(action: str) -> list[dict[str, Any]]:
        response = admin.get("/audit-logs", params={"action": action, "limit": 100})
        assert response.status_code == 200, response.text
        found: list[dict[str, Any]] = response.json()
        return found

    eventually(
        lambda: bool(entries("mirror:configure")) and bool(entries("mirror:reset")),
        what="mirror changes audited",
    )
    configured = [
        e for e in entries("mirror:configure") if (e["details"] or {}).get("project") == hub
    ]
    assert configured
    assert configured[0]["actor"] == ADMIN_USER
    assert configured[0]["resource"] == "registry:mirror"


def test_the_configuration_file_names_the_mirror_until_the_api_overrides_it(
    tmp_path: Path, upstream: Distribution
) -> None:
    server = RegistryProcess(tmp_path / "data", env={"MOORAGE_MIRROR_PROJECT": "dockerhub"})
    server.start()
    try:
        with (
            api_client(server) as admin,
            httpx.Client(base_url=server.url, timeout=60, auth=RegistryAuth()) as puller,
        ):
            assert admin.post("/projects", json={"name": "dockerhub"}).status_code == 201
            body = {"url": upstream.url, "allowPrivateNetwork": True}
            assert admin.put("/projects/dockerhub/proxy", json=body).status_code == 200
            shown = admin.get("/mirror").json()
            assert (shown["project"], shown["source"]) == ("dockerhub", "config")
            image = upstream_image(upstream, "library/configured", "1")
            eventually(
                lambda: mirror_serves(puller, "library/configured", "1", image.digest),
                what="configured mirror",
            )
            set_mirror(admin, None)
            eventually(
                lambda: puller.get("/v2/library/configured/manifests/1").status_code == 404,
                what="mirror switched off",
            )
            assert admin.delete("/mirror").json()["source"] == "config"
    finally:
        server.stop()


# -- real clients


@pytest.fixture(scope="module")
def busybox(tmp_path_factory: pytest.TempPathFactory) -> tuple[Image, Path]:
    image = busybox_image(label="mirror")
    layout = write_layout(tmp_path_factory.mktemp("layout") / "busybox", "1", image)
    return image, layout.path


def publish_upstream(tmp_path: Path, upstream: Distribution, layout: Path, repository: str) -> None:
    skopeo = Skopeo(tool_environment(tmp_path / "publish"), creds=None)
    skopeo.run(
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        "--dest-no-creds",
        f"oci:{layout}:1",
        f"docker://{upstream.url.removeprefix('http://')}/{repository}:1",
    )


@pytest.mark.tools("skopeo")
def test_skopeo_pulls_through_the_mirror_path_without_a_prefix(
    tmp_path: Path,
    server: RegistryProcess,
    upstream: Distribution,
    admin: httpx.Client,
    puller: httpx.Client,
    busybox: tuple[Image, Path],
) -> None:
    image, layout = busybox
    hub = make_proxy(admin, upstream)
    publish_upstream(tmp_path, upstream, layout, "library/busybox")
    set_mirror(admin, hub)
    reader = create_user(admin, "reader")
    set_role(admin, hub, reader, "maintainer")  # pull and upstream-fetch
    skopeo = Skopeo(tool_environment(tmp_path / "client"), creds=f"{reader}:{PASSWORD}")
    target = tmp_path / "copy"
    skopeo.run(
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        *skopeo.creds_args("--src-creds"),
        f"docker://{server.host}/library/busybox:1",
        f"oci:{target}:1",
    )
    index = json.loads((target / "index.json").read_text())
    assert index["manifests"][0]["digest"] == image.manifest.digest
    for blob in image.blobs:
        stored = target / "blobs" / "sha256" / blob.digest.removeprefix("sha256:")
        assert stored.stat().st_size == blob.size
    assert upstream.requests("GET", "/v2/library/busybox/manifests/1") == 1
    # Cached now: the same name pulls again without the upstream.
    assert mirror_serves(puller, "library/busybox", "1", image.manifest.digest)
    assert upstream.requests("GET", "/v2/library/busybox/manifests/1") == 1


@pytest.mark.tools("podman")
def test_podman_pulls_through_the_mirror_path_without_a_prefix(
    tmp_path: Path,
    server: RegistryProcess,
    upstream: Distribution,
    admin: httpx.Client,
    busybox: tuple[Image, Path],
) -> None:
    image, layout = busybox
    hub = make_proxy(admin, upstream)
    publish_upstream(tmp_path, upstream, layout, "library/podbox")
    set_mirror(admin, hub)
    importer = create_user(admin, "importer")
    set_role(admin, hub, importer, "maintainer")  # may bring new content in
    podman: Podman = podman_environment(tmp_path / "podman")
    try:
        podman.login(server.host, importer, PASSWORD)
        reference = f"{server.host}/library/podbox:1"
        podman.run("pull", "--quiet", "--tls-verify=false", reference)
        assert podman.image_info(reference)["Digest"] == image.manifest.digest
        assert upstream.requests("GET", "/v2/library/podbox/manifests/1") == 1
    finally:
        podman.attempt("rmi", "--all", "--force")


def test_tags_list_through_the_mirror_answers_with_the_name_asked_for(
    upstream: Distribution, admin: httpx.Client, puller: httpx.Client
) -> None:
    hub = make_proxy(admin, upstream)
    name = unique_path(admin, "tagged")
    image = upstream_image(upstream, name, "1")
    upstream_image(upstream, name, "2")
    set_mirror(admin, hub)
    eventually(lambda: mirror_serves(puller, name, "1", image.digest), what="mirror in effect")
    assert puller.get(f"/v2/{name}/manifests/2", headers=ACCEPT).status_code == 200
    tags = puller.get(f"/v2/{name}/tags/list")
    assert tags.status_code == 200, tags.text
    assert tags.json() == {"name": name, "tags": ["1", "2"]}
    # The next page's link names it too, so a client follows it through the mirror.
    page = puller.get(f"/v2/{name}/tags/list", params={"n": "1"})
    assert page.json() == {"name": name, "tags": ["1"]}
    assert page.headers["Link"].startswith(f"</v2/{name}/tags/list?")
    # Asked with the project's prefix, the project's name is the answer.
    prefixed = puller.get(f"/v2/{hub}/{name}/tags/list")
    assert prefixed.json()["name"] == f"{hub}/{name}"


def upstream_gets(upstream: Distribution, path: str) -> list[str]:
    """The user agents of the upstream's GET requests of `path` (from its access log)."""
    marker = f'"GET {path} HTTP/1.1"'
    return [
        line.rstrip().rsplit('"', 2)[-2] for line in upstream.logs().splitlines() if marker in line
    ]


@pytest.mark.tools("skopeo")
def test_skopeo_uses_moorage_as_a_registries_conf_mirror(
    tmp_path: Path,
    server: RegistryProcess,
    upstream: Distribution,
    admin: httpx.Client,
    puller: httpx.Client,
    busybox: tuple[Image, Path],
) -> None:
    """containers-registries.conf(5): the upstream's images are pulled by their own name, and
    skopeo asks Moorage (the mirror, in mirror mode) first."""
    image, layout = busybox
    hub = make_proxy(admin, upstream)
    repository = unique_path(admin, "conf")
    publish_upstream(tmp_path, upstream, layout, repository)
    set_mirror(admin, hub)
    importer = create_user(admin, "confpull")
    set_role(admin, hub, importer, "maintainer")  # pull and upstream-fetch
    tools = tool_environment(tmp_path / "client")
    upstream_host = upstream.url.removeprefix("http://")
    conf = tmp_path / "registries.conf"
    conf.write_text(
        "unqualified-search-registries = []\n"
        "\n"
        "[[registry]]\n"
        f'location = "{upstream_host}"\n'
        "insecure = true\n"
        "\n"
        "[[registry.mirror]]\n"
        f'location = "{server.host}"\n'
        "insecure = true\n"
    )
    # Credentials are looked up for the host contacted: the mirror's.
    token = base64.b64encode(f"{importer}:{PASSWORD}".encode()).decode()
    (tmp_path / "client" / "auth.json").write_text(
        json.dumps({"auths": {server.host: {"auth": token}}})
    )
    skopeo = Skopeo(tools, creds=None)

    def mirrored() -> bool:
        """The mirror is in effect: an absent tag is asked of the upstream."""
        response = puller.get(f"/v2/{repository}/manifests/absent", headers=ACCEPT)
        return response.status_code == 404 and "upstream" in response.text

    eventually(mirrored, what="mirror in effect")
    target = tmp_path / "copy"
    skopeo.run(
        "--registries-conf",
        str(conf),
        "copy",
        "--quiet",
        f"docker://{upstream_host}/{repository}:1",
        f"oci:{target}:1",
    )
    index = json.loads((target / "index.json").read_text())
    assert index["manifests"][0]["digest"] == image.manifest.digest
    # Only Moorage went to the upstream, once; skopeo never did.
    assert upstream_gets(upstream, f"/v2/{repository}/manifests/1") == ["moorage"]
    for blob in image.blobs:
        assert upstream_gets(upstream, f"/v2/{repository}/blobs/{blob.digest}") == ["moorage"]
