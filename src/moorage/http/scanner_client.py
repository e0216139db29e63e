"""The HTTP client of Harbor's pluggable scanner API: metadata, scan request, report polling.

Every connection goes through `moorage.http.outbound` (the SSRF guard, the adapter's CA bundle
or skipped verification). Redirects are never followed: a 302 from the report endpoint means
"not ready yet" (its `Refresh-After` says when to ask again), and anywhere else a redirect is
an error, so the adapter's credential is only ever sent to the URL it was registered with.
Bodies are read up to a cap; failures become `AdapterError` with a reason that names the
adapter's own error message when it sent one, and never the credential.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from moorage.config import Settings
from moorage.domain.mediatypes import strip_parameters
from moorage.http.outbound import (
    OutboundGuard,
    OutboundTLS,
    OutboundURLError,
    check_url,
    outbound_session,
)
from moorage.metadata.supply_chain.scanner_store import ScannerStore
from moorage.scanning.harbor import (
    METADATA_V1_1,
    REPORT_TYPES,
    SCAN_REQUEST_V1_1,
    SCAN_RESPONSE,
    AdapterMetadata,
    HarborFormatError,
    VulnerabilityReport,
    error_message,
    parse_metadata,
    parse_report,
    parse_scan_response,
    same_media_type,
)
from moorage.services.access.tokens import TokenService
from moorage.services.events import EventBus
from moorage.services.supply_chain.scanner_adapters import (
    AdapterConfig,
    AdapterError,
    CredentialBox,
    ScannerAdapterService,
    ScannerRegistry,
    registry_url,
    secret_key_source,
)
from moorage.services.threads import Threads

MAX_METADATA_BYTES: Final = 1 << 20
MAX_SCAN_RESPONSE_BYTES: Final = 64 * 1024
MAX_REPORT_BYTES: Final = 64 << 20
MAX_POLL_WAIT_SECONDS: Final = 30.0  # the longest one Refresh-After is honoured for
MIN_POLL_WAIT_SECONDS: Final = 0.2  # Refresh-After: 0 must not become a busy loop
DEFAULT_POLL_WAIT_SECONDS: Final = 2.0  # a 302 without (a valid) Refresh-After
_METADATA_ACCEPT: Final = ", ".join(
    (
        METADATA_V1_1,
        "application/vnd.scanner.adapter.metadata+json; version=1.0",
        "application/json",
    )
)


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes


class HarborAdapterClient:
    """`moorage.services.supply_chain.scanner_adapters.AdapterClient` over HTTP."""

    async def metadata(self, config: AdapterConfig, timeout_seconds: float) -> AdapterMetadata:
        try:
            async with asyncio.timeout(timeout_seconds), _session(config) as session:
                return await _metadata(session, config)
        except TimeoutError:
            raise AdapterError(f"no metadata within {timeout_seconds:g} s") from None

    async def scan(
        self, config: AdapterConfig, request: dict[str, Any], report_type: str
    ) -> VulnerabilityReport:
        try:
            async with asyncio.timeout(config.timeout_seconds), _session(config) as session:
                scan_id = await _submit(session, config, request)
                return await _poll(session, config, scan_id, report_type)
        except TimeoutError:
            raise AdapterError(f"no report within {config.timeout_seconds} s") from None


@asynccontextmanager
async def _session(config: AdapterConfig) -> AsyncIterator[aiohttp.ClientSession]:
    try:
        guard = OutboundGuard(config.url, allow_private=config.allow_private_network)
        guard.check_url(config.url)
    except OutboundURLError as error:
        raise AdapterError(f"refused to contact {config.url}: {error}") from None
    tls = OutboundTLS(ca_pem=config.ca_pem, verify=config.verify_tls)
    try:
        session = outbound_session(
            guard,
            tls=tls,
            timeout_seconds=min(30.0, float(config.timeout_seconds)),
            headers=config.headers,
        )
    except (OSError, ValueError, TypeError) as error:  # an unusable CA bundle
        raise AdapterError(f"cannot set up TLS: {error}") from None
    async with session:
        yield session


async def _call(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    limit: int,
    *,
    headers: dict[str, str],
    data: bytes | None = None,
) -> _Answer:
    try:
        async with session.request(
            method, url, headers=headers, data=data, allow_redirects=False
        ) as response:
            body = await _read_capped(response, limit)
            return _Answer(response.status, response.headers, body)
    except OutboundURLError as error:  # the host, or what its name resolved to
        raise AdapterError(str(error)) from None
    except aiohttp.ClientConnectorError as error:
        raise AdapterError(f"cannot connect to {url}: {error.os_error}") from None
    except (aiohttp.ClientError, OSError, ValueError) as error:  # ValueError: an unusable URL
        raise AdapterError(f"{method} {url} failed: {error or type(error).__name__}") from None


async def _read_capped(response: aiohttp.ClientResponse, limit: int) -> bytes:
    if response.content_length is not None and response.content_length > limit:
        raise AdapterError(f"the answer is larger than {limit} bytes")
    data = bytearray()
    async for chunk in response.content.iter_chunked(64 * 1024):
        data += chunk
        if len(data) > limit:
            raise AdapterError(f"the answer is larger than {limit} bytes")
    return bytes(data)


def _failure(what: str, answer: _Answer) -> AdapterError:
    message = error_message(answer.body) if answer.body else None
    detail = f": {message}" if message else ""
    if 300 <= answer.status < 400:
        detail = " (redirects are not followed)"
    return AdapterError(f"{what} answered HTTP {answer.status}{detail}")


async def _metadata(session: aiohttp.ClientSession, config: AdapterConfig) -> AdapterMetadata:
    url = f"{config.base}/api/v1/metadata"
    answer = await _call(
        session, "GET", url, MAX_METADATA_BYTES, headers={"Accept": _METADATA_ACCEPT}
    )
    if answer.status != 200:
        raise _failure("GET /api/v1/metadata", answer)
    try:
        return parse_metadata(answer.body)
    except HarborFormatError as error:
        raise AdapterError(str(error)) from None


async def _submit(
    session: aiohttp.ClientSession, config: AdapterConfig, request: dict[str, Any]
) -> str:
    answer = await _call(
        session,
        "POST",
        f"{config.base}/api/v1/scan",
        MAX_SCAN_RESPONSE_BYTES,
        headers={
            "Content-Type": SCAN_REQUEST_V1_1,
            "Accept": f"{SCAN_RESPONSE}, application/json",
        },
        data=json.dumps(request).encode(),
    )
    if answer.status not in (200, 201, 202):
        raise _failure("POST /api/v1/scan", answer)
    try:
        return parse_scan_response(answer.body).id
    except HarborFormatError as error:
        raise AdapterError(str(error)) from None


async def _poll(
    session: aiohttp.ClientSession, config: AdapterConfig, scan_id: str, report_type: str
) -> VulnerabilityReport:
    url = f"{config.base}/api/v1/scan/{quote(scan_id, safe='')}/report"
    while True:
        answer = await _call(session, "GET", url, MAX_REPORT_BYTES, headers={"Accept": report_type})
        if answer.status == 302:
            await asyncio.sleep(refresh_after(answer.headers.get("Refresh-After")))
            continue
        if answer.status == 404:
            raise AdapterError(f"the adapter does not know scan {scan_id[:100]!r} (HTTP 404)")
        if answer.status != 200:
            raise _failure("GET /api/v1/scan/{id}/report", answer)
        content_type = answer.headers.get("Content-Type", "")
        if not _is_report_type(content_type):
            raise AdapterError(f"the report came as {content_type[:100]!r}, not as {report_type!r}")
        try:
            return parse_report(answer.body)
        except HarborFormatError as error:
            raise AdapterError(str(error)) from None


def _is_report_type(content_type: str) -> bool:
    if strip_parameters(content_type) == "application/json":
        return True
    return any(same_media_type(content_type, report_type) for report_type in REPORT_TYPES)


def refresh_after(header: str | None) -> float:
    """Seconds to wait before asking again: the header's value, within sane bounds."""
    try:
        seconds = float(header) if header is not None else DEFAULT_POLL_WAIT_SECONDS
    except ValueError:
        seconds = DEFAULT_POLL_WAIT_SECONDS
    if seconds != seconds:  # NaN
        seconds = DEFAULT_POLL_WAIT_SECONDS
    return min(max(seconds, MIN_POLL_WAIT_SECONDS), MAX_POLL_WAIT_SECONDS)


def guard_url(url: str, allow_private: bool) -> None:
    """The registration-time URL check (raises ValueError): the one every call passes, and a
    host name that can be looked up at all."""
    check_url(url, allow_private=allow_private)
    try:
        host = URL(url).raw_host or ""
        host.encode("idna")
    except (ValueError, UnicodeError):
        raise OutboundURLError("the URL's host name is not valid") from None


def scanner_adapters(
    settings: Settings,
    store: ScannerStore,
    server_secret: Callable[[str], bytes],
    events: EventBus,
    threads: Threads,
    tokens: TokenService,
) -> tuple[ScannerAdapterService, ScannerRegistry]:
    """The adapter registrations and the scan service's resolver, wired for this server."""
    url = registry_url(settings.public_url, settings.listen, tls=settings.tls_cert is not None)
    listening = registry_url(None, settings.listen, tls=settings.tls_cert is not None)
    service = ScannerAdapterService(
        store,
        CredentialBox(secret_key_source(server_secret)),
        HarborAdapterClient(),
        events,
        threads,
        url_guard=guard_url,
        default_timeout_seconds=settings.scanner_timeout_seconds,
        own_urls=(url, listening),
    )
    return service, ScannerRegistry(service, tokens, threads, url)
