"""The outbound guard at connect time: redirects, names that resolve to loopback (DNS
rebinding), token realms a remote names, and literal addresses that skip the resolver.

Only loopback is ever contacted: every session here creates its sockets through a factory that
refuses (and records) any other address, so an address the guard lets through shows up in
`LoopbackOnly.refused` instead of on the network.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from moorage.domain.proxy import Flavor
from moorage.http.outbound import GuardedResolver, OutboundGuard, OutboundURLError, outbound_session
from moorage.http.upstream import HttpUpstreamClient
from moorage.services.distribution.proxy import UpstreamEndpoint, UpstreamError

GUARD = "refused by the outbound guard"


class LoopbackOnly:
    """A socket factory that opens sockets to loopback only and records every other attempt."""

    def __init__(self) -> None:
        self.refused: list[str] = []

    def __call__(self, info: tuple[int, int, int, str, tuple[object, ...]]) -> socket.socket:
        family, kind, proto, _, address = info
        if not ipaddress.ip_address(str(address[0])).is_loopback:
            self.refused.append(str(address[0]))
            raise OSError("the tests never leave loopback")
        return socket.socket(family, kind, proto)


class MapResolver(AbstractResolver):
    """Answers from a table: each name has a list of answers, one per lookup (the last one
    repeats), like a DNS server an attacker controls."""

    def __init__(self, answers: dict[str, list[list[str]]]) -> None:
        self._answers = answers
        self.lookups: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.lookups.append(host)
        sequence = self._answers[host]
        addresses = sequence.pop(0) if len(sequence) > 1 else sequence[0]
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in addresses
        ]

    async def close(self) -> None:
        pass


@dataclass
class Servers:
    """A target that records what reaches it, and a redirector in front of it."""

    target_port: int
    redirector_port: int
    hits: list[str] = field(default_factory=list)
    redirects: dict[str, tuple[int, str]] = field(default_factory=dict)

    @property
    def redirector(self) -> str:
        return f"http://127.0.0.1:{self.redirector_port}"


async def _site(app: web.Application, runners: list[web.AppRunner]) -> int:
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    runners.append(runner)
    return int(runner.addresses[0][1])


def run_with_servers(scenario: Callable[[Servers], Awaitable[None]]) -> None:
    async def main() -> None:
        runners: list[web.AppRunner] = []
        hits: list[str] = []
        redirects: dict[str, tuple[int, str]] = {}

        async def record(request: web.Request) -> web.Response:
            hits.append(request.path_qs)
            return web.Response(text="target")

        async def redirect(request: web.Request) -> web.Response:
            if request.path == "/ok":
                return web.Response(text="ok")
            status, location = redirects[request.path]
            return web.Response(status=status, headers={"Location": location})

        target = web.Application()
        target.router.add_route("*", "/{tail:.*}", record)
        redirector = web.Application()
        redirector.router.add_route("*", "/{tail:.*}", redirect)
        try:
            servers = Servers(await _site(target, runners), await _site(redirector, runners))
            servers.hits = hits
            servers.redirects = redirects
            await scenario(servers)
        finally:
            for runner in runners:
                await runner.cleanup()

    asyncio.run(main())


async def fetch(
    guard: OutboundGuard,
    url: str,
    sockets: LoopbackOnly,
    resolver: AbstractResolver | None = None,
) -> int:
    async with (
        outbound_session(guard, resolver=resolver, socket_factory=sockets) as session,
        session.get(url) as response,
    ):
        await response.read()
        return response.status


REDIRECT_TARGETS = [
    "http://127.0.0.1:{port}/hit",  # another port of the same host
    "http://localhost:{port}/hit",
    "http://LOCALHOST:{port}/hit",
    "http://0x7f.1:{port}/hit",
    "http://2130706433:{port}/hit",
    "http://0177.0.0.1:{port}/hit",
    "http://127.1:{port}/hit",
    "http://127.0.0.1.:{port}/hit",
    "http://[::1]:{port}/hit",
    "http://[::ffff:127.0.0.1]:{port}/hit",
    "http://[::ffff:7f00:1]:{port}/hit",
    "//127.0.0.1:{port}/hit",
    "http://user:pw@127.0.0.1:{port}/hit",
    "http://%31%32%37.0.0.1:{port}/hit",
    "http://169.254.169.254/latest/meta-data/",
    "http://169.254.169.254.:80/",
    "http://0xa9fea9fe/",
    "http://[fd00:ec2::254]/",
    "http://100.100.100.200/",
    "http://0.0.0.0:{port}/hit",
    "file:///etc/passwd",
]


@pytest.mark.parametrize("location", REDIRECT_TARGETS)
@pytest.mark.parametrize("status", [302, 307])
def test_a_redirect_to_loopback_or_metadata_is_refused_even_with_allow_private_network(
    location: str, status: int
) -> None:
    async def scenario(servers: Servers) -> None:
        servers.redirects["/start"] = (status, location.format(port=servers.target_port))
        sockets = LoopbackOnly()
        guard = OutboundGuard(servers.redirector, allow_private=True)
        with pytest.raises((OutboundURLError, aiohttp.NonHttpUrlRedirectClientError)):
            await fetch(guard, f"{servers.redirector}/start", sockets)
        assert servers.hits == []
        assert sockets.refused == []

    run_with_servers(scenario)


def test_a_redirect_refusal_says_why() -> None:
    async def scenario(servers: Servers) -> None:
        servers.redirects["/start"] = (307, f"http://localhost:{servers.target_port}/hit")
        guard = OutboundGuard(servers.redirector, allow_private=True)
        with pytest.raises(OutboundURLError) as caught:
            await fetch(guard, f"{servers.redirector}/start", LoopbackOnly(), None)
        message = str(caught.value)
        assert message.startswith(f"{GUARD}: localhost resolves to ")
        assert "a loopback address" in message
        assert "not a redirect target" in message

    run_with_servers(scenario)


def test_redirects_within_the_endpoint_and_to_allowed_private_hosts_are_followed() -> None:
    async def scenario(servers: Servers) -> None:
        servers.redirects["/same"] = (307, "/ok")
        servers.redirects["/absolute"] = (302, f"{servers.redirector}/ok")
        servers.redirects["/private"] = (307, f"http://10.0.0.1:{servers.target_port}/")
        sockets = LoopbackOnly()
        guard = OutboundGuard(servers.redirector, allow_private=True)
        assert await fetch(guard, f"{servers.redirector}/same", sockets) == 200
        assert await fetch(guard, f"{servers.redirector}/absolute", sockets) == 200
        # A private host other than the endpoint is allowed with the setting: the guard lets
        # the connection start, and only the test's socket factory stops it.
        with pytest.raises(aiohttp.ClientConnectorError):
            await fetch(guard, f"{servers.redirector}/private", sockets)
        assert sockets.refused == ["10.0.0.1"]
        # Without the setting the same redirect is refused before any socket.
        public_guard = OutboundGuard("http://upstream.example", allow_private=False)
        resolver = MapResolver({"upstream.example": [["8.8.8.8"]]})
        with pytest.raises(OutboundURLError, match="allowPrivateNetwork"):
            await fetch(public_guard, "http://10.0.0.1/", sockets, resolver)
        assert sockets.refused == ["10.0.0.1"]
        assert servers.hits == []

    run_with_servers(scenario)


def test_a_name_resolving_to_loopback_is_refused_by_the_guard_with_its_reason() -> None:
    async def scenario(servers: Servers) -> None:
        url = f"http://upstream.example:{servers.target_port}/v2/"
        resolver = MapResolver({"upstream.example": [["127.0.0.1"]]})
        sockets = LoopbackOnly()
        guard = OutboundGuard(url, allow_private=False)
        with pytest.raises(OutboundURLError) as caught:
            await fetch(guard, url, sockets, resolver)
        assert str(caught.value) == (
            f"{GUARD}: upstream.example resolves to 127.0.0.1, a loopback address;"
            " set allowPrivateNetwork (CLI --allow-private-network) to allow private networks"
        )
        assert servers.hits == []
        # Allowed, the connection goes to exactly the address the guard checked.
        allowed = OutboundGuard(url, allow_private=True)
        assert await fetch(allowed, url, sockets, resolver) == 200
        assert servers.hits == ["/v2/"]
        assert sockets.refused == []

    run_with_servers(scenario)


def test_refused_addresses_are_dropped_from_an_answer_and_never_contacted() -> None:
    async def scenario(servers: Servers) -> None:
        url = f"http://mixed.example:{servers.target_port}/"
        sockets = LoopbackOnly()
        guard = OutboundGuard(url, allow_private=True)
        mixed = MapResolver({"mixed.example": [["169.254.169.254", "127.0.0.1", "fe80::1"]]})
        assert await fetch(guard, url, sockets, mixed) == 200
        metadata = MapResolver({"mixed.example": [["169.254.169.254", "fd00:ec2::254"]]})
        with pytest.raises(OutboundURLError, match="never contacted"):
            await fetch(guard, url, sockets, metadata)
        assert sockets.refused == []
        assert servers.hits == ["/"]

    run_with_servers(scenario)


def test_dns_rebinding_is_caught_on_every_resolution() -> None:
    """A name that answered a public address when it was configured and loopback later: each
    lookup is checked where it is used, not once up front."""

    async def scenario() -> None:
        inner = MapResolver({"rebind.example": [["8.8.8.8"], ["127.0.0.1"]]})
        resolver = GuardedResolver(
            OutboundGuard("https://rebind.example", allow_private=False), inner
        )
        first = await resolver.resolve("rebind.example", 443)
        assert [result["host"] for result in first] == ["8.8.8.8"]
        with pytest.raises(OutboundURLError, match=r"rebind\.example resolves to 127\.0\.0\.1"):
            await resolver.resolve("rebind.example", 443)
        assert inner.lookups == ["rebind.example", "rebind.example"]

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "url",
    [
        "http://0x7f.1:{port}/",
        "http://2130706433:{port}/",
        "http://127.1:{port}/",
        "http://0177.0.0.1:{port}/",
        "http://127.0.0.1:{port}/",  # a loopback port other than the endpoint's
        "http://[::ffff:127.0.0.1]:{port}/",
        "http://169.254.169.254/",
        "http://0.0.0.0:{port}/",
    ],
)
def test_the_connector_refuses_literal_addresses_that_skip_the_resolver(url: str) -> None:
    async def scenario(servers: Servers) -> None:
        sockets = LoopbackOnly()
        guard = OutboundGuard(servers.redirector, allow_private=True)
        with pytest.raises(OutboundURLError):
            await fetch(guard, url.format(port=servers.target_port), sockets)
        assert servers.hits == []
        assert sockets.refused == []

    run_with_servers(scenario)


def _upstream(url: str, *, allow_private: bool) -> HttpUpstreamClient:
    return HttpUpstreamClient(
        UpstreamEndpoint(
            project="cache",
            url=url,
            flavor=Flavor.OCI,
            username=None,
            password=None,
            token=None,
            ca_bundle=None,
            client_cert=None,
            client_key=None,
            allow_private_network=allow_private,
            timeout_seconds=10,
            version="1",
        )
    )


@pytest.mark.parametrize(
    "realm",
    [
        "http://localhost:{port}/token",
        "http://127.0.0.1:{port}/token",
        "http://0x7f.1:{port}/token",
        "http://[::1]:{port}/token",
        "http://169.254.169.254/token",
        "http://user@127.0.0.1:{port}/token",
    ],
)
def test_a_token_realm_named_by_the_remote_is_an_outbound_url_too(realm: str) -> None:
    async def scenario(servers: Servers) -> None:
        challenge = f'Bearer realm="{realm.format(port=servers.target_port)}",service="x"'

        async def registry(_request: web.Request) -> web.Response:
            return web.Response(status=401, headers={"WWW-Authenticate": challenge})

        app = web.Application()
        app.router.add_get("/v2/", registry)
        runners: list[web.AppRunner] = []
        port = await _site(app, runners)
        client = _upstream(f"http://127.0.0.1:{port}", allow_private=True)
        try:
            with pytest.raises(UpstreamError) as caught:
                await client.check()
            assert "token realm" in str(caught.value)
            assert GUARD in str(caught.value) or "credential" in str(caught.value)
        finally:
            await client.close()
            await runners[0].cleanup()
        assert servers.hits == []

    run_with_servers(scenario)


def test_an_upstream_redirect_to_loopback_fails_the_request_with_the_guards_reason() -> None:
    async def scenario(servers: Servers) -> None:
        target = f"http://0x7f.1:{servers.target_port}/v2/"
        servers.redirects["/v2/"] = (307, target)
        client = _upstream(servers.redirector, allow_private=True)
        try:
            with pytest.raises(UpstreamError) as caught:
                await client.check()
        finally:
            await client.close()
        assert caught.value.kind == "invalid"
        assert "not a canonical IPv4 address" in str(caught.value)
        assert servers.hits == []

    run_with_servers(scenario)
