"""The outbound guard through the API of a real server: proxy upstreams, replication endpoints
and scanner adapters refuse every non-canonical or never-allowed address when they are
configured, and a loopback endpoint that redirects to another loopback port, or a name that
resolves to loopback, is refused when contacted, with the guard's reason in the check, the
pull, the replication run and the ping. Only loopback is ever contacted: addresses outside it
are only ever configured (and refused), never reached.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from aiohttp import web

from tests.access.test_outbound import EMBEDDED, NEVER, NON_CANONICAL_IPV4
from tests.support.api import api_client, assert_problem, create_project, eventually, unique
from tests.support.auth import RegistryAuth
from tests.support.server import RegistryProcess

GUARD = "refused by the outbound guard"
SETTING_HINT = "set allowPrivateNetwork (CLI --allow-private-network) to allow private networks"

URL_TRICKS = [
    "http://registry.example@127.0.0.1:5000",
    "http://[fe80::1%25eth0]:5000",
    "http://%31%32%37.0.0.1:5000",
    "http://\uff11\uff12\uff17.\uff10.\uff10.\uff11:5000",
    "http://127.0.0.1\\@registry.example",
    "http://[127.0.0.1]:5000",
    "http://localhost.:5000",
]


class LoopbackPair:
    """A target that records every request, and a redirector that answers every request with
    a redirect to `location` (formatted with the target's port). Both on 127.0.0.1, served by
    a thread of their own so the server under test can call them."""

    def __init__(self, location: str) -> None:
        self.location = location
        self.hits: list[str] = []
        self.redirected: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runners: list[web.AppRunner] = []
        self.target_port = 0
        self.redirector_port = 0

    @property
    def redirector(self) -> str:
        return f"http://127.0.0.1:{self.redirector_port}"

    def __enter__(self) -> LoopbackPair:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(10)
        return self

    def __exit__(self, *_exc: object) -> None:
        for runner in self._runners:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _site(self, app: web.Application) -> int:
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        self._runners.append(runner)
        return int(runner.addresses[0][1])

    async def _serve(self) -> None:
        async def record(request: web.Request) -> web.Response:
            self.hits.append(request.path_qs)
            return web.json_response({})

        async def redirect(request: web.Request) -> web.Response:
            self.redirected.append(request.path_qs)
            location = self.location.format(port=self.target_port) + request.path_qs
            return web.Response(status=307, headers={"Location": location})

        target = web.Application()
        target.router.add_route("*", "/{tail:.*}", record)
        redirector = web.Application()
        redirector.router.add_route("*", "/{tail:.*}", redirect)
        self.target_port = await self._site(target)
        self.redirector_port = await self._site(redirector)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    with RegistryProcess(tmp_path_factory.mktemp("outbound") / "data").start() as process:
        yield process


@pytest.fixture
def admin(server: RegistryProcess) -> Iterator[httpx.Client]:
    with api_client(server) as http:
        yield http


@pytest.fixture(scope="module")
def proxy_project(server: RegistryProcess) -> str:
    with api_client(server) as http:
        return create_project(http, "guard")


def configure_all(
    admin: httpx.Client, project: str, url: str, allow_private: bool
) -> list[httpx.Response]:
    """The same URL as a proxy upstream, a replication endpoint and a scanner adapter."""
    return [
        admin.put(
            f"/projects/{project}/proxy", json={"url": url, "allowPrivateNetwork": allow_private}
        ),
        admin.post(
            "/replication/registries",
            json={"name": unique("remote"), "url": url, "allowPrivateNetwork": allow_private},
        ),
        admin.post(
            "/scanners",
            json={"name": unique("scanner"), "url": url, "allowPrivateNetwork": allow_private},
        ),
    ]


def assert_refused(response: httpx.Response, *fragments: str) -> str:
    assert 400 <= response.status_code < 500, response.text
    detail = assert_problem(response, response.status_code)["detail"]
    for fragment in fragments:
        assert fragment in detail, detail
    assert "allow_private_network" not in detail
    return str(detail)


@pytest.mark.parametrize("host", NON_CANONICAL_IPV4)
@pytest.mark.parametrize("allow_private", [False, True])
def test_non_canonical_ipv4_spellings_are_refused_when_configured(
    admin: httpx.Client, proxy_project: str, host: str, allow_private: bool
) -> None:
    for response in configure_all(admin, proxy_project, f"http://{host}:5000", allow_private):
        assert_refused(response, GUARD)


@pytest.mark.parametrize("host", EMBEDDED + NEVER)
@pytest.mark.parametrize("allow_private", [False, True])
def test_embedded_link_local_and_metadata_addresses_are_refused_even_with_the_setting(
    admin: httpx.Client, proxy_project: str, host: str, allow_private: bool
) -> None:
    for response in configure_all(admin, proxy_project, f"http://{host}:5000", allow_private):
        assert_refused(response, GUARD, "never contacted, even with allowPrivateNetwork")


@pytest.mark.parametrize("url", URL_TRICKS)
def test_url_tricks_are_refused_when_configured(
    admin: httpx.Client, proxy_project: str, url: str
) -> None:
    for response in configure_all(admin, proxy_project, url, True):
        assert_refused(response)


@pytest.mark.parametrize("host", ["127.0.0.1", "10.0.0.1", "192.168.0.10", "[::1]", "[fd12::1]"])
def test_private_addresses_need_the_setting_and_the_refusal_names_it(
    admin: httpx.Client, proxy_project: str, host: str
) -> None:
    for response in configure_all(admin, proxy_project, f"http://{host}:5000", False):
        assert_refused(response, GUARD, SETTING_HINT)


def test_canonical_loopback_endpoints_are_accepted_with_the_setting(
    admin: httpx.Client, proxy_project: str
) -> None:
    responses = configure_all(admin, proxy_project, "http://[0:0::1]:5000/", True)
    assert [response.status_code for response in responses] == [200, 201, 201], [
        response.text for response in responses
    ]
    assert responses[0].json()["url"] == "http://[::1]:5000"  # stored in its one spelling
    assert responses[1].json()["url"] == "http://[::1]:5000"


REDIRECTS = [
    "http://127.0.0.1:{port}",  # another port of the same loopback host
    "http://0x7f.1:{port}",
    "http://localhost:{port}",
    "http://2130706433:{port}",
    "http://[::ffff:127.0.0.1]:{port}",
]


def _pull(server: RegistryProcess, repository: str) -> httpx.Response:
    with httpx.Client(base_url=server.url, timeout=60, auth=RegistryAuth()) as client:
        return client.get(f"/v2/{repository}/manifests/v1")


@pytest.mark.parametrize("location", REDIRECTS)
def test_a_proxy_upstream_redirecting_to_loopback_is_refused(
    server: RegistryProcess, admin: httpx.Client, location: str
) -> None:
    with LoopbackPair(location) as pair:
        project = create_project(admin, "redirected")
        body = {"url": pair.redirector, "allowPrivateNetwork": True}
        assert admin.put(f"/projects/{project}/proxy", json=body).status_code == 200
        check = admin.post(f"/projects/{project}/proxy/check")
        assert check.status_code == 200, check.text
        assert check.json()["ok"] is False
        assert GUARD in check.json()["message"]
        pulled = _pull(server, f"{project}/lib/app")
        assert pulled.status_code == 502, pulled.text
        assert GUARD in pulled.text
        assert pair.redirected  # the endpoint itself was reached...
        assert pair.hits == []  # ...and the redirect was not followed


def _executions(admin: httpx.Client, rule: int) -> list[dict[str, Any]]:
    response = admin.get(f"/replication/rules/{rule}/executions")
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()
    return found


def _run_pull_rule(admin: httpx.Client, endpoint: int) -> dict[str, Any]:
    rule = admin.post(
        "/replication/rules",
        json={
            "name": unique("rule"),
            "endpointId": endpoint,
            "direction": "pull",
            "repositories": ["lib/**"],
            "destinationPrefix": create_project(admin, "pulled"),
        },
    )
    assert rule.status_code == 201, rule.text
    started = admin.post(f"/replication/rules/{rule.json()['id']}/run")
    assert started.status_code == 202, started.text
    state: dict[str, Any] = {}

    def done() -> bool:
        state.update(admin.get(f"/replication/executions/{started.json()['id']}").json())
        return state["status"] in ("succeeded", "failed", "partial")

    eventually(done, timeout=60, what="the replication run to end")
    return state


@pytest.mark.parametrize("location", REDIRECTS)
def test_a_replication_endpoint_redirecting_to_loopback_is_refused(
    admin: httpx.Client, location: str
) -> None:
    with LoopbackPair(location) as pair:
        created = admin.post(
            "/replication/registries",
            json={"name": unique("remote"), "url": pair.redirector, "allowPrivateNetwork": True},
        )
        assert created.status_code == 201, created.text
        endpoint = int(created.json()["id"])
        check = admin.post(f"/replication/registries/{endpoint}/check")
        assert check.status_code == 200, check.text
        assert check.json()["ok"] is False
        assert GUARD in check.json()["message"]
        run = _run_pull_rule(admin, endpoint)
        assert run["status"] == "failed", run
        assert GUARD in (run["message"] or ""), run
        assert pair.redirected
        assert pair.hits == []


@pytest.mark.parametrize("location", REDIRECTS)
def test_a_scanner_adapter_redirecting_to_loopback_is_refused(
    admin: httpx.Client, location: str
) -> None:
    with LoopbackPair(location) as pair:
        name = unique("scanner")
        body = {"name": name, "url": pair.redirector, "allowPrivateNetwork": True}
        assert admin.post("/scanners", json=body).status_code == 201
        ping = admin.post(f"/scanners/{name}/ping")
        detail = assert_problem(ping, 424)["detail"]
        assert "redirects are not followed" in detail
        assert pair.redirected
        assert pair.hits == []


def test_a_name_resolving_to_loopback_is_refused_everywhere_without_the_setting(
    server: RegistryProcess, admin: httpx.Client
) -> None:
    with LoopbackPair("http://127.0.0.1:{port}") as pair:
        url = f"http://localhost:{pair.redirector_port}"
        expected = f"{GUARD}: localhost resolves to "
        reason = f"a loopback address; {SETTING_HINT}"
        # A literal loopback address is refused when it is configured...
        for response in configure_all(admin, create_project(admin, "p"), pair.redirector, False):
            assert_refused(response, GUARD, SETTING_HINT)
        # ...a name only when it is resolved, and the refusal says why.
        project = create_project(admin, "named")
        body = {"url": url, "allowPrivateNetwork": False}
        assert admin.put(f"/projects/{project}/proxy", json=body).status_code == 200
        message = admin.post(f"/projects/{project}/proxy/check").json()["message"]
        assert expected in message, message
        assert reason in message, message
        pulled = _pull(server, f"{project}/lib/app")
        assert pulled.status_code == 502
        assert expected in pulled.text, pulled.text
        assert reason in pulled.text, pulled.text
        assert "Cannot connect to host" not in pulled.text

        created = admin.post(
            "/replication/registries",
            json={"name": unique("remote"), "url": url, "allowPrivateNetwork": False},
        )
        assert created.status_code == 201, created.text
        endpoint = int(created.json()["id"])
        message = admin.post(f"/replication/registries/{endpoint}/check").json()["message"]
        assert expected in message, message
        assert reason in message, message
        run = _run_pull_rule(admin, endpoint)
        assert run["status"] == "failed"
        assert expected in run["message"], run
        assert reason in run["message"], run

        name = unique("scanner")
        body = {"name": name, "url": url, "allowPrivateNetwork": False}
        assert admin.post("/scanners", json=body).status_code == 201
        detail = assert_problem(admin.post(f"/scanners/{name}/ping"), 424)["detail"]
        assert expected in detail, detail
        assert reason in detail, detail

        assert pair.redirected == []
        assert pair.hits == []
