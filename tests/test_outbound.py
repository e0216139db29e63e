"""The outbound URL guard: every feature that calls out (upstreams, webhooks, scanners) goes
through `outbound_session`, so these refusals cover them all."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web

from moorage.http.outbound import OutboundURLError, check_url, outbound_session


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:5000/v2/",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.8/",
        "http://192.168.1.1/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://0.0.0.0/",
        "file:///etc/passwd",
        "ftp://example.org/",
        "http://user:secret@registry.example.org/",
    ],
)
def test_refused_urls(url: str) -> None:
    with pytest.raises(OutboundURLError):
        check_url(url)


def test_public_and_named_urls_pass_the_static_check() -> None:
    check_url("https://registry-1.docker.io/v2/")
    check_url("https://8.8.8.8/")
    check_url("http://127.0.0.1:5000/", allow_private=True)


def test_redirects_never_reach_metadata_or_loopback() -> None:
    for target in ("http://169.254.169.254/", "http://127.0.0.1/", "http://[::1]/"):
        with pytest.raises(OutboundURLError):
            check_url(target, allow_private=True, redirect=True)


async def _with_server(scenario: Callable[[int], Awaitable[None]]) -> None:
    async def ok(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def to_metadata(_request: web.Request) -> web.Response:
        raise web.HTTPFound("http://169.254.169.254/latest/meta-data/")

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_get("/redirect", to_metadata)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        await scenario(runner.addresses[0][1])
    finally:
        await runner.cleanup()


async def _status(url: str, *, allow_private: bool) -> int:
    async with (
        outbound_session(allow_private=allow_private) as session,
        session.get(url) as response,
    ):
        return response.status


def test_names_resolving_to_loopback_are_refused_unless_allowed() -> None:
    async def scenario(port: int) -> None:
        with pytest.raises(aiohttp.ClientConnectorError):
            await _status(f"http://localhost:{port}/ok", allow_private=False)
        assert await _status(f"http://localhost:{port}/ok", allow_private=True) == 200

    asyncio.run(_with_server(scenario))


def test_a_redirect_to_the_metadata_address_is_refused() -> None:
    async def scenario(port: int) -> None:
        with pytest.raises(OutboundURLError):
            await _status(f"http://127.0.0.1:{port}/redirect", allow_private=True)

    asyncio.run(_with_server(scenario))
