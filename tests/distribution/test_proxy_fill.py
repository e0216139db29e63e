"""Proxy caches finishing the job, against real processes: Moorage, Debian's docker-registry as
the upstream (its access log counts what went upstream), and a small lying upstream in a thread
for what a real registry never does.

- `HEAD` of an uncached blob is a `HEAD` upstream, never a download; a `Range` of an uncached
  blob is served as its bytes arrive while the whole blob is stored (only once it verifies).
- A cached image is scanned once all its layers are cached; a requested scan fetches the
  missing layers through the proxy, once however many ask.
- `PATCH` of the proxy configuration: JSON merge patch, validated and audited as a `PUT`.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from aiohttp import web

from tests.support.api import (
    PASSWORD,
    api_client,
    assert_problem,
    create_project,
    create_user,
    eventually,
    set_role,
)
from tests.support.auth import RegistryAuth
from tests.support.distribution import Distribution
from tests.support.images import Image
from tests.support.oci import (
    OCI_INDEX,
    OCI_MANIFEST,
    Pushed,
    assert_oci_error,
    digest_of,
    encode,
    image_manifest,
    push_blob_object,
    push_image,
    push_manifest,
    random_bytes,
)
from tests.support.scan_images import debian
from tests.support.server import RegistryProcess, free_port

pytestmark = pytest.mark.tools("docker-registry")

ACCEPT = {"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"}
NO_DATABASE = "no vulnerability database imported"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    with RegistryProcess(tmp_path_factory.mktemp("fill") / "data", workers=2).start() as process:
        yield process


def proxy_project(admin: httpx.Client, url: str, **fields: Any) -> str:
    project = create_project(admin, "fill")
    response = admin.put(
        f"/projects/{project}/proxy", json={"url": url, "allowPrivateNetwork": True, **fields}
    )
    assert response.status_code == 200, response.text
    return project


def scan_on_push(admin: httpx.Client, project: str) -> None:
    response = admin.put(f"/projects/{project}/scan-settings", json={"scanOnPush": True})
    assert response.status_code == 200, response.text


def upstream_debian(upstream: Distribution, repository: str) -> Image:
    image = debian()
    with upstream.client() as client:
        # Distribution has no single-POST upload: blobs go up in a session each.
        for blob in image.blobs:
            push_blob_object(client, repository, blob.media_type, blob.data)
        push_manifest(client, repository, image.manifest.data, image.manifest.media_type, "v1")
    return image


def wait_report(admin: httpx.Client, repository: str, digest: str) -> dict[str, Any]:
    """The report once the scan has finished (scans run in the background)."""
    found: dict[str, Any] = {}

    def finished() -> bool:
        response = admin.get(f"/repositories/{repository}/manifests/{digest}/scan")
        if response.status_code != 200:
            return False
        found.update(response.json())
        return found["status"] in ("Success", "Error")

    eventually(finished, timeout=120, what=f"the scan of {repository}@{digest}")
    return found


# -- scanning cached images


def test_a_cached_image_is_scanned_once_all_its_layers_are_cached(
    upstream: Distribution, admin: httpx.Client, puller: httpx.Client
) -> None:
    project = proxy_project(admin, upstream.url)
    scan_on_push(admin, project)
    image = upstream_debian(upstream, "lib/scanned")
    repository = f"{project}/lib/scanned"
    manifest = puller.get(f"/v2/{repository}/manifests/v1", headers=ACCEPT)
    assert manifest.status_code == 200, manifest.text
    digest = image.manifest.digest
    # Only the manifest is cached: nothing to scan yet (its layers are not there).
    assert admin.get(f"/repositories/{repository}/manifests/{digest}/scan").status_code == 404
    for blob in image.blobs:
        assert puller.get(f"/v2/{repository}/blobs/{blob.digest}").status_code == 200
    report = wait_report(admin, repository, digest)
    # Catalogued from every layer; only the database is missing on this server.
    assert report["status"] == "Error"
    assert NO_DATABASE in report["error"], report
    for blob in image.blobs:
        assert upstream.requests("GET", f"/v2/lib/scanned/blobs/{blob.digest}") == 1


def test_a_requested_scan_fetches_the_missing_layers_once(
    upstream: Distribution, admin: httpx.Client, puller: httpx.Client, server: RegistryProcess
) -> None:
    project = proxy_project(admin, upstream.url)
    image = upstream_debian(upstream, "lib/requested")
    repository = f"{project}/lib/requested"
    assert puller.get(f"/v2/{repository}/manifests/v1", headers=ACCEPT).status_code == 200
    # One layer pulled by a client, the rest fetched by the scan request.
    first = image.layers[0].digest
    assert puller.get(f"/v2/{repository}/blobs/{first}").status_code == 200
    path = f"/repositories/{repository}/manifests/{image.manifest.digest}/scan"

    def request(_: int) -> int:
        with api_client(server) as client:
            return client.post(path).status_code

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(request, range(4))) == [202] * 4
    report = wait_report(admin, repository, image.manifest.digest)
    assert NO_DATABASE in report["error"], report
    for blob in image.blobs:
        assert upstream.requests("GET", f"/v2/lib/requested/blobs/{blob.digest}") == 1
        # Cached now: pulls are local.
        assert puller.get(f"/v2/{repository}/blobs/{blob.digest}").status_code == 200
        assert upstream.requests("GET", f"/v2/lib/requested/blobs/{blob.digest}") == 1


def test_a_requested_scan_fetches_only_for_callers_with_upstream_fetch(
    upstream: Distribution, admin: httpx.Client, puller: httpx.Client, server: RegistryProcess
) -> None:
    project = proxy_project(admin, upstream.url)
    image = upstream_debian(upstream, "lib/gated")
    repository = f"{project}/lib/gated"
    assert puller.get(f"/v2/{repository}/manifests/v1", headers=ACCEPT).status_code == 200
    user = create_user(admin, "scanner")
    set_role(admin, project, user, "developer")
    with api_client(server, user, PASSWORD) as developer:
        response = developer.post(
            f"/repositories/{repository}/manifests/{image.manifest.digest}/scan"
        )
    # Developers may request scans, but not bring content in from the upstream.
    assert response.status_code == 403, response.text
    assert "upstream-fetch" in response.text
    for blob in image.blobs:
        assert upstream.requests("GET", f"/v2/lib/gated/blobs/{blob.digest}", status=None) == 0


# -- HEAD and Range of uncached blobs


class _LyingUpstream:
    """A registry in a thread with one blob whose HEAD and GET it can falsify.

    `head`: ok | wrong-digest | huge (a size past any limit) | short (a smaller size)
    `get`: ok | die (half the body, then the connection is cut)
    """

    def __init__(self) -> None:
        # Several of the proxy's read chunks, so a range early in the blob passes before the
        # connection breaks at half.
        self.data = random_bytes(2 * 1024 * 1024)
        self.digest = digest_of(self.data)
        self.config = b'{"architecture":"amd64","os":"linux","rootfs":{"diff_ids":[]}}'
        config = Pushed(
            "application/vnd.oci.image.config.v1+json", digest_of(self.config), self.config
        )
        layer = Pushed("application/vnd.oci.image.layer.v1.tar", self.digest, self.data)
        self.manifest = encode(image_manifest(config, [layer]))
        self.head = "ok"
        self.get = "ok"
        self.heads = 0
        self.gets = 0
        self.port = free_port()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        async def ping(_: web.Request) -> web.Response:
            return web.json_response({})

        async def manifest(request: web.Request) -> web.Response:
            body = b"" if request.method == "HEAD" else self.manifest
            return web.Response(
                body=body,
                content_type=OCI_MANIFEST,
                headers={"Docker-Content-Digest": digest_of(self.manifest)},
            )

        async def blob(request: web.Request) -> web.StreamResponse:
            digest = request.match_info["digest"]
            body = self.config if digest == digest_of(self.config) else self.data
            if request.method == "HEAD":
                self.heads += 1
                size, announced = len(body), digest
                if self.head == "wrong-digest":
                    announced = digest_of(b"something else")
                elif self.head == "huge":
                    size = 1 << 50
                elif self.head == "short":
                    size = len(body) // 2
                response = web.StreamResponse(
                    headers={"Docker-Content-Digest": announced, "Content-Length": str(size)}
                )
                await response.prepare(request)
                return response
            self.gets += 1
            response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
            response.content_length = len(body)
            await response.prepare(request)
            if self.get == "die":
                await response.write(body[: len(body) // 2])
                assert request.transport is not None
                request.transport.abort()
                return response
            await response.write(body)
            await response.write_eof()
            return response

        app = web.Application()
        app.router.add_get("/v2/", ping)
        app.router.add_route("*", "/v2/liar/manifests/{reference}", manifest)
        app.router.add_route("*", "/v2/liar/blobs/{digest}", blob)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        self._stop = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def __enter__(self) -> _LyingUpstream:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *_: object) -> None:
        assert self._stop is not None
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def stored_copy(client: httpx.Client, repository: str, digest: str) -> httpx.Response:
    """The blob as stored: a conditional request is answered from the stored copy only (it
    waits for a fetch in flight and otherwise fetches the whole blob first)."""
    return client.get(f"/v2/{repository}/blobs/{digest}", headers={"If-None-Match": '"x"'})


def test_head_of_an_uncached_blob_trusts_nothing_the_upstream_cannot_prove(
    admin: httpx.Client, puller: httpx.Client
) -> None:
    with _LyingUpstream() as liar:
        project = proxy_project(admin, liar.url)
        repository = f"{project}/liar"
        assert puller.get(f"/v2/{repository}/manifests/v1", headers=ACCEPT).status_code == 200
        path = f"/v2/{repository}/blobs/{liar.digest}"
        liar.head = "wrong-digest"
        assert puller.head(path).status_code == 502
        liar.head = "huge"
        assert puller.head(path).status_code == 502
        # A size it states is passed on, but never stored: the blob is what a GET verifies.
        liar.head = "short"
        head = puller.head(path)
        assert head.status_code == 200
        assert int(head.headers["Content-Length"]) == len(liar.data) // 2
        assert liar.heads == 3
        assert liar.gets == 0
        whole = puller.get(path)
        assert whole.status_code == 200
        assert whole.content == liar.data
        assert int(puller.head(path).headers["Content-Length"]) == len(liar.data)
        assert liar.heads == 3  # answered from the cache now
        assert liar.gets == 1


def test_ranges_of_uncached_blobs(admin: httpx.Client, puller: httpx.Client) -> None:
    with _LyingUpstream() as liar:
        size = len(liar.data)
        # Beyond the end: 416 naming the size; the fetch it opened is dropped, nothing stored.
        project = proxy_project(admin, liar.url)
        repository = f"{project}/liar"
        assert puller.get(f"/v2/{repository}/manifests/v1", headers=ACCEPT).status_code == 200
        path = f"/v2/{repository}/blobs/{liar.digest}"
        beyond = puller.get(path, headers={"Range": f"bytes={size + 10}-"})
        assert beyond.status_code == 416
        assert beyond.headers["Content-Range"] == f"bytes */{size}"
        # Several ranges: the whole blob (as for a stored blob), verified.
        several = puller.get(path, headers={"Range": "bytes=0-9,20-29"})
        assert several.status_code == 200
        assert several.content == liar.data
        assert liar.gets == 2

        # A suffix range holds its last bytes until the blob is verified and stored.
        project = proxy_project(admin, liar.url)
        repository = f"{project}/liar"
        assert puller.get(f"/v2/{repository}/manifests/v1", headers=ACCEPT).status_code == 200
        path = f"/v2/{repository}/blobs/{liar.digest}"
        tail = puller.get(path, headers={"Range": "bytes=-100"})
        assert tail.status_code == 206
        assert tail.headers["Content-Range"] == f"bytes {size - 100}-{size - 1}/{size}"
        assert tail.content == liar.data[-100:]
        assert stored_copy(puller, repository, liar.digest).content == liar.data
        assert liar.gets == 3


def test_an_upstream_dying_during_a_range_leaves_nothing_cached(
    admin: httpx.Client, puller: httpx.Client
) -> None:
    with _LyingUpstream() as liar:
        project = proxy_project(admin, liar.url)
        repository = f"{project}/liar"
        assert puller.get(f"/v2/{repository}/manifests/v1", headers=ACCEPT).status_code == 200
        path = f"/v2/{repository}/blobs/{liar.digest}"
        liar.get = "die"
        # Within the half that arrives: served correctly; the rest of the fetch then fails.
        early = puller.get(path, headers={"Range": "bytes=100-199"})
        assert early.status_code == 206
        assert early.content == liar.data[100:200]
        # Past the half: the client's response is cut, never completed with wrong bytes.
        with pytest.raises(httpx.HTTPError):
            puller.get(path, headers={"Range": f"bytes={len(liar.data) - 10}-"})
        liar.get = "ok"
        # Nothing was stored: the stored copy is fetched afresh, whole and correct.
        before = liar.gets
        assert stored_copy(puller, repository, liar.digest).content == liar.data
        assert liar.gets == before + 1


def test_head_and_range_of_uncached_blobs_against_distribution(
    upstream: Distribution, admin: httpx.Client, puller: httpx.Client
) -> None:
    project = proxy_project(admin, upstream.url)
    data = random_bytes(3 * 1024 * 1024 + 17)
    layer_type = "application/vnd.oci.image.layer.v1.tar"
    with upstream.client() as client:
        layer = push_blob_object(client, "lib/ranged", layer_type, data)
        config = push_blob_object(
            client, "lib/ranged", "application/vnd.oci.image.config.v1+json", encode({"r": 1})
        )
        push_manifest(
            client, "lib/ranged", encode(image_manifest(config, [layer])), OCI_MANIFEST, "v1"
        )
    repository = f"{project}/lib/ranged"
    assert puller.get(f"/v2/{repository}/manifests/v1", headers=ACCEPT).status_code == 200
    path = f"/v2/{repository}/blobs/{layer.digest}"
    head = puller.head(path)
    assert head.status_code == 200
    assert int(head.headers["Content-Length"]) == len(data)
    assert upstream.requests("HEAD", f"/v2/lib/ranged/blobs/{layer.digest}") == 1
    assert upstream.requests("GET", f"/v2/lib/ranged/blobs/{layer.digest}", status=None) == 0
    start = 1024 * 1024
    ranged = puller.get(path, headers={"Range": f"bytes={start}-{start + 4095}"})
    assert ranged.status_code == 206
    assert ranged.content == data[start : start + 4096]
    assert stored_copy(puller, repository, layer.digest).content == data
    assert upstream.requests("GET", f"/v2/lib/ranged/blobs/{layer.digest}") == 1


# -- PATCH of the proxy configuration


def test_patch_changes_only_the_fields_sent(
    upstream: Distribution, admin: httpx.Client, server: RegistryProcess
) -> None:
    project = proxy_project(
        admin,
        upstream.url,
        username="mirror",
        password="upstream-pw-1",
        tagTtlSeconds=60,
        platforms=["linux/amd64"],
    )
    response = admin.patch(f"/projects/{project}/proxy", json={"tagTtlSeconds": 5})
    assert response.status_code == 200, response.text
    shown = response.json()
    assert shown["tagTtlSeconds"] == 5
    assert shown["platforms"] == ["linux/amd64"]
    assert shown["username"] == "mirror"
    assert shown["credential"] == "password"  # kept without sending it again
    assert shown["url"] == upstream.url
    # null removes a value: its default applies.
    response = admin.patch(
        f"/projects/{project}/proxy",
        json={"platforms": None, "tagTtlSeconds": None},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["platforms"] == []
    assert response.json()["tagTtlSeconds"] == 600
    assert response.json()["credential"] == "password"
    response = admin.patch(f"/projects/{project}/proxy", json={"password": None})
    assert response.json()["credential"] == "none"
    assert response.json()["username"] == "mirror"
    audit: list[dict[str, Any]] = []

    def audited() -> bool:
        audit[:] = admin.get(
            "/audit-logs", params={"action": "proxy:configure", "limit": 100}
        ).json()
        return sum(1 for entry in audit if entry.get("project") == project) >= 4

    eventually(audited, what="every change audited")
    assert "upstream-pw-1" not in json.dumps(audit)


def test_patch_refuses_what_put_refuses(
    upstream: Distribution, admin: httpx.Client, server: RegistryProcess
) -> None:
    project = proxy_project(admin, upstream.url)
    before = admin.get(f"/projects/{project}/proxy").json()
    for bad in (
        {"unknownField": 1},
        {"tagTtlSeconds": "60"},
        {"tagTtlSeconds": -1},
        {"platforms": "linux/amd64"},
        {"url": None},
        {"url": "ftp://example.org"},
        # Credentials in the URL, metadata and link-local addresses, odd spellings of loopback
        {"url": "http://user:secret@example.org"},
        {"url": "http://169.254.169.254/"},
        {"url": "http://[fe80::1]/"},
        {"url": "http://2130706433/"},
        {"url": "http://0x7f.1/"},
        # Without allowPrivateNetwork the loopback upstream is refused.
        {"allowPrivateNetwork": False},
        {"password": "needs-a-username"},
        {"username": "u", "password": "p", "token": "t"},
        {"clientCert": "not pem"},
        {"caBundle": 5},
    ):
        response = admin.patch(f"/projects/{project}/proxy", json=bad)
        assert response.status_code in (400, 422), (bad, response.text)
        assert response.headers["Content-Type"].startswith("application/problem+json")
    after = admin.get(f"/projects/{project}/proxy").json()
    assert after == before
    # Only system administrators patch; a project admin reads.
    user = create_user(admin, "patcher")
    set_role(admin, project, user, "project-admin")
    with api_client(server, user, PASSWORD) as owner:
        assert owner.get(f"/projects/{project}/proxy").status_code == 200
        assert_problem(owner.patch(f"/projects/{project}/proxy", json={"tagTtlSeconds": 1}), 403)
    plain = create_project(admin, "plain")
    assert_problem(admin.patch(f"/projects/{plain}/proxy", json={"tagTtlSeconds": 1}), 404)


def test_a_patched_upstream_is_used_for_the_next_pulls(
    tmp_path_factory: pytest.TempPathFactory, admin: httpx.Client, puller: httpx.Client
) -> None:
    first = Distribution(tmp_path_factory.mktemp("patch-a")).start()
    second = Distribution(tmp_path_factory.mktemp("patch-b")).start()
    try:
        project = proxy_project(admin, first.url)
        with second.client() as client:
            image = push_image(client, "lib/moved", "v1")
        response = admin.patch(f"/projects/{project}/proxy", json={"url": second.url})
        assert response.status_code == 200, response.text

        def served() -> bool:
            found = puller.get(f"/v2/{project}/lib/moved/manifests/v1", headers=ACCEPT)
            return found.status_code == 200

        eventually(served, what="the new upstream in effect")
        found = puller.get(f"/v2/{project}/lib/moved/manifests/v1", headers=ACCEPT)
        assert found.headers["Docker-Content-Digest"] == image.digest
    finally:
        first.stop()
        second.stop()


# -- a HEAD needs what a fetch needs


def test_head_of_an_uncached_blob_needs_upstream_fetch(
    upstream: Distribution, admin: httpx.Client, server: RegistryProcess, puller: httpx.Client
) -> None:
    project = proxy_project(admin, upstream.url)
    with upstream.client() as client:
        image = push_image(client, "lib/headgate", "v1")
    assert puller.get(f"/v2/{project}/lib/headgate/manifests/v1", headers=ACCEPT).status_code == 200
    layer = json.loads(image.body)["layers"][0]["digest"]
    developer = create_user(admin, "headdev")
    set_role(admin, project, developer, "developer")
    with httpx.Client(
        base_url=server.url, timeout=60, auth=RegistryAuth(developer, PASSWORD)
    ) as dev:
        assert_oci_error(dev.get(f"/v2/{project}/lib/headgate/blobs/{layer}"), 403, "DENIED")
        assert dev.head(f"/v2/{project}/lib/headgate/blobs/{layer}").status_code == 403
    assert upstream.requests("HEAD", f"/v2/lib/headgate/blobs/{layer}", status=None) == 0
