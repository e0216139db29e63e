"""The upstream registry client of proxy-cache projects
(`moorage.services.distribution.proxy.UpstreamClient`).

It speaks the OCI distribution API to any registry (Distribution, Harbor, Docker Hub, another
Moorage), through the one outbound client factory (CA bundle, client certificate, SSRF guard
on every connection and redirect). Authentication follows the registry's challenge:

- `WWW-Authenticate: Bearer realm=…,service=…` — the Docker token flow: a GET on the realm with
  `service` and `scope=repository:<name>:pull`, with Basic credentials when configured; the
  token is cached per scope until shortly before it expires;
- `WWW-Authenticate: Basic` — the configured username and password;
- a configured token is sent as `Authorization: Bearer` as it is.

Credentials never appear in logs or error messages.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Final

import aiohttp
from yarl import URL

from moorage.http.outbound import OutboundGuard, OutboundTLS, OutboundURLError, outbound_session
from moorage.services.distribution.proxy import (
    UPSTREAM_ACCEPT,
    UpstreamBlob,
    UpstreamBlobHead,
    UpstreamEndpoint,
    UpstreamError,
    UpstreamHead,
    UpstreamManifest,
)

log = logging.getLogger("moorage.proxy.upstream")

_CHUNK: Final = 256 * 1024
_MAX_TOKEN_RESPONSE: Final = 64 * 1024
_MAX_ERROR_BODY: Final = 4096
_TOKEN_MARGIN_SECONDS: Final = 10
_MAX_CACHED_TOKENS: Final = 4096
_CHALLENGE_PARAM: Final = re.compile(r'(\w+)="([^"]*)"')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """(scheme in lower case, parameters) of a WWW-Authenticate header."""
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), dict(_CHALLENGE_PARAM.findall(rest))


class _Blob:
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.size = response.content_length

    async def _iterate(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_chunked(_CHUNK):
                yield chunk
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            message = f"the transfer broke off: {_describe(error)}"
            raise UpstreamError("unavailable", message) from None

    def chunks(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def close(self) -> None:
        self._response.release()


class HttpUpstreamClient:
    def __init__(self, endpoint: UpstreamEndpoint) -> None:
        self._endpoint = endpoint
        self._session: aiohttp.ClientSession | None = None
        self._guard: OutboundGuard | None = None
        self._tokens: dict[str, tuple[str, float]] = {}
        self._challenge: tuple[str, dict[str, str]] | None = None

    def _outbound(self) -> OutboundGuard:
        """The guard of every URL this client requests (OutboundURLError for an endpoint URL
        stored before the guard refused its spelling)."""
        if self._guard is None:
            endpoint = self._endpoint
            self._guard = OutboundGuard(endpoint.url, allow_private=endpoint.allow_private_network)
        return self._guard

    def _checked(self, url: str, what: str = "") -> None:
        try:
            self._outbound().check_url(url)
        except OutboundURLError as error:
            raise UpstreamError("invalid", f"{what}{error}") from None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            endpoint = self._endpoint
            self._session = outbound_session(
                self._outbound(),
                tls=OutboundTLS(
                    ca_pem=endpoint.ca_bundle,
                    client_cert_pem=endpoint.client_cert,
                    client_key_pem=endpoint.client_key,
                ),
                timeout_seconds=float(endpoint.timeout_seconds),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    # -- authentication

    def _basic(self) -> str | None:
        endpoint = self._endpoint
        if endpoint.username and endpoint.password is not None:
            raw = f"{endpoint.username}:{endpoint.password}".encode()
            return "Basic " + base64.b64encode(raw).decode()
        return None

    async def _authorization(self, scope: str | None, *, refresh: bool) -> str | None:
        if self._endpoint.token is not None:
            return f"Bearer {self._endpoint.token}"
        if self._challenge is None:
            return None
        scheme, params = self._challenge
        if scheme == "basic":
            return self._basic()
        if scheme != "bearer" or "realm" not in params:
            return None
        key = scope or ""
        cached = self._tokens.get(key)
        if cached is not None and not refresh and cached[1] > time.monotonic():
            return f"Bearer {cached[0]}"
        token, lifetime = await self._fetch_token(params, scope)
        if len(self._tokens) >= _MAX_CACHED_TOKENS:
            self._tokens.clear()
        self._tokens[key] = (token, time.monotonic() + max(lifetime - _TOKEN_MARGIN_SECONDS, 5))
        return f"Bearer {token}"

    async def _fetch_token(self, params: dict[str, str], scope: str | None) -> tuple[str, float]:
        realm = params["realm"]
        # The remote names its token service: an outbound URL like any other.
        self._checked(realm, "token realm: ")
        query = {"service": params["service"]} if "service" in params else {}
        if scope:
            query["scope"] = scope
        headers = {}
        basic = self._basic()
        if basic is not None:
            headers["Authorization"] = basic
        try:
            async with self._http().get(URL(realm).update_query(query), headers=headers) as reply:
                if reply.status in (401, 403):
                    raise UpstreamError(
                        "unauthorized",
                        "the upstream's token service refused this proxy's credentials"
                        f" (HTTP {reply.status})",
                    )
                if reply.status == 429:
                    raise UpstreamError("rate-limited", "the upstream's token service answered 429")
                if reply.status != 200:
                    raise UpstreamError(
                        "unavailable", f"the upstream's token service answered {reply.status}"
                    )
                body = await reply.content.read(_MAX_TOKEN_RESPONSE)
        except OutboundURLError as error:
            raise UpstreamError("invalid", f"token realm: {error}") from None
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            raise UpstreamError("unavailable", f"token service: {_describe(error)}") from None
        try:
            document = _json_object(body)
            token = document.get("token") or document.get("access_token")
            expires_in = document.get("expires_in")
            lifetime = float(expires_in) if isinstance(expires_in, int | float) else 60.0
        except (ValueError, TypeError):
            token = None
            lifetime = 0.0
        if not isinstance(token, str) or not token:
            raise UpstreamError("invalid", "the upstream's token service returned no token")
        return token, lifetime

    # -- requests

    async def _request(
        self,
        method: str,
        path: str,
        repository: str | None,
        headers: dict[str, str] | None = None,
        *,
        actions: str = "pull",
        body: Callable[[], object] | None = None,
    ) -> aiohttp.ClientResponse:
        """A response with a 2xx status (the caller releases it), or UpstreamError.

        `path` may also be an absolute URL (an upload location); `actions` are the token scope's
        actions; `body` makes the request body (again, when a challenge makes it retry).
        """
        url = path if path.startswith(("http://", "https://")) else self._endpoint.url + path
        scope = f"repository:{repository}:{actions}" if repository else None
        self._checked(url)
        refresh = False
        for attempt in range(2):
            request_headers = dict(headers or {})
            authorization = await self._authorization(scope, refresh=refresh)
            if authorization is not None:
                request_headers["Authorization"] = authorization
            try:
                response = await self._http().request(
                    method,
                    url,
                    headers=request_headers,
                    data=body() if body is not None else None,
                )
            except OutboundURLError as error:  # this URL, a redirect, or what a name resolved to
                raise UpstreamError("invalid", str(error)) from None
            except (aiohttp.ClientError, TimeoutError, OSError) as error:
                raise UpstreamError("unavailable", _describe(error)) from None
            if response.status == 401 and attempt == 0:
                challenge = parse_challenge(response.headers.get("WWW-Authenticate", ""))
                response.release()
                if self._endpoint.token is None and challenge[0] in ("bearer", "basic"):
                    self._challenge = challenge
                    refresh = True
                    continue
            if 200 <= response.status < 300:
                return response
            await self._fail(response)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _fail(self, response: aiohttp.ClientResponse) -> None:
        status = response.status
        detail = ""
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
            detail = _error_message(await response.content.read(_MAX_ERROR_BODY))
        response.release()
        suffix = f": {detail}" if detail else ""
        if status == 401:
            raise UpstreamError(
                "unauthorized", f"the upstream refused this proxy's credentials (401){suffix}"
            )
        if status == 403:
            raise UpstreamError("denied", f"the upstream denied access (403){suffix}")
        if status == 404:
            raise UpstreamError("not-found", f"not found upstream{suffix}")
        if status == 429:
            raise UpstreamError("rate-limited", f"the upstream answered 429{suffix}")
        if status >= 500:
            raise UpstreamError("unavailable", f"the upstream answered {status}{suffix}")
        raise UpstreamError("invalid", f"the upstream answered {status}{suffix}")

    async def check(self) -> None:
        response = await self._request("GET", "/v2/", None)
        response.release()

    async def get_manifest(
        self, repository: str, reference: str, max_bytes: int
    ) -> UpstreamManifest:
        response = await self._request(
            "GET",
            f"/v2/{repository}/manifests/{reference}",
            repository,
            {"Accept": ", ".join(UPSTREAM_ACCEPT)},
        )
        try:
            if response.content_length is not None and response.content_length > max_bytes:
                raise UpstreamError("invalid", f"the manifest exceeds {max_bytes} bytes")
            body = await response.content.read(max_bytes + 1)
            while len(body) <= max_bytes and not response.content.at_eof():
                more = await response.content.read(max_bytes + 1 - len(body))
                if not more:
                    break
                body += more
            if len(body) > max_bytes:
                raise UpstreamError("invalid", f"the manifest exceeds {max_bytes} bytes")
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            raise UpstreamError("unavailable", _describe(error)) from None
        finally:
            response.release()
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        return UpstreamManifest(body, media_type, response.headers.get("Docker-Content-Digest"))

    async def head_manifest(self, repository: str, reference: str) -> UpstreamHead:
        response = await self._request(
            "HEAD",
            f"/v2/{repository}/manifests/{reference}",
            repository,
            {"Accept": ", ".join(UPSTREAM_ACCEPT)},
        )
        response.release()
        return UpstreamHead(
            response.headers.get("Docker-Content-Digest"),
            response.headers.get("Content-Type"),
        )

    async def open_blob(self, repository: str, digest: str) -> UpstreamBlob:
        response = await self._request("GET", f"/v2/{repository}/blobs/{digest}", repository)
        return _Blob(response)

    async def head_blob(self, repository: str, digest: str) -> UpstreamBlobHead:
        response = await self._request("HEAD", f"/v2/{repository}/blobs/{digest}", repository)
        response.release()
        # aiohttp reports no content_length for HEAD: the header is read as sent.
        raw = response.headers.get("Content-Length", "")
        size = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 19 else None
        return UpstreamBlobHead(size, response.headers.get("Docker-Content-Digest"))


class HttpUpstreamClients:
    """One client (with its connection pool and tokens) per upstream configuration, per
    worker; a changed configuration gets a new client and the old one is closed."""

    def __init__(self) -> None:
        self._clients: dict[str, tuple[str, HttpUpstreamClient]] = {}

    def client(self, endpoint: UpstreamEndpoint) -> HttpUpstreamClient:
        found = self._clients.get(endpoint.project)
        if found is not None and found[0] == endpoint.version:
            return found[1]
        client = HttpUpstreamClient(endpoint)
        self._clients[endpoint.project] = (endpoint.version, client)
        if found is not None:
            stale = found[1]
            # In-flight requests of the old client may still read from it for a while.
            asyncio.get_running_loop().call_later(300, lambda: asyncio.ensure_future(stale.close()))
        return client

    async def close(self) -> None:
        for _, client in self._clients.values():
            await client.close()
        self._clients.clear()


def _describe(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "timed out"
    text = str(error) or type(error).__name__
    return text[:300]


def _json_object(body: bytes) -> dict[str, object]:
    document = json.loads(body)
    if not isinstance(document, dict):
        raise ValueError("not an object")
    return document


def _error_message(body: bytes) -> str:
    """The first message of an OCI error body, shortened; never the raw body."""
    try:
        document = _json_object(body)
        errors = document.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            message = errors[0].get("message") or errors[0].get("code")
            if isinstance(message, str):
                return message[:200]
    except (ValueError, TypeError, UnicodeDecodeError):
        pass
    return ""
