"""The HTTP side of replication: reading from and writing to a remote registry.

It extends the proxy-cache's upstream client (the same outbound factory with its SSRF guard, the
same Docker token and Basic authentication, credentials never in messages) with what pushing
needs: blob existence checks, cross-repository mounts, monolithic and chunked uploads streamed
from local storage, manifest PUT and DELETE, paginated tag and catalog listings, and the OCI
Referrers API (`GET /v2/<name>/referrers/<digest>`, paginated by `Link`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Final
from urllib.parse import quote

import aiohttp
from yarl import URL

from moorage.domain import mediatypes as mt
from moorage.domain.digest import Digest
from moorage.domain.proxy import Flavor
from moorage.http.outbound import OutboundTLS, outbound_session
from moorage.http.upstream import HttpUpstreamClient
from moorage.services.distribution.proxy import UpstreamEndpoint, UpstreamError, UpstreamHead
from moorage.services.distribution.replication_types import ManifestReceipt, RemoteEndpoint

_PAGE: Final = 100
_MAX_LISTING_BYTES: Final = 4 * 1024 * 1024
_NEXT_LINK: Final = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')
_PUSH: Final = "pull,push"


class HttpRemoteRegistry(HttpUpstreamClient):
    def __init__(self, remote: RemoteEndpoint, *, chunk_bytes: int, monolithic_bytes: int) -> None:
        super().__init__(
            UpstreamEndpoint(
                project=f"replication:{remote.id}",
                url=remote.url,
                flavor=Flavor.OCI,
                username=remote.username,
                password=remote.password,
                token=remote.token,
                ca_bundle=remote.ca_bundle,
                client_cert=None,
                client_key=None,
                allow_private_network=remote.allow_private_network,
                timeout_seconds=remote.timeout_seconds,
                version=remote.version,
            )
        )
        self._verify_tls = remote.verify_tls
        self._chunk_bytes = chunk_bytes
        self._monolithic_bytes = monolithic_bytes

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            endpoint = self._endpoint
            self._session = outbound_session(
                self._outbound(),
                tls=OutboundTLS(ca_pem=endpoint.ca_bundle, verify=self._verify_tls),
                timeout_seconds=float(endpoint.timeout_seconds),
            )
        return self._session

    # -- listings

    async def _json(self, response: aiohttp.ClientResponse) -> dict[str, object]:
        try:
            body = await response.content.read(_MAX_LISTING_BYTES + 1)
        finally:
            response.release()
        if len(body) > _MAX_LISTING_BYTES:
            raise UpstreamError("invalid", "the listing is too large")
        try:
            document = json.loads(body)
        except ValueError:
            raise UpstreamError("invalid", "the listing is not JSON") from None
        if not isinstance(document, dict):
            raise UpstreamError("invalid", "the listing is not a JSON object")
        return document

    async def _pages(self, first: str, repository: str | None, key: str, limit: int) -> list[str]:
        items: list[str] = []
        path: str | None = first
        while path is not None and len(items) < limit:
            response = await self._request("GET", path, repository)
            link = response.headers.get("Link", "")
            document = await self._json(response)
            values = document.get(key) or []
            if not isinstance(values, list):
                raise UpstreamError("invalid", f"`{key}` is not a list")
            page = [value for value in values if isinstance(value, str)]
            items.extend(page)
            match = _NEXT_LINK.search(link)
            if match is None or not page:
                break
            target = URL(match.group(1))
            path = str(target) if target.is_absolute() else target.path_qs
        return items[:limit]

    async def list_repositories(self, limit: int) -> list[str]:
        return await self._pages(f"/v2/_catalog?n={_PAGE}", None, "repositories", limit)

    async def list_tags(self, repository: str, limit: int) -> list[str]:
        return await self._pages(f"/v2/{repository}/tags/list?n={_PAGE}", repository, "tags", limit)

    async def list_referrers(
        self, repository: str, digest: str, limit: int
    ) -> list[dict[str, object]] | None:
        """The descriptors of `digest`'s referrers, following `Link` pages; None when the remote
        has no Referrers API (it answers 404, as Distribution 2.8 does)."""
        found: list[dict[str, object]] = []
        path: str | None = f"/v2/{repository}/referrers/{digest}"
        what = f"the referrers list of {repository}@{digest}"
        while path is not None and len(found) < limit:
            try:
                response = await self._request("GET", path, repository, {"Accept": mt.OCI_INDEX})
            except UpstreamError as error:
                if error.kind == "not-found" and not found:
                    return None
                raise
            link = response.headers.get("Link", "")
            try:
                document = await self._json(response)
            except UpstreamError as error:
                raise UpstreamError("invalid", f"{what}: {error}") from None
            manifests = document.get("manifests")
            if not isinstance(manifests, list):
                raise UpstreamError("invalid", f"{what} is not an image index")
            for descriptor in manifests:
                if not _valid_descriptor(descriptor):
                    raise UpstreamError("invalid", f"{what} holds an invalid descriptor")
                found.append(descriptor)
            match = _NEXT_LINK.search(link)
            if match is None or not manifests:
                break
            target = URL(match.group(1))
            path = str(target) if target.is_absolute() else target.path_qs
        return found[:limit]

    # -- reads beyond the proxy's

    async def find_manifest(self, repository: str, reference: str) -> UpstreamHead | None:
        try:
            return await self.head_manifest(repository, reference)
        except UpstreamError as error:
            if error.kind == "not-found":
                return None
            raise

    async def has_blob(self, repository: str, digest: str) -> bool:
        try:
            response = await self._request(
                "HEAD", f"/v2/{repository}/blobs/{digest}", repository, actions=_PUSH
            )
        except UpstreamError as error:
            if error.kind == "not-found":
                return False
            raise
        response.release()
        return True

    # -- writes

    def _location(self, response: aiohttp.ClientResponse) -> str:
        location = response.headers.get("Location")
        response.release()
        if not location:
            raise UpstreamError("invalid", "the remote sent no upload location")
        return str(URL(self._endpoint.url).join(URL(location)))

    async def start_upload(
        self, repository: str, digest: str, mount_from: str | None
    ) -> str | None:
        """An upload location, or None when the remote mounted the blob from `mount_from`."""
        path = f"/v2/{repository}/blobs/uploads/"
        if mount_from is not None:
            path += f"?mount={quote(digest)}&from={quote(mount_from)}"
        response = await self._request(
            "POST", path, repository, {"Content-Length": "0"}, actions=_PUSH
        )
        if response.status == 201:
            response.release()
            return None
        return self._location(response)

    async def upload_blob(
        self,
        repository: str,
        digest: str,
        size: int,
        location: str,
        read: Callable[[int, int], AsyncIterator[bytes]],
    ) -> None:
        """Send the blob's bytes, read from local storage `read(offset, length)` as a stream:
        in one PUT up to the monolithic limit, else in PATCH chunks and a closing PUT."""
        octets = {"Content-Type": "application/octet-stream"}
        if size <= self._monolithic_bytes:
            response = await self._request(
                "PUT",
                str(URL(location).update_query(digest=digest)),
                repository,
                {**octets, "Content-Length": str(size)},
                actions=_PUSH,
                body=lambda: read(0, size),
            )
            response.release()
            return
        offset = 0
        while offset < size:
            length = min(self._chunk_bytes, size - offset)
            start = offset
            response = await self._request(
                "PATCH",
                location,
                repository,
                {
                    **octets,
                    "Content-Length": str(length),
                    "Content-Range": f"{start}-{start + length - 1}",
                },
                actions=_PUSH,
                body=partial(read, start, length),
            )
            location = self._location(response)
            offset += length
        response = await self._request(
            "PUT",
            str(URL(location).update_query(digest=digest)),
            repository,
            {"Content-Length": "0"},
            actions=_PUSH,
        )
        response.release()

    async def put_manifest(
        self, repository: str, reference: str, media_type: str, body: bytes
    ) -> ManifestReceipt:
        response = await self._request(
            "PUT",
            f"/v2/{repository}/manifests/{reference}",
            repository,
            {"Content-Type": media_type},
            actions=_PUSH,
            body=lambda: body,
        )
        response.release()
        return ManifestReceipt(
            response.headers.get("Docker-Content-Digest"), response.headers.get("OCI-Subject")
        )

    async def delete_manifest(self, repository: str, reference: str) -> None:
        response = await self._request(
            "DELETE", f"/v2/{repository}/manifests/{reference}", repository, actions="delete"
        )
        response.release()


def _valid_descriptor(value: object) -> bool:
    if not isinstance(value, dict):
        return False
    digest, media_type, size = value.get("digest"), value.get("mediaType"), value.get("size")
    if not isinstance(media_type, str) or not isinstance(size, int) or size < 0:
        return False
    return isinstance(digest, str) and Digest.is_digest(digest)


class HttpRemoteRegistries:
    """One client per endpoint configuration in this process; a changed configuration gets a
    new client and the old one is closed once in-flight work had time to finish."""

    def __init__(self, *, chunk_bytes: int, monolithic_bytes: int) -> None:
        self._chunk_bytes = chunk_bytes
        self._monolithic_bytes = monolithic_bytes
        self._clients: dict[int, tuple[str, HttpRemoteRegistry]] = {}
        self._stale: list[HttpRemoteRegistry] = []
        self._closing: set[asyncio.Future[None]] = set()

    def client(self, remote: RemoteEndpoint) -> HttpRemoteRegistry:
        found = self._clients.get(remote.id)
        if found is not None and found[0] == remote.version:
            return found[1]
        client = HttpRemoteRegistry(
            remote, chunk_bytes=self._chunk_bytes, monolithic_bytes=self._monolithic_bytes
        )
        self._clients[remote.id] = (remote.version, client)
        if found is not None:
            # Work in flight may still use the old client for a while: close it later.
            self._stale.append(found[1])
            asyncio.get_running_loop().call_later(300, self._close_stale, found[1])
        return client

    def _close_stale(self, client: HttpRemoteRegistry) -> None:
        if client in self._stale:
            self._stale.remove(client)
            closing = asyncio.ensure_future(client.close())
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        for client in [*(entry[1] for entry in self._clients.values()), *self._stale]:
            with contextlib.suppress(Exception):
                await client.close()
        self._clients.clear()
        self._stale.clear()
