"""Requests the HTTP parser rejects still get a JSON error body.

aiohttp answers a request it cannot parse (a body longer than its Content-Length read as the
next request, an oversized header line, Content-Length together with Transfer-Encoding, bytes
that are not HTTP at all) with a plain-text page before any route runs, so no middleware can
shape it. The parser never learns the path of such a request, so the body serves both
protocols at once: the OCI `errors` list that registry clients read on /v2, and the RFC 9457
fields that management API clients read.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from moorage.domain.errors import ErrorCode


def protocol_error_body(status: int, reason: str) -> dict[str, Any]:
    """One body that is both an OCI error document and a problem document."""
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    if status >= 500:
        # The spec lists no code for a server fault; UNKNOWN is what Distribution sends.
        code = "UNKNOWN"
        message = "the server could not complete the request"
    else:
        code = ErrorCode.UNSUPPORTED.value
        message = "the request is not valid HTTP"
    detail = f"{message}: {reason}" if reason else message
    return {
        "errors": [{"code": code, "message": message, "detail": reason}],
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
    }


def _reason(status: int, exc: BaseException | None, message: str | None) -> str:
    if status >= 500:
        return ""  # an internal fault's text stays in the log
    text = message or (str(exc) if exc is not None else "")
    # Parser messages quote the offending bytes; keep them printable and short.
    printable = "".join(ch if ch.isprintable() else "?" for ch in text)
    return printable[:200]


class JsonErrorRequestHandler(RequestHandler):
    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # The base class logs the failure and refuses when a response has already started.
        super().handle_error(request, status, exc, message)
        body = protocol_error_body(status, _reason(status, exc, message))
        response = web.Response(
            status=status,
            body=json.dumps(body).encode(),
            content_type="application/json",
        )
        response.force_close()
        return response


class JsonErrorServer(web.Server):
    def __call__(self) -> RequestHandler:
        return JsonErrorRequestHandler(self, loop=self._loop, **self._kwargs)


class JsonErrorAppRunner(web.AppRunner):
    """An `AppRunner` whose connections answer unparseable requests in JSON."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # Same state, one overridden factory method: the handler class it builds.
        server.__class__ = JsonErrorServer
        return server
