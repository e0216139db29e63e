"""The one factory for outbound HTTP clients (upstream registries, webhooks, scanners,
replication), and the guard every outbound URL passes before a connection is made.

Outbound URLs are configured by administrators but still checked: a hostname that resolves to a
loopback, link-local (cloud metadata), private or otherwise non-public address is refused unless
the caller allows private networks explicitly. The check runs on every connection attempt
(redirects included), through a resolver that refuses such addresses, so DNS rebinding between
a check and the connect cannot slip past it.
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
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL


class OutboundURLError(ValueError):
    """The URL may not be contacted."""


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


def is_public_address(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _never_reachable_by_redirect(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip.is_multicast


def check_url(url: str, *, allow_private: bool = False, redirect: bool = False) -> None:
    """Refuse URLs that are not http(s) or that name a literal non-public address.

    A redirect target is held to more: it may never be a loopback, link-local (cloud metadata)
    or unspecified address, even when the configured endpoint is allowed to be private.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise OutboundURLError("outbound URLs must be http:// or https:// with a host")
    if parts.username or parts.password:
        raise OutboundURLError("put credentials in the credential settings, not in the URL")
    try:
        literal = ipaddress.ip_address(parts.hostname)
    except ValueError:
        return  # a name: checked when it is resolved
    if redirect and _never_reachable_by_redirect(str(literal)):
        raise OutboundURLError(f"refusing a redirect to {parts.hostname}")
    if not allow_private and not is_public_address(str(literal)):
        raise OutboundURLError(f"{parts.hostname} is not a public address")


class GuardedResolver(AbstractResolver):
    """Resolves like the default resolver, then drops every non-public address."""

    def __init__(self, allow_private: bool) -> None:
        self._inner = DefaultResolver()
        self._allow_private = allow_private

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if self._allow_private:
            return results
        allowed = [r for r in results if is_public_address(r["host"])]
        if not allowed:
            raise OSError(f"{host} resolves only to non-public addresses")
        return allowed

    async def close(self) -> None:
        await self._inner.close()


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


def _redirect_guard(allow_private: bool) -> aiohttp.TraceConfig:
    """Literal addresses skip the resolver: check every redirect target as well."""

    async def on_redirect(
        _session: aiohttp.ClientSession, _context: Any, params: aiohttp.TraceRequestRedirectParams
    ) -> None:
        location = params.response.headers.get("Location", "")
        check_url(str(params.url.join(URL(location))), allow_private=allow_private, redirect=True)

    trace = aiohttp.TraceConfig()
    trace.on_request_redirect.append(on_redirect)
    return trace


def outbound_session(
    *,
    tls: OutboundTLS | None = None,
    allow_private: bool = False,
    timeout_seconds: float = 30.0,
    headers: dict[str, str] | None = None,
    **kwargs: Any,
) -> aiohttp.ClientSession:
    """An aiohttp session for talking to another service on the administrator's behalf."""
    connector = aiohttp.TCPConnector(
        ssl=ssl_context(tls or OutboundTLS()),
        resolver=GuardedResolver(allow_private),
        limit=64,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=timeout_seconds),
        headers={"User-Agent": "moorage", **(headers or {})},
        trace_configs=[_redirect_guard(allow_private)],
        **kwargs,
    )
