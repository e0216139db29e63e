"""Proxy-cache projects against a real upstream: Debian's docker-registry (CNCF Distribution)
started by the tests, and the real Moorage server talking HTTP.

The upstream's access log is the witness of how often Moorage went upstream.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from click.testing import CliRunner

from moorage.cli import main
from tests.support.api import (
    PASSWORD,
    api_client,
    assert_problem,
    create_project,
    create_user,
    eventually,
    set_role,
)
from tests.support.auth import ADMIN_PASSWORD, ADMIN_USER, RegistryAuth
from tests.support.distribution import Distribution
from tests.support.oci import (
    OCI_INDEX,
    OCI_MANIFEST,
    Pushed,
    assert_oci_error,
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
from tests.support.pki import CertificateAuthority
from tests.support.server import RegistryProcess, free_port
from tests.support.wait import wait_until

pytestmark = pytest.mark.tools("docker-registry")

ACCEPT = {"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"}
UPSTREAM_USER = "mirror"
UPSTREAM_PASSWORD = "upstream-secret-4f1c"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    """Two workers, so single flight is exercised across processes too."""
    with RegistryProcess(tmp_path_factory.mktemp("proxy") / "data", workers=2).start() as process:
        yield process


def make_proxy(admin: httpx.Client, upstream: Distribution, **fields: Any) -> str:
    project = create_project(admin, "cache", public=bool(fields.pop("public", False)))
    body = {"url": upstream.url, "allowPrivateNetwork": True, **fields}
    response = admin.put(f"/projects/{project}/proxy", json=body)
    assert response.status_code == 200, response.text
    return project


def pull_image(client: httpx.Client, repository: str, reference: str) -> tuple[str, list[bytes]]:
    """Pull a manifest and every blob it names; (manifest digest, blob contents)."""
    response = client.get(f"/v2/{repository}/manifests/{reference}", headers=ACCEPT)
    assert response.status_code == 200, response.text
    document = response.json()
    blobs = []
    for descriptor in [document["config"], *document["layers"]]:
        blob = client.get(f"/v2/{repository}/blobs/{descriptor['digest']}")
        assert blob.status_code == 200, blob.text
        assert digest_of(blob.content) == descriptor["digest"]
        blobs.append(blob.content)
    return response.headers["Docker-Content-Digest"], blobs


def upstream_image(upstream: Distribution, repository: str, tag: str) -> Pushed:
    with upstream.client() as client:
        return push_image(client, repository, tag, layer_count=2)


def blob_digests(image: Pushed) -> list[str]:
    document = json.loads(image.body)
    return [document["config"]["digest"], *(layer["digest"] for layer in document["layers"])]


def test_a_miss_is_fetched_once_and_then_served_locally(
    upstream: Distribution, admin: httpx.Client, puller: httpx.Client
) -> None:
    project = make_proxy(admin, upstream)
    image = upstream_image(upstream, "lib/miss", "v1")
    first = pull_image(puller, f"{project}/lib/miss", "v1")
    second = pull_image(puller, f"{project}/lib/miss", "v1")
    by_digest = pull_image(puller, f"{project}/lib/miss", image.digest)
    assert first == second == by_digest
    assert first[0] == image.digest
    assert upstream.requests("GET", "/v2/lib/miss/manifests/v1") == 1
    for digest in blob_digests(image):
        assert upstream.requests("GET", f"/v2/lib/miss/blobs/{digest}") == 1
    # The cached manifest is an ordinary one: tags list shows it.
    tags = puller.get(f"/v2/{project}/lib/miss/tags/list")
    assert tags.json()["tags"] == ["v1"]


def test_pushes_into_a_proxy_project_are_refused(
    upstream: Distribution, admin: httpx.Client, puller: httpx.Client
) -> None:
    project = make_proxy(admin, upstream)
    response = puller.post(f"/v2/{project}/lib/pushed/blobs/uploads/")
    error = assert_oci_error(response, 403, "DENIED")
    assert "proxy cache" in error["message"]
    assert "refuses pushes" in error["message"]
    body = encode(image_manifest(Pushed("x", digest_of(b"c"), b"c"), []))
    response = puller.put(
        f"/v2/{project}/lib/pushed/manifests/v1",
        content=body,
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert_oci_error(response, 403, "DENIED")


def test_upstream_down_serves_cached_tags_and_digests_and_fails_clearly_otherwise(
    tmp_path: Path, admin: httpx.Client, puller: httpx.Client
) -> None:
    upstream = Distribution(tmp_path / "upstream").start()
    try:
        project = make_proxy(admin, upstream, tagTtlSeconds=0, timeoutSeconds=3)
        cached = upstream_image(upstream, "lib/down", "v1")
        missing = upstream_image(upstream, "lib/down", "v2")
        expected = pull_image(puller, f"{project}/lib/down", "v1")
    finally:
        upstream.stop()
    # TTL 0: every tag pull asks upstream, which is gone; the cached copy is served.
    assert pull_image(puller, f"{project}/lib/down", "v1") == expected
    assert pull_image(puller, f"{project}/lib/down", cached.digest) == expected
    response = puller.get(f"/v2/{project}/lib/down/manifests/v2", headers=ACCEPT)
    error = assert_oci_error(response, 502, "MANIFEST_UNKNOWN")
    assert "upstream is unavailable" in error["message"]
    blob = blob_digests(missing)[1]
    response = puller.get(f"/v2/{project}/lib/down/blobs/{blob}")
    assert response.status_code in (403, 502), response.text


def test_twenty_concurrent_pulls_of_one_uncached_blob_fetch_it_once(
    upstream: Distribution, admin: httpx.Client, server: RegistryProcess
) -> None:
    project = make_proxy(admin, upstream)
    data = random_bytes(64 * 1024 * 1024)
    with upstream.client() as client:
        layer = push_blob_object(client, "lib/big", "application/vnd.oci.image.layer.v1.tar", data)
        config = push_blob_object(
            client, "lib/big", "application/vnd.oci.image.config.v1+json", encode({"a": 1})
        )
        push_manifest(
            client, "lib/big", encode(image_manifest(config, [layer])), OCI_MANIFEST, "v1"
        )
    expected = hashlib.sha256(data).hexdigest()
    del data
    with httpx.Client(base_url=server.url, timeout=300, auth=RegistryAuth()) as warm:
        assert warm.get(f"/v2/{project}/lib/big/manifests/v1", headers=ACCEPT).status_code == 200

    def pull(_: int) -> str:
        digest = hashlib.sha256()
        with (
            httpx.Client(base_url=server.url, timeout=300, auth=RegistryAuth()) as client,
            client.stream("GET", f"/v2/{project}/lib/big/blobs/{layer.digest}") as response,
        ):
            assert response.status_code == 200, response.read()
            for chunk in response.iter_bytes(1 << 20):
                digest.update(chunk)
        return digest.hexdigest()

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(pull, range(20)))
    assert results == [expected] * 20
    assert upstream.requests("GET", f"/v2/lib/big/blobs/{layer.digest}") == 1


def test_a_stale_tag_is_revalidated_with_a_head(
    upstream: Distribution, admin: httpx.Client, puller: httpx.Client
) -> None:
    # Long enough that a few requests in a row fall within it even on a busy machine.
    project = make_proxy(admin, upstream, tagTtlSeconds=5)
    first = upstream_image(upstream, "lib/fresh", "v1")
    assert pull_image(puller, f"{project}/lib/fresh", "v1")[0] == first.digest
    # Within the TTL nothing goes upstream.
    assert pull_image(puller, f"{project}/lib/fresh", "v1")[0] == first.digest
    assert upstream.requests("HEAD", "/v2/lib/fresh/manifests/v1") == 0

    def tagged() -> str:
        response = puller.get(f"/v2/{project}/lib/fresh/manifests/v1", headers=ACCEPT)
        assert response.status_code == 200, response.text
        return response.headers["Docker-Content-Digest"]

    # After the TTL a HEAD finds it unchanged: no second GET.
    wait_until(
        lambda: (
            tagged() == first.digest and upstream.requests("HEAD", "/v2/lib/fresh/manifests/v1") > 0
        ),
        60,
        "a HEAD once the TTL is over",
        interval=0.5,
    )
    assert pull_image(puller, f"{project}/lib/fresh", "v1")[0] == first.digest
    assert upstream.requests("HEAD", "/v2/lib/fresh/manifests/v1") == 1
    assert upstream.requests("GET", "/v2/lib/fresh/manifests/v1") == 1
    second = upstream_image(upstream, "lib/fresh", "v1")
    assert pull_image(puller, f"{project}/lib/fresh", "v1")[0] == first.digest  # within TTL
    wait_until(lambda: tagged() == second.digest, 60, "the moved tag after the TTL", interval=0.5)
    assert pull_image(puller, f"{project}/lib/fresh", "v1")[0] == second.digest
    assert upstream.requests("HEAD", "/v2/lib/fresh/manifests/v1") == 2
    assert upstream.requests("GET", "/v2/lib/fresh/manifests/v1") == 2
    # Digest pulls of what is cached never go upstream.
    heads = upstream.requests("HEAD", f"/v2/lib/fresh/manifests/{first.digest}", status=None)
    assert pull_image(puller, f"{project}/lib/fresh", first.digest)[0] == first.digest
    assert upstream.requests("GET", f"/v2/lib/fresh/manifests/{first.digest}") == 0
    assert upstream.requests("HEAD", f"/v2/lib/fresh/manifests/{first.digest}", None) == heads


def test_only_upstream_fetch_brings_new_content_in(
    upstream: Distribution, admin: httpx.Client, server: RegistryProcess, puller: httpx.Client
) -> None:
    project = make_proxy(admin, upstream)
    developer, maintainer = create_user(admin, "dev"), create_user(admin, "lead")
    set_role(admin, project, developer, "developer")
    set_role(admin, project, maintainer, "maintainer")
    upstream_image(upstream, "lib/gate", "v1")
    upstream_image(upstream, "lib/gate", "v2")
    with httpx.Client(
        base_url=server.url, timeout=60, auth=RegistryAuth(developer, PASSWORD)
    ) as dev:
        response = dev.get(f"/v2/{project}/lib/gate/manifests/v1", headers=ACCEPT)
        error = assert_oci_error(response, 403, "DENIED")
        assert "upstream-fetch" in error["message"]
        # A maintainer (a lead) brings it in; from then on the developer pulls it.
        with httpx.Client(
            base_url=server.url, timeout=60, auth=RegistryAuth(maintainer, PASSWORD)
        ) as lead:
            expected = pull_image(lead, f"{project}/lib/gate", "v1")
        assert pull_image(dev, f"{project}/lib/gate", "v1") == expected
        assert_oci_error(
            dev.get(f"/v2/{project}/lib/gate/manifests/v2", headers=ACCEPT), 403, "DENIED"
        )
    assert upstream.requests("GET", "/v2/lib/gate/manifests/v2") == 0


def test_anonymous_callers_fetch_only_where_the_public_project_allows_it(
    upstream: Distribution, admin: httpx.Client, server: RegistryProcess, puller: httpx.Client
) -> None:
    closed = make_proxy(admin, upstream, public=True)
    open_project = make_proxy(admin, upstream, public=True, anonymousFetch=True)
    private = make_proxy(admin, upstream, anonymousFetch=True)
    upstream_image(upstream, "lib/anon", "v1")
    with httpx.Client(base_url=server.url, timeout=60, auth=RegistryAuth(None, None)) as anonymous:
        # Workers cache which projects are public for 2 seconds: until then a new public
        # project is challenged (401). The client keeps its connection, so its worker.
        wait_until(
            lambda: (
                anonymous.get(f"/v2/{closed}/lib/anon/manifests/v1", headers=ACCEPT).status_code
                != 401
            ),
            30,
            "the worker to see the new public projects",
        )
        response = anonymous.get(f"/v2/{closed}/lib/anon/manifests/v1", headers=ACCEPT)
        assert_oci_error(response, 403, "DENIED")
        expected = pull_image(puller, f"{closed}/lib/anon", "v1")
        assert pull_image(anonymous, f"{closed}/lib/anon", "v1") == expected
        assert pull_image(anonymous, f"{open_project}/lib/anon", "v1") == expected
        response = anonymous.get(f"/v2/{private}/lib/anon/manifests/v1", headers=ACCEPT)
        assert response.status_code == 401


def test_wrong_upstream_credentials_fail_clearly_and_are_never_shown(
    tmp_path: Path, admin: httpx.Client, puller: httpx.Client
) -> None:
    upstream = Distribution(tmp_path / "auth", users={UPSTREAM_USER: UPSTREAM_PASSWORD}).start()
    try:
        upstream_image(upstream, "lib/secret", "v1")
        wrong = make_proxy(admin, upstream, username=UPSTREAM_USER, password="not-the-password")
        response = puller.get(f"/v2/{wrong}/lib/secret/manifests/v1", headers=ACCEPT)
        error = assert_oci_error(response, 502, "DENIED")
        assert "refused this proxy's credentials" in error["message"]
        check = admin.post(f"/projects/{wrong}/proxy/check")
        assert check.status_code == 200
        assert check.json()["ok"] is False
        right = make_proxy(admin, upstream, username=UPSTREAM_USER, password=UPSTREAM_PASSWORD)
        assert admin.post(f"/projects/{right}/proxy/check").json()["ok"] is True
        assert pull_image(puller, f"{right}/lib/secret", "v1")
        # Changing other settings keeps the stored password.
        changed = admin.put(
            f"/projects/{right}/proxy",
            json={
                "url": upstream.url,
                "allowPrivateNetwork": True,
                "username": UPSTREAM_USER,
                "tagTtlSeconds": 0,
            },
        )
        assert changed.status_code == 200, changed.text
        assert changed.json()["credential"] == "password"
        assert pull_image(puller, f"{right}/lib/secret", "v1")
    finally:
        upstream.stop()
    shown = admin.get(f"/projects/{right}/proxy")
    assert shown.status_code == 200
    assert UPSTREAM_PASSWORD not in shown.text
    assert "password" not in shown.json()
    eventually(
        lambda: bool(admin.get("/audit-logs", params={"action": "proxy:configure"}).json()),
        what="proxy configuration audited",
    )
    audit = admin.get("/audit-logs", params={"action": "proxy:configure", "limit": 100}).text
    assert UPSTREAM_PASSWORD not in audit
    assert "not-the-password" not in audit


def test_a_platform_filter_fetches_only_the_chosen_children(
    upstream: Distribution, admin: httpx.Client, puller: httpx.Client
) -> None:
    project = make_proxy(admin, upstream, platforms=["linux/amd64"])
    with upstream.client() as client:
        index, children = push_multi_platform(
            client, "lib/multi", [platform("linux", "amd64"), platform("linux", "s390x")], "v1"
        )
    response = puller.get(f"/v2/{project}/lib/multi/manifests/v1", headers=ACCEPT)
    assert response.status_code == 200, response.text
    assert response.headers["Docker-Content-Digest"] == index.digest
    amd64, s390x = children
    assert upstream.requests("GET", f"/v2/lib/multi/manifests/{amd64.digest}") == 1
    assert upstream.requests("GET", f"/v2/lib/multi/manifests/{s390x.digest}") == 0
    # A client that cannot read indexes gets the amd64 child from the cache.
    plain = puller.get(f"/v2/{project}/lib/multi/manifests/v1", headers={"Accept": OCI_MANIFEST})
    assert plain.headers["Docker-Content-Digest"] == amd64.digest


def test_the_proxy_configuration_api(
    upstream: Distribution, admin: httpx.Client, server: RegistryProcess
) -> None:
    project = create_project(admin, "conf")
    assert_problem(admin.get(f"/projects/{project}/proxy"), 404)
    for bad in (
        {"url": "ftp://example.org"},
        {"url": upstream.url},  # loopback without allowPrivateNetwork
        {"url": "http://user:pw@example.org"},
        {"url": "https://example.org", "platforms": ["linux"]},
        {"url": "https://example.org", "password": "x"},
        {"url": "https://example.org", "tagTtlSeconds": -1},
    ):
        response = admin.put(f"/projects/{project}/proxy", json=bad)
        assert response.status_code in (400, 422), (bad, response.text)
        assert response.headers["Content-Type"].startswith("application/problem+json")
    hub = admin.put(
        f"/projects/{project}/proxy",
        json={"url": "https://docker.io", "username": "someone", "token": "dckr_pat_x"},
    )
    assert hub.status_code == 200, hub.text
    assert hub.json()["flavor"] == "docker-hub"
    assert hub.json()["url"] == "https://registry-1.docker.io"
    assert hub.json()["credential"] == "token"
    assert "dckr_pat_x" not in hub.text
    user = create_user(admin, "owner")
    set_role(admin, project, user, "project-admin")
    with api_client(server, user, PASSWORD) as owner:
        assert owner.get(f"/projects/{project}/proxy").status_code == 200
        assert_problem(owner.put(f"/projects/{project}/proxy", json={"url": upstream.url}), 403)
        assert_problem(owner.delete(f"/projects/{project}/proxy"), 403)
    assert admin.delete(f"/projects/{project}/proxy").status_code == 204
    assert_problem(admin.get(f"/projects/{project}/proxy"), 404)


def test_docker_hub_names_map_to_library(
    upstream: Distribution, admin: httpx.Client, puller: httpx.Client
) -> None:
    project = make_proxy(admin, upstream, flavor="docker-hub")
    image = upstream_image(upstream, "library/busy", "1")
    assert pull_image(puller, f"{project}/busy", "1")[0] == image.digest
    assert upstream.requests("GET", "/v2/library/busy/manifests/1") == 1


@pytest.mark.tools("skopeo")
def test_skopeo_copies_through_the_proxy(
    tmp_path: Path, upstream: Distribution, admin: httpx.Client, server: RegistryProcess
) -> None:
    project = make_proxy(admin, upstream)
    image = upstream_image(upstream, "lib/tool", "v1")
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "TMPDIR": str(tmp_path),
        "REGISTRY_AUTH_FILE": str(tmp_path / "auth.json"),
    }
    (tmp_path / "auth.json").write_text("{}")
    target = tmp_path / "copy"
    result = subprocess.run(
        [
            "skopeo",
            "--policy",
            str(policy),
            "copy",
            "--src-tls-verify=false",
            "--src-creds",
            f"{ADMIN_USER}:{ADMIN_PASSWORD}",
            f"docker://{server.host}/{project}/lib/tool:v1",
            f"dir:{target}",
        ],
        env=env,
        capture_output=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert digest_of((target / "manifest.json").read_bytes()) == image.digest
    for digest in blob_digests(image):
        assert digest_of((target / digest.split(":")[1]).read_bytes()) == digest


def test_another_moorage_is_an_upstream_through_its_token_service(
    start_registry: Callable[..., RegistryProcess],
    admin: httpx.Client,
    puller: httpx.Client,
) -> None:
    """Moorage answers 401 with a Bearer challenge: the proxy signs in at the realm."""
    # The poll below signs in with the old, wrong password until a worker sees the new one:
    # those failures must not lock the account out.
    lenient = {"MOORAGE_LOGIN_FAILURES_PER_USER": "1000"}
    origin = start_registry(env={**lenient, "MOORAGE_LOGIN_FAILURES_PER_ADDRESS": "1000"})
    with httpx.Client(base_url=origin.url, timeout=60, auth=RegistryAuth()) as client:
        image = push_image(client, "team/app", "v1")
    project = create_project(admin, "chain")
    config = {"url": origin.url, "allowPrivateNetwork": True, "username": ADMIN_USER}
    wrong = admin.put(f"/projects/{project}/proxy", json={**config, "password": "wrong-pw-1"})
    assert wrong.status_code == 200, wrong.text
    response = puller.get(f"/v2/{project}/team/app/manifests/v1", headers=ACCEPT)
    error = assert_oci_error(response, 502, "DENIED")
    assert "credentials" in error["message"]
    right = admin.put(f"/projects/{project}/proxy", json={**config, "password": ADMIN_PASSWORD})
    assert right.status_code == 200, right.text
    assert admin.post(f"/projects/{project}/proxy/check").json()["ok"] is True
    # Every worker sees a changed configuration within 2 seconds; until then: 502.
    wait_until(
        lambda: (
            puller.get(f"/v2/{project}/team/app/manifests/v1", headers=ACCEPT).status_code == 200
        ),
        30,
        "the workers to use the new credentials",
        interval=0.5,
    )
    assert pull_image(puller, f"{project}/team/app", "v1")[0] == image.digest


class _FakeUpstream:
    """A small registry in a thread: one image `fake:v1`, whose layer it can lie about, and
    whose manifest endpoints can answer 429 or stall (`mode`)."""

    def __init__(self) -> None:
        self.good = b'{"architecture":"amd64","os":"linux"}'
        self.claimed = random_bytes(4096)
        self.sent = random_bytes(4096)  # same length, other content
        self.lie = True
        self.mode = "ok"  # ok | 429 | slow
        self.blob_requests = 0
        self.manifest_requests = 0
        config = Pushed("application/vnd.oci.image.config.v1+json", digest_of(self.good), self.good)
        layer = Pushed(
            "application/vnd.oci.image.layer.v1.tar", digest_of(self.claimed), self.claimed
        )
        self.manifest = encode(image_manifest(config, [layer]))
        self.port = free_port()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._release: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def _main(self) -> None:
        async def ping(_: web.Request) -> web.Response:
            return web.json_response({})

        async def manifest(request: web.Request) -> web.StreamResponse:
            self.manifest_requests += 1
            if self.mode == "429":
                return web.json_response({"errors": [{"code": "TOOMANYREQUESTS"}]}, status=429)
            if self.mode == "slow":
                assert self._release is not None
                await self._release.wait()  # stalled until the test is over
            headers = {"Docker-Content-Digest": digest_of(self.manifest)}
            body = b"" if request.method == "HEAD" else self.manifest
            return web.Response(body=body, content_type=OCI_MANIFEST, headers=headers)

        async def blob(request: web.Request) -> web.Response:
            self.blob_requests += 1
            digest = request.match_info["digest"]
            if digest == digest_of(self.good):
                body = self.good
            else:
                body = self.sent if self.lie else self.claimed
            return web.Response(body=body, content_type="application/octet-stream")

        app = web.Application()
        app.router.add_get("/v2/", ping)
        app.router.add_route("*", "/v2/fake/manifests/{reference}", manifest)
        app.router.add_get("/v2/fake/blobs/{digest}", blob)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        self._stop = asyncio.Event()
        self._release = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def __enter__(self) -> _FakeUpstream:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *_: object) -> None:
        assert self._stop is not None
        assert self._loop is not None
        assert self._release is not None
        self._loop.call_soon_threadsafe(self._release.set)
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def fake_proxy(admin: httpx.Client, fake: _FakeUpstream, **fields: Any) -> str:
    project = create_project(admin, "fake")
    body = {"url": fake.url, "allowPrivateNetwork": True, **fields}
    response = admin.put(f"/projects/{project}/proxy", json=body)
    assert response.status_code == 200, response.text
    return project


def test_an_upstream_blob_that_does_not_match_its_digest_is_discarded(
    admin: httpx.Client, puller: httpx.Client
) -> None:
    with _FakeUpstream() as liar:
        project = fake_proxy(admin, liar)
        manifest = puller.get(f"/v2/{project}/fake/manifests/v1", headers=ACCEPT)
        assert manifest.status_code == 200, manifest.text
        bad = digest_of(liar.claimed)
        for attempt in (1, 2):
            # The body is cut short: the client never sees a complete blob.
            with pytest.raises(httpx.HTTPError):
                puller.get(f"/v2/{project}/fake/blobs/{bad}")
            # Nothing was stored: the next pull goes upstream again.
            assert liar.blob_requests == attempt
        # A HEAD only asks the upstream, which states a size without the bytes.
        head = puller.head(f"/v2/{project}/fake/blobs/{bad}")
        assert head.status_code == 200
        assert int(head.headers["Content-Length"]) == len(liar.claimed)
        config = puller.get(f"/v2/{project}/fake/blobs/{digest_of(liar.good)}")
        assert config.content == liar.good
        liar.lie = False
        assert puller.get(f"/v2/{project}/fake/blobs/{bad}").content == liar.claimed
        # A manifest asked for by digest must have that digest.
        other = digest_of(b"another manifest")
        response = puller.get(f"/v2/{project}/fake/manifests/{other}", headers=ACCEPT)
        assert_oci_error(response, 502, "DIGEST_INVALID")
        assert_oci_error(
            puller.get(f"/v2/{project}/fake/manifests/{other}", headers=ACCEPT),
            502,
            "DIGEST_INVALID",
        )


@pytest.mark.parametrize("mode", ["429", "slow"])
def test_a_rate_limited_or_slow_upstream_serves_the_cached_tag(
    mode: str, admin: httpx.Client, puller: httpx.Client
) -> None:
    with _FakeUpstream() as fake:
        fake.lie = False
        project = fake_proxy(admin, fake, tagTtlSeconds=0, timeoutSeconds=1)
        expected = pull_image(puller, f"{project}/fake", "v1")
        fake.mode = mode
        # A slow upstream stalls until the test ends: the cached tag is served after the
        # project's 1 s timeout, not after the upstream answers.
        assert pull_image(puller, f"{project}/fake", "v1") == expected
        assert fake.manifest_requests == 2  # the GET, then the HEAD that failed
        response = puller.get(f"/v2/{project}/fake/manifests/v2", headers=ACCEPT)
        expected_status = 429 if mode == "429" else 502
        assert response.status_code == expected_status, response.text


def test_an_upstream_behind_mutual_tls(
    tmp_path: Path, admin: httpx.Client, puller: httpx.Client
) -> None:
    ca = CertificateAuthority(tmp_path)
    served = ca.issue("upstream", common_name="127.0.0.1", server=True)
    mirror = ca.issue("mirror", common_name="moorage-mirror")
    upstream = Distribution(
        tmp_path / "tls",
        tls=(served.cert, served.key, ca.bundle),
        client_tls=(ca.bundle, mirror.cert, mirror.key),
    ).start()
    try:
        image = upstream_image(upstream, "lib/tls", "v1")
        base = {"url": upstream.url, "allowPrivateNetwork": True}
        untrusted = make_proxy(admin, upstream)
        error = assert_oci_error(
            puller.get(f"/v2/{untrusted}/lib/tls/manifests/v1", headers=ACCEPT),
            502,
            "MANIFEST_UNKNOWN",
        )
        assert "upstream is unavailable" in error["message"]
        no_client_cert = create_project(admin, "tls")
        response = admin.put(
            f"/projects/{no_client_cert}/proxy",
            json={**base, "caBundle": ca.bundle.read_text()},
        )
        assert response.status_code == 200, response.text
        assert_oci_error(
            puller.get(f"/v2/{no_client_cert}/lib/tls/manifests/v1", headers=ACCEPT),
            502,
            "MANIFEST_UNKNOWN",
        )
        project = make_proxy(
            admin,
            upstream,
            caBundle=ca.bundle.read_text(),
            clientCert=mirror.cert.read_text(),
            clientKey=mirror.key.read_text(),
        )
        shown = admin.get(f"/projects/{project}/proxy").json()
        assert shown["caBundle"] is True
        assert shown["clientCertificate"] is True
        assert "PRIVATE KEY" not in json.dumps(shown)
        assert pull_image(puller, f"{project}/lib/tls", "v1")[0] == image.digest
    finally:
        upstream.stop()


def test_robots_fetch_only_with_upstream_fetch_in_their_allow_list(
    upstream: Distribution, admin: httpx.Client, server: RegistryProcess
) -> None:
    project = make_proxy(admin, upstream)
    upstream_image(upstream, "lib/robot", "v1")
    robots = {}
    for name, actions in (("reader", ["pull"]), ("importer", ["pull", "upstream-fetch"])):
        response = admin.post(
            f"/projects/{project}/robots",
            json={"name": name, "permissions": [{"project": project, "actions": actions}]},
        )
        assert response.status_code == 201, response.text
        robots[name] = (response.json()["name"], response.json()["secret"])
    with httpx.Client(
        base_url=server.url, timeout=60, auth=RegistryAuth(*robots["reader"])
    ) as reader:
        response = reader.get(f"/v2/{project}/lib/robot/manifests/v1", headers=ACCEPT)
        assert_oci_error(response, 403, "DENIED")
        with httpx.Client(
            base_url=server.url, timeout=60, auth=RegistryAuth(*robots["importer"])
        ) as importer:
            expected = pull_image(importer, f"{project}/lib/robot", "v1")
        assert pull_image(reader, f"{project}/lib/robot", "v1") == expected


def test_head_asks_the_upstream_and_a_range_is_served_while_the_blob_is_stored(
    upstream: Distribution, admin: httpx.Client, puller: httpx.Client
) -> None:
    project = make_proxy(admin, upstream)
    image = upstream_image(upstream, "lib/partial", "v1")
    config, first, second = blob_digests(image)
    manifest = puller.get(f"/v2/{project}/lib/partial/manifests/v1", headers=ACCEPT)
    assert manifest.status_code == 200
    sizes = {layer["digest"]: layer["size"] for layer in manifest.json()["layers"]}
    head = puller.head(f"/v2/{project}/lib/partial/blobs/{first}")
    assert head.status_code == 200
    assert int(head.headers["Content-Length"]) == sizes[first]
    assert head.headers["Docker-Content-Digest"] == first
    # The HEAD went upstream as a HEAD: nothing was downloaded.
    assert upstream.requests("HEAD", f"/v2/lib/partial/blobs/{first}") == 1
    assert upstream.requests("GET", f"/v2/lib/partial/blobs/{first}", status=None) == 0
    ranged = puller.get(
        f"/v2/{project}/lib/partial/blobs/{second}", headers={"Range": "bytes=10-19"}
    )
    assert ranged.status_code == 206
    assert ranged.headers["Content-Range"] == f"bytes 10-19/{sizes[second]}"
    assert len(ranged.content) == 10
    # The fetch the range started goes on until the blob is stored: later pulls are local.
    whole = eventually_stored(puller, f"{project}/lib/partial", second)
    assert whole[10:20] == ranged.content
    assert digest_of(whole) == second
    assert upstream.requests("GET", f"/v2/lib/partial/blobs/{second}") == 1
    # Once stored, a HEAD is answered locally.
    assert puller.head(f"/v2/{project}/lib/partial/blobs/{second}").status_code == 200
    assert upstream.requests("HEAD", f"/v2/lib/partial/blobs/{second}") == 0
    assert upstream.requests("GET", f"/v2/lib/partial/blobs/{config}") == 0


def eventually_stored(client: httpx.Client, repository: str, digest: str) -> bytes:
    """The blob once it is stored: a conditional request is answered from the stored copy
    only (it waits for a fetch in flight), so it shows when the background fetch is done."""
    response = client.get(f"/v2/{repository}/blobs/{digest}", headers={"If-None-Match": "x"})
    assert response.status_code == 200, response.text
    return response.content


def test_the_proxy_commands(tmp_path: Path, upstream: Distribution) -> None:
    data_dir = tmp_path / "data"
    runner = CliRunner()

    def moorage(*args: str, stdin: str | None = None, code: int = 0) -> str:
        result = runner.invoke(main, [*args, "--data-dir", str(data_dir)], input=stdin)
        assert result.exit_code == code, (result.output, result.exception)
        return result.output

    moorage("project", "create", "mirror")
    configured = moorage(
        "project",
        "proxy",
        "mirror",
        "--url",
        upstream.url,
        "--allow-private-network",
        "--username",
        UPSTREAM_USER,
        "--password-stdin",
        "--platform",
        "linux/amd64",
        stdin=UPSTREAM_PASSWORD + "\n",
    )
    assert f"proxy cache of {upstream.url}" in configured
    shown = moorage("project", "proxy-show", "mirror")
    assert "credential\tpassword" in shown
    assert "platforms\tlinux/amd64" in shown
    assert UPSTREAM_PASSWORD not in shown
    refused = moorage("project", "proxy", "mirror", "--url", "http://10.0.0.1", code=1)
    assert "10.0.0.1 is a private-network address; set allowPrivateNetwork" in refused
    audit = moorage("audit", "export", "--format", "jsonl")
    assert "proxy:configure" in audit
    assert UPSTREAM_PASSWORD not in audit
    moorage("project", "proxy-remove", "mirror")
    assert "not a proxy-cache project" in moorage("project", "proxy-show", "mirror", code=1)


def test_a_digest_alone_never_reaches_blobs_of_other_projects(
    upstream: Distribution, admin: httpx.Client, puller: httpx.Client
) -> None:
    """A blob stored for a private project is not handed out through a proxy project: only
    what the proxy's upstream serves (and its cached manifests reference) is linked."""
    private = create_project(admin, "private")
    secret = push_blob_object(puller, f"{private}/app", "application/octet-stream", b"s" * 999)
    project = make_proxy(admin, upstream)
    response = puller.get(f"/v2/{project}/lib/probe/blobs/{secret.digest}")
    error = assert_oci_error(response, 404, "BLOB_UNKNOWN")
    assert "upstream does not have it" in error["message"]
    assert upstream.requests("GET", f"/v2/lib/probe/blobs/{secret.digest}", status=None) == 1


def test_layers_shared_by_repositories_of_one_proxy_project_are_fetched_once(
    upstream: Distribution, admin: httpx.Client, puller: httpx.Client
) -> None:
    project = make_proxy(admin, upstream)
    shared = random_bytes(2048)
    with upstream.client() as client:
        for name in ("lib/one", "lib/two"):
            layer = push_blob_object(client, name, "application/vnd.oci.image.layer.v1.tar", shared)
            config = push_blob_object(
                client, name, "application/vnd.oci.image.config.v1+json", encode({"n": name})
            )
            push_manifest(client, name, encode(image_manifest(config, [layer])), OCI_MANIFEST, "v1")
    pull_image(puller, f"{project}/lib/one", "v1")
    pull_image(puller, f"{project}/lib/two", "v1")
    assert upstream.requests("GET", f"/v2/lib/one/blobs/{layer.digest}") == 1
    assert upstream.requests("GET", f"/v2/lib/two/blobs/{layer.digest}") == 0
    # Another proxy project of the same upstream fetches it itself.
    other = make_proxy(admin, upstream)
    pull_image(puller, f"{other}/lib/two", "v1")
    assert upstream.requests("GET", f"/v2/lib/two/blobs/{layer.digest}") == 1
