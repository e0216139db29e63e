"""Blobs kept by a remote driver (S3): a 307 to a presigned URL, or streamed through this node.

Streaming fetches the same presigned URL with the event loop's own HTTP client, so the bytes
go from the storage's socket to the client's in large reads with no thread hop per chunk.
Clients verify the digest of what they pull either way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from moorage.domain.errors import ErrorCode, RegistryError
from moorage.domain.ranges import ByteRange
from moorage.services.registry.registry import BlobLocation
from moorage.storage.base import BlobStore

_READ_BUFFER = 4 << 20


@dataclass
class RemoteBlobs:
    storage: BlobStore
    redirect: bool
    presign_seconds: int
    _session: aiohttp.ClientSession | None = field(default=None, init=False)

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=120),
                auto_decompress=False,
                read_bufsize=_READ_BUFFER,
                skip_auto_headers=("Accept-Encoding", "User-Agent"),
            )
        return self._session

    async def close(self, _app: web.Application) -> None:
        if self._session is not None:
            await self._session.close()

    @staticmethod
    def _headers_only(
        location: BlobLocation, byte_range: ByteRange | None, headers: dict[str, str]
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=206 if byte_range else 200, headers=headers)
        response.content_type = "application/octet-stream"
        response.content_length = byte_range.length if byte_range else location.size
        if byte_range is not None:
            response.headers["Content-Range"] = _content_range(byte_range, location.size)
        return response

    async def respond(
        self,
        request: web.Request,
        location: BlobLocation,
        byte_range: ByteRange | None,
        headers: dict[str, str],
    ) -> web.StreamResponse | None:
        """The response for a blob without a local file; None when the driver has no URLs."""
        url = self.storage.blob_url(location.digest, self.presign_seconds)
        if url is None:
            return None
        if request.method == "HEAD" or location.size == 0:
            return self._headers_only(location, byte_range, headers)
        if self.redirect:
            return web.Response(status=307, headers={**headers, "Location": url})
        upstream_headers = {}
        if byte_range is not None:
            upstream_headers["Range"] = f"bytes={byte_range.start}-{byte_range.end}"
        async with self._http().get(url, headers=upstream_headers) as upstream:
            if upstream.status == 404:  # collected since the lookup
                raise RegistryError(
                    ErrorCode.BLOB_UNKNOWN, f"blob {location.digest} is no longer stored"
                )
            if upstream.status not in (200, 206):
                raise web.HTTPBadGateway(text=f"blob storage answered {upstream.status}")
            streamed = web.StreamResponse(status=206 if byte_range else 200, headers=headers)
            streamed.content_type = "application/octet-stream"
            streamed.content_length = byte_range.length if byte_range else location.size
            if byte_range is not None:
                streamed.headers["Content-Range"] = _content_range(byte_range, location.size)
            await streamed.prepare(request)
            _read_in_large_pieces(upstream)
            async for chunk in upstream.content.iter_any():
                await streamed.write(chunk)
            await streamed.write_eof()
            return streamed


def _read_in_large_pieces(upstream: aiohttp.ClientResponse) -> None:
    """Let the storage connection read up to 4 MiB per receive instead of asyncio's 256 KiB.

    Each receive costs a parse, a timer reset and a loop pass: this cut the node's CPU per
    streamed GiB by a tenth in bench/storage.py. Transports without the knob keep their own.
    """
    transport = upstream.connection.transport if upstream.connection is not None else None
    if transport is not None and hasattr(transport, "max_size"):
        transport.max_size = _READ_BUFFER


def _content_range(byte_range: ByteRange, size: int) -> str:
    return f"bytes {byte_range.start}-{byte_range.end}/{size}"


REMOTE_BLOBS = web.AppKey("remote_blobs", RemoteBlobs)
