"""Responses: OCI error bodies and a zero-copy blob response."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import BinaryIO

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from moorage.domain.errors import RegistryError
from moorage.domain.ranges import ByteRange

JSON = "application/json"


def error_response(error: RegistryError) -> web.Response:
    return web.Response(
        status=error.status,
        body=json.dumps(error.as_body()).encode(),
        content_type=JSON,
        headers=error.headers,
    )


def json_response(
    document: object,
    *,
    status: int = 200,
    headers: dict[str, str] | None = None,
    content_type: str = JSON,
) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(document, separators=(",", ":")).encode(),
        headers={"Content-Type": content_type, **(headers or {})},
    )


class BlobResponse(web.StreamResponse):
    """Sends a stored blob (or one byte range of it) with `sendfile` when the file is local.

    aiohttp's FileResponse would do its own stat, ETag and content-type guessing; a registry
    knows all of that from metadata, so this response only moves bytes.
    """

    def __init__(
        self,
        *,
        path: Path | None,
        opener: BinaryIO | None,
        size: int,
        byte_range: ByteRange | None,
        headers: dict[str, str],
    ) -> None:
        super().__init__(status=206 if byte_range else 200, headers=headers)
        self._path = path
        self._opener = opener
        self._range = byte_range
        self._offset = byte_range.start if byte_range else 0
        self._count = byte_range.length if byte_range else size
        self.content_length = self._count
        self.content_type = "application/octet-stream"
        if byte_range is not None:
            self.headers["Content-Range"] = f"bytes {byte_range.start}-{byte_range.end}/{size}"

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if request.method == "HEAD" or self._count == 0:
            return await super().prepare(request)
        loop = asyncio.get_running_loop()
        source = self._opener
        if source is None:
            source = await loop.run_in_executor(None, _open, self._path)
        try:
            writer = await super().prepare(request)
            transport = request.transport
            if transport is None or transport.is_closing():
                raise ConnectionResetError("client went away")
            await loop.sendfile(transport, source, self._offset, self._count)
            await super().write_eof()
            return writer
        finally:
            source.close()


def _open(path: Path | None) -> BinaryIO:
    assert path is not None
    return open(path, "rb")
