"""The client's address behind a load balancer.

Behind haproxy or nginx every request comes from the balancer's address, so sign-in
throttling per address would lock all clients out together and the audit log would name the
balancer. When the peer is a trusted proxy, the client is the rightmost address of
X-Forwarded-For that is not itself a trusted proxy: addresses further left were written by the
client and prove nothing. Without trusted proxies the header is ignored."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:
        text = text[1 : text.index("]")]  # [v6]:port
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]  # v4:port
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def client_address(
    peer: str | None, forwarded_for: Sequence[str], trusted: Sequence[Network]
) -> str | None:
    """The address to treat as the client's (`peer` unless it is a trusted proxy)."""
    current = _address(peer or "")
    if current is None or not any(current in network for network in trusted):
        return peer
    hops = [hop for header in forwarded_for for hop in header.split(",")]
    for hop in reversed(hops):
        address = _address(hop)
        if address is None:
            return str(current)  # a malformed hop: trust nothing written before it
        current = address
        if not any(address in network for network in trusted):
            return str(address)
    return str(current)


def forwarded_middleware(trusted_proxies: Sequence[str]) -> Middleware:
    trusted = [ipaddress.ip_network(entry, strict=False) for entry in trusted_proxies]

    @web.middleware
    async def forwarded(request: web.Request, handler: Handler) -> web.StreamResponse:
        if trusted:
            client = client_address(
                request.remote, request.headers.getall("X-Forwarded-For", []), trusted
            )
            if client is not None and client != request.remote:
                request = request.clone(remote=client)
        return await handler(request)

    return forwarded
