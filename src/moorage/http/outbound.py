"""The one factory for outbound HTTP: CA bundles, client certificates and the SSRF guard.

Outbound URLs are configured by administrators but still checked, three times over:

- at configuration time, `moorage.domain.outbound` refuses hosts that are not spelled in one
  canonical way and literal addresses the endpoint may not reach;
- on every connection attempt (the first request, every redirect hop, token services), the
  connector checks the host again and the resolver checks every address a name resolves to,
  keeping only the allowed ones; aiohttp then connects to exactly those addresses, so DNS
  rebinding between a check and the connect cannot slip past;
- every redirect target is parsed strictly before it is followed.

Only the configured endpoint's own host and port get the endpoint's policy; any other host
(a redirect target, a token realm the remote names) may be on a private network when the
endpoint allows private networks, but never on loopback. Link-local, cloud metadata and
unspecified addresses are never contacted.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import ssl
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.client_reqrep import ClientRequest
from aiohttp.connector import Connection, SocketFactoryType
from aiohttp.resolver import DefaultResolver
from aiohttp.tracing import Trace
from yarl import URL

from moorage.domain.outbound import (
    GUARD,
    OutboundURL,
    OutboundURLError,
    parse_host,
    parse_url,
    refusal,
)

__all__ = ["OutboundGuard", "OutboundTLS", "OutboundURLError", "check_url", "outbound_session"]


@dataclass(frozen=True, slots=True)
class OutboundTLS:
    """Files on disk, or PEM text (as stored in the database for an upstream)."""

    ca_bundle: Path | None = None
    ca_pem: str | None = None  # a CA bundle held as text (PEM) rather than in a file
    client_cert: Path | None = None
    client_key: Path | None = None
    verify: bool = True
    client_cert_pem: str | None = None
    client_key_pem: str | None = field(default=None, repr=False)


class OutboundGuard:
    """What one configured endpoint's session may reach."""

    def __init__(self, endpoint_url: str | None, *, allow_private: bool) -> None:
        """`endpoint_url` None: no host is the endpoint's own (every one is judged as a
        redirect target)."""
        self.origin = parse_url(endpoint_url).origin if endpoint_url is not None else None
        self.allow_private = allow_private

    def _foreign(self, host: str, port: int) -> bool:
        address = parse_host(host)
        return (host.lower() if address is None else str(address), port) != self.origin

    def check_address(self, host: str, port: int, address: str) -> None:
        """Refuse `address` (literal, or what `host` resolved to) with the guard's reason."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            raise OutboundURLError(f"{GUARD}: {host} resolves to {address!r}") from None
        reason = refusal(ip, allow_private=self.allow_private, foreign=self._foreign(host, port))
        if reason is None:
            return
        if parse_host(host) is None:
            raise OutboundURLError(f"{GUARD}: {host} resolves to {ip}, {reason}")
        raise OutboundURLError(f"{GUARD}: {host} is {reason}")

    def check_host(self, host: str, port: int) -> None:
        """A host about to be connected to: canonical, and not a refused literal address."""
        address = parse_host(host)
        if address is not None:
            self.check_address(host, port, str(address))

    def check_url(self, url: str) -> OutboundURL:
        """Any URL this session is about to request or be redirected to."""
        parsed = parse_url(url)
        self.check_host(parsed.host, parsed.port)
        return parsed


def check_url(url: str, *, allow_private: bool = False, redirect: bool = False) -> OutboundURL:
    """The configuration-time check of an endpoint URL (a redirect target when `redirect`)."""
    guard = OutboundGuard(None if redirect else url, allow_private=allow_private)
    return guard.check_url(url)


class GuardedResolver(AbstractResolver):
    """Resolves with an inner resolver, then keeps only the addresses the guard allows."""

    def __init__(self, guard: OutboundGuard, inner: AbstractResolver | None = None) -> None:
        self._guard = guard
        self._inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self._guard.check_host(host, port)
        results = await self._inner.resolve(host, port, family)
        allowed: list[ResolveResult] = []
        first_refusal: OutboundURLError | None = None
        for result in results:
            try:
                self._guard.check_address(host, port, result["host"])
            except OutboundURLError as error:
                first_refusal = first_refusal or error
            else:
                allowed.append(result)
        if not allowed:
            raise first_refusal or OutboundURLError(f"{GUARD}: {host} resolves to nothing")
        return allowed

    async def close(self) -> None:
        await self._inner.close()


class GuardedConnector(aiohttp.TCPConnector):
    """Checks the host of every connection it opens (literal addresses skip the resolver)."""

    def __init__(self, guard: OutboundGuard, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._guard = guard

    async def connect(
        self,
        req: ClientRequest,
        traces: list[Trace],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 - aiohttp's signature
    ) -> Connection:
        url = req.url
        if url.scheme not in ("http", "https") or url.raw_user or url.raw_password:
            raise OutboundURLError(f"{GUARD}: only http(s) URLs without credentials")
        if req.proxy is not None:
            raise OutboundURLError(f"{GUARD}: outbound requests do not go through proxies")
        self._guard.check_host(url.raw_host or "", req.port or 0)
        return await super().connect(req, traces, timeout)


def ssl_context(tls: OutboundTLS) -> ssl.SSLContext | bool:
    if not tls.verify:
        return False
    context = ssl.create_default_context(
        cafile=str(tls.ca_bundle) if tls.ca_bundle else None, cadata=tls.ca_pem
    )
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.client_cert is not None:
        context.load_cert_chain(tls.client_cert, tls.client_key)
    elif tls.client_cert_pem and tls.client_key_pem:
        _load_pem_chain(context, tls.client_cert_pem, tls.client_key_pem)
    return context


def _load_pem_chain(context: ssl.SSLContext, cert_pem: str, key_pem: str) -> None:
    """OpenSSL loads a client certificate only from files: write both to a private temporary
    directory for the moment it takes, then remove them."""
    with tempfile.TemporaryDirectory(prefix="moorage-tls-") as directory:
        cert_path = Path(directory) / "cert.pem"
        key_path = Path(directory) / "key.pem"
        for path, text in ((cert_path, cert_pem), (key_path, key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
        context.load_cert_chain(cert_path, key_path)


def _redirect_guard(guard: OutboundGuard) -> aiohttp.TraceConfig:
    """Parse every redirect target strictly before it is followed: the raw Location, not what
    a URL library made of it (the connector checks the host it connects to as well)."""

    async def on_redirect(
        _session: aiohttp.ClientSession, _context: Any, params: aiohttp.TraceRequestRedirectParams
    ) -> None:
        location = params.response.headers.get("Location", "")
        if location.startswith("//"):
            location = f"{params.url.scheme}:{location}"
        if not location.isascii() or "\\" in location:
            raise OutboundURLError(f"{GUARD}: a redirect to {location[:100]!r}")
        try:
            absolute = URL(location).absolute
        except ValueError:
            raise OutboundURLError(f"{GUARD}: a redirect to {location[:100]!r}") from None
        guard.check_url(location if absolute else str(params.url.join(URL(location))))

    trace = aiohttp.TraceConfig()
    trace.on_request_redirect.append(on_redirect)
    return trace


def outbound_session(
    guard: OutboundGuard,
    *,
    tls: OutboundTLS | None = None,
    timeout_seconds: float = 30.0,
    headers: dict[str, str] | None = None,
    resolver: AbstractResolver | None = None,
    socket_factory: SocketFactoryType | None = None,
    **kwargs: Any,
) -> aiohttp.ClientSession:
    """An aiohttp session for talking to `guard`'s endpoint on the administrator's behalf.

    `resolver` replaces the system resolver under the guard and `socket_factory` the creation
    of sockets (tests observe what would be contacted through them).
    """
    connector = GuardedConnector(
        guard,
        ssl=ssl_context(tls or OutboundTLS()),
        resolver=GuardedResolver(guard, resolver),
        socket_factory=socket_factory,
        limit=64,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=timeout_seconds),
        headers={"User-Agent": "moorage", **(headers or {})},
        trace_configs=[_redirect_guard(guard)],
        trust_env=False,
        **kwargs,
    )
