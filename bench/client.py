"""The one HTTP client both registries are driven with (aiohttp, keep-alive connections).

Every call checks the status the Distribution spec requires and raises `ProtocolError` with the
server's reply otherwise, so a benchmark never reports the speed of failing requests.

Authentication follows docker's token flow (`TokenAuth`): a 401 with a `Bearer` challenge names
the token service; the client signs in there with Basic credentials for one repository at a time
(`repository:NAME:pull,push`), caches that token and sends it with every request to the
repository, and fetches a new one when it nears expiry or is refused with `invalid_token`.

Blob downloads go through `BlobReader`, a minimal HTTP/1.1 keep-alive reader that receives into
one reusable buffer and only counts body bytes: measured on this 2-core machine, aiohttp's
client tops out near 2 GiB/s on a single stream (one full core in the client), below what the
servers can send, so it would have measured the client instead of the servers.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import cast
from urllib.parse import quote

import aiohttp
from yarl import URL

from blobdata import OCI_MANIFEST, Blob, Image

_LINK_RE = re.compile(r"<([^>]+)>\s*;\s*rel=\"?next\"?")
_PARAM_RE = re.compile(r'(\w+)="([^"]*)"')
_READ_BUFFER = 1 << 20
_MAX_HEAD = 64 << 10
# A token is fetched again when less than this is left of its lifetime (docker: 60 s minimum).
_REFRESH_MARGIN = 30.0


class ProtocolError(RuntimeError):
    """The server answered something a conforming registry would not."""


def parse_bearer(header: str) -> dict[str, str] | None:
    """The parameters of a `WWW-Authenticate: Bearer ...` challenge, or None for other schemes."""
    scheme, _, rest = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return dict(_PARAM_RE.findall(rest))


@dataclass(slots=True)
class _Token:
    value: str
    expires_at: float  # time.monotonic()

    def fresh(self) -> bool:
        return self.expires_at - time.monotonic() > _REFRESH_MARGIN


class TokenAuth:
    """Docker token authentication against one registry, shareable by several clients.

    Holds the registry's challenge (token service realm and service name) once learned, and one
    token per repository. Token requests of one `TokenAuth` go one at a time, so concurrent
    first uses of several repositories sign in one after the other, not all at once.
    """

    def __init__(self, username: str, password: str) -> None:
        raw = f"{username}:{password}".encode()
        self._basic = "Basic " + base64.b64encode(raw).decode()
        self.challenge: dict[str, str] | None = None
        self.open = False  # /v2/ answered 200 without credentials: nothing to authenticate
        self._tokens: dict[str, _Token] = {}
        self._lock = asyncio.Lock()
        self.fetches = 0
        self.fetch_seconds = 0.0  # time spent in token requests (they go one at a time)

    def cached(self, name: str) -> str | None:
        token = self._tokens.get(name)
        return token.value if token is not None and token.fresh() else None

    async def token(
        self, session: aiohttp.ClientSession, base: URL, name: str, *, refused: str | None = None
    ) -> str:
        """A fresh token for `name`: the cached one unless it was `refused` or nears expiry."""
        async with self._lock:
            current = self._tokens.get(name)
            if current is not None and current.value != refused and current.fresh():
                return current.value  # another request fetched it meanwhile
            if self.challenge is None or "realm" not in self.challenge:
                raise ProtocolError("no token service known: the registry sent no challenge")
            realm = base.join(URL(self.challenge["realm"]))
            params = [
                ("service", self.challenge.get("service", "")),
                ("scope", f"repository:{name}:pull,push"),
            ]
            asked = time.monotonic()
            async with session.get(
                realm, params=params, headers={"Authorization": self._basic}
            ) as response:
                body = await response.read()
                if response.status != 200:
                    raise ProtocolError(
                        f"GET {realm}: token request for {name} got {response.status}:"
                        f" {body[:500].decode(errors='replace')}"
                    )
                document = await response.json(content_type=None)
            value = document.get("token") or document.get("access_token")
            if not value:
                raise ProtocolError(f"GET {realm}: no token in the reply")
            # The token specification's default lifetime is 60 s when expires_in is missing.
            lifetime = float(document.get("expires_in") or 60)
            self._tokens[name] = _Token(value, asked + lifetime)
            self.fetches += 1
            self.fetch_seconds += time.monotonic() - asked
            return str(value)


class RegistryClient:
    def __init__(
        self, base_url: str, *, connections: int = 64, auth: TokenAuth | None = None
    ) -> None:
        self.base = URL(base_url)
        self.auth = auth
        connector = aiohttp.TCPConnector(limit=connections, limit_per_host=connections)
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=300),
            auto_decompress=False,
            read_bufsize=1 << 20,
            skip_auto_headers=("Accept-Encoding",),
        )

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.session.close()

    def url(self, path: str) -> URL:
        return self.base.join(URL(path))

    # -- authentication

    async def ping(self) -> None:
        """GET /v2/ as docker does before anything else: is there a token service, and where."""
        assert self.auth is not None
        async with self.session.get(self.url("/v2/")) as response:
            body = await response.read()
            if response.status == 200:
                self.auth.open = True
                return
            challenge = parse_bearer(response.headers.get("WWW-Authenticate", ""))
            if response.status != 401 or not challenge or "realm" not in challenge:
                raise ProtocolError(
                    f"GET /v2/: expected 200 or 401 with a Bearer challenge, got"
                    f" {response.status}: {body[:500].decode(errors='replace')}"
                )
            self.auth.challenge = {
                key: challenge[key] for key in ("realm", "service") if key in challenge
            }

    async def authorize(self, name: str) -> str | None:
        """The Authorization header for requests to repository `name` (None if none is needed).

        Learns the challenge from /v2/ first if no request has been challenged yet, and fetches
        a token unless a fresh one is cached.
        """
        auth = self.auth
        if auth is None:
            return None
        if auth.challenge is None and not auth.open:
            await self.ping()
        if auth.open:
            return None
        value = auth.cached(name) or await auth.token(self.session, self.base, name)
        return f"Bearer {value}"

    async def _send(
        self,
        method: str,
        url: URL,
        name: str,
        *,
        headers: dict[str, str] | None = None,
        data: object = None,
        streamed: bool = False,
    ) -> aiohttp.ClientResponse:
        """One request to repository `name`, authenticated as docker does.

        Once the registry's challenge is known, the repository's token is sent up front. A
        request that was not sent with a token, or whose token was refused as `invalid_token`,
        is answered with a new token and sent once more. A streamed body cannot be sent twice,
        so its token is obtained before it is sent (pinging /v2/ first if need be), and a 401
        to it is returned as it is.
        """
        headers = dict(headers or {})
        auth = self.auth
        sent: str | None = None
        if auth is not None and (streamed or auth.challenge is not None):
            sent = await self.authorize(name)
            if sent is not None:
                headers["Authorization"] = sent
        response = await self.session.request(method, url, headers=headers, data=data)
        if auth is None or streamed or response.status != 401:
            return response
        challenge = parse_bearer(response.headers.get("WWW-Authenticate", ""))
        if not challenge or "realm" not in challenge:
            return response
        if sent is not None and challenge.get("error") != "invalid_token":
            return response
        await response.read()
        response.release()
        auth.challenge = {key: challenge[key] for key in ("realm", "service") if key in challenge}
        auth.open = False
        refused = sent.partition(" ")[2] if sent is not None else None
        value = await auth.token(self.session, self.base, name, refused=refused)
        headers["Authorization"] = f"Bearer {value}"
        return await self.session.request(method, url, headers=headers, data=data)

    @contextlib.asynccontextmanager
    async def _call(
        self,
        method: str,
        url: URL,
        name: str,
        *,
        headers: dict[str, str] | None = None,
        data: object = None,
        streamed: bool = False,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        response = await self._send(
            method, url, name, headers=headers, data=data, streamed=streamed
        )
        try:
            yield response
        finally:
            response.release()

    def _location(self, location: str | None, response: aiohttp.ClientResponse) -> URL:
        if not location:
            raise ProtocolError(f"{response.method} {response.url}: no Location header")
        return self.base.join(URL(location, encoded=True))

    @staticmethod
    async def _expect(response: aiohttp.ClientResponse, *statuses: int) -> None:
        if response.status not in statuses:
            body = (await response.read())[:500].decode(errors="replace")
            raise ProtocolError(
                f"{response.method} {response.url}: expected {statuses}, got {response.status}:"
                f" {body}"
            )

    @staticmethod
    def _with_digest(location: URL, digest: str) -> URL:
        text = str(location)
        separator = "&" if "?" in text else "?"
        return URL(f"{text}{separator}digest={quote(digest, safe=':')}", encoded=True)

    # -- blobs

    async def blob_exists(self, name: str, digest: str) -> bool:
        url = self.url(f"/v2/{name}/blobs/{digest}")
        async with self._call("HEAD", url, name) as response:
            await self._expect(response, 200, 404)
            return response.status == 200

    async def start_upload(self, name: str) -> URL:
        async with self._call(
            "POST", self.url(f"/v2/{name}/blobs/uploads/"), name, headers={"Content-Length": "0"}
        ) as response:
            await self._expect(response, 202)
            return self._location(response.headers.get("Location"), response)

    async def push_monolithic(self, name: str, blob: Blob) -> None:
        """POST for a session, then one PUT ?digest= carrying the whole blob."""
        location = await self.start_upload(name)
        async with self._call(
            "PUT",
            self._with_digest(location, blob.digest),
            name,
            data=blob.stream(),
            streamed=True,
            headers={
                "Content-Length": str(blob.size),
                "Content-Type": "application/octet-stream",
            },
        ) as response:
            await self._expect(response, 201)
            await response.read()

    async def push_chunked(self, name: str, blob: Blob, chunk_size: int) -> int:
        """POST, PATCH chunks with Content-Range, PUT ?digest= with no body; chunks sent."""
        location = await self.start_upload(name)
        chunks = 0
        for start in range(0, blob.size, chunk_size):
            end = min(blob.size, start + chunk_size)
            async with self._call(
                "PATCH",
                location,
                name,
                data=blob.stream(start, end),
                streamed=True,
                headers={
                    "Content-Length": str(end - start),
                    "Content-Range": f"{start}-{end - 1}",
                    "Content-Type": "application/octet-stream",
                },
            ) as response:
                await self._expect(response, 202)
                location = self._location(response.headers.get("Location"), response)
                await response.read()
            chunks += 1
        async with self._call(
            "PUT", self._with_digest(location, blob.digest), name, headers={"Content-Length": "0"}
        ) as response:
            await self._expect(response, 201)
            await response.read()
        return chunks

    async def verify_blob(self, name: str, digest: str, expected_size: int) -> None:
        """GET a blob and check its digest (untimed: the timed pulls only count bytes)."""
        hasher = hashlib.sha256()
        url = self.url(f"/v2/{name}/blobs/{digest}")
        async with self._call("GET", url, name) as response:
            await self._expect(response, 200)
            async for chunk in response.content.iter_any():
                hasher.update(chunk)
            if response.content.total_bytes != expected_size:
                raise ProtocolError(f"blob {digest}: got {response.content.total_bytes} bytes")
        if f"sha256:{hasher.hexdigest()}" != digest:
            raise ProtocolError(f"blob {digest}: content does not match its digest")

    # -- manifests and tags

    async def put_manifest(self, name: str, reference: str, body: bytes, media_type: str) -> str:
        async with self._call(
            "PUT",
            self.url(f"/v2/{name}/manifests/{reference}"),
            name,
            data=body,
            headers={"Content-Type": media_type},
        ) as response:
            await self._expect(response, 201)
            await response.read()
            return response.headers.get("Docker-Content-Digest", "")

    async def get_manifest(self, name: str, reference: str, accept: str) -> tuple[str, bytes]:
        async with self._call(
            "GET", self.url(f"/v2/{name}/manifests/{reference}"), name, headers={"Accept": accept}
        ) as response:
            await self._expect(response, 200)
            return response.headers.get("Docker-Content-Digest", ""), await response.read()

    async def push_image(self, name: str, tag: str, image: Image) -> None:
        """What a client pushing a small image does: check, upload missing blobs, tag."""
        for blob in (image.layer, image.config):
            if await self.blob_exists(name, blob.digest):
                continue
            await self.push_monolithic(name, blob)
        await self.put_manifest(name, tag, image.manifest, OCI_MANIFEST)

    async def tags_page(self, name: str, url: URL) -> tuple[list[str], URL | None]:
        async with self._call("GET", url, name) as response:
            await self._expect(response, 200)
            document = await response.json(content_type=None)
            link = response.headers.get("Link")
        tags = document.get("tags") or []
        following = None
        if link:
            match = _LINK_RE.search(link)
            if match is not None:
                following = self.base.join(URL(match.group(1), encoded=True))
        return list(tags), following


class _CountingProtocol(asyncio.BufferedProtocol):
    """Receives one response at a time into a fixed buffer; keeps only the head."""

    def __init__(self) -> None:
        self._buffer = memoryview(bytearray(_READ_BUFFER))
        self._head = bytearray()
        self._in_body = False
        self._remaining = 0
        self._received = 0
        self._status = 0
        self._error_body = bytearray()
        self._waiter: asyncio.Future[tuple[int, int, bytes]] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionError(f"connection closed mid-response: {exc}"))

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        if self._in_body:
            self._body(0, nbytes)
            return
        self._head += self._buffer[:nbytes]
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > _MAX_HEAD:
                self._fail(ProtocolError("response head too large"))
            return
        try:
            self._parse_head(bytes(self._head[:end]))
        except ProtocolError as error:
            self._fail(error)
            return
        extra = len(self._head) - end - 4
        self._in_body = True
        # The body bytes that came with the head are the tail of what was just received.
        self._body(nbytes - extra, nbytes)
        self._head.clear()

    def _parse_head(self, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            raise ProtocolError(f"bad status line {lines[0]!r}")
        self._status = int(parts[1])
        length = None
        for line in lines[1:]:
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key == "content-length":
                length = int(value.strip())
            elif key == "transfer-encoding":
                raise ProtocolError("chunked blob responses are not supported by this reader")
        if length is None:
            raise ProtocolError("blob response without Content-Length")
        self._remaining = length
        self._received = 0
        self._error_body.clear()

    def _body(self, start: int, stop: int) -> None:
        count = stop - start
        if count > self._remaining:
            self._fail(ProtocolError("more bytes than Content-Length"))
            return
        if self._status != 200 and len(self._error_body) < 500:
            self._error_body += self._buffer[start:stop]
        self._remaining -= count
        self._received += count
        if self._remaining == 0:
            self._in_body = False
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_result((self._status, self._received, bytes(self._error_body)))

    def _fail(self, error: Exception) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(error)
        if self.transport is not None:
            self.transport.close()

    async def request(self, head: bytes) -> tuple[int, int, bytes]:
        if self.transport is None or self.transport.is_closing():
            raise ConnectionError("connection is closed")
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(head)
        return await self._waiter


class BlobReader:
    """One keep-alive connection that GETs blobs and counts their bytes.

    `authorization` is sent as the Authorization header of every GET (a `Bearer` token for the
    repository, fetched beforehand with `RegistryClient.authorize`).
    """

    def __init__(self, base_url: str, *, authorization: str | None = None) -> None:
        self.base = URL(base_url)
        self._authorization = (
            f"Authorization: {authorization}\r\n" if authorization is not None else ""
        )
        self._protocol: _CountingProtocol | None = None

    async def __aenter__(self) -> BlobReader:
        loop = asyncio.get_running_loop()
        assert self.base.host is not None
        assert self.base.port is not None
        _, protocol = await loop.create_connection(
            _CountingProtocol, self.base.host, self.base.port
        )
        self._protocol = protocol
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()

    async def pull(self, name: str, digest: str, expected_size: int) -> int:
        assert self._protocol is not None
        path = f"/v2/{name}/blobs/{digest}"
        head = (
            f"GET {path} HTTP/1.1\r\nHost: {self.base.host}:{self.base.port}\r\n"
            f"User-Agent: moorage-bench\r\nAccept: */*\r\n{self._authorization}\r\n"
        ).encode()
        status, received, error_body = await self._protocol.request(head)
        if status != 200:
            raise ProtocolError(
                f"GET {path}: expected 200, got {status}: {error_body.decode(errors='replace')}"
            )
        if received != expected_size:
            raise ProtocolError(f"blob {digest}: got {received} bytes, expected {expected_size}")
        return received
