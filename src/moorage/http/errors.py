"""Error bodies outside the OCI format: RFC 9457 problem details, and access denials."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from aiohttp import web

from moorage.domain.errors import ErrorCode, RegistryError
from moorage.http.responses import error_response

PROBLEM_JSON = "application/problem+json"


class ApiProblem(Exception):
    """A management API request that cannot be served; `errors` names the offending fields."""

    def __init__(
        self, status: int, detail: str, errors: list[dict[str, str]] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = errors


def problem_response(
    status: int,
    detail: str,
    *,
    code: str | None = None,
    headers: dict[str, str] | None = None,
    errors: list[dict[str, str]] | None = None,
) -> web.Response:
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if code is not None:
        body["code"] = code
    if errors is not None:
        body["errors"] = errors
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        headers={"Content-Type": PROBLEM_JSON, **(headers or {})},
    )


def _realm(request: web.Request) -> str:
    from moorage.http.state import IAM

    base = request.app[IAM].public_url or f"{request.scheme}://{request.host}"
    return f"{base.rstrip('/')}/service/token"


def render_denied(request: web.Request, denied: Any) -> web.Response:
    """401 with a challenge the client can answer, or 403 when credentials would not help."""
    from moorage.http.state import IAM

    api = request.path.startswith("/api/")
    headers: dict[str, str] = {}
    if denied.challenge:
        if api:
            headers["WWW-Authenticate"] = 'Basic realm="moorage"'
        else:
            service = request.app[IAM].tokens.service
            parts = [f'realm="{_realm(request)}"', f'service="{service}"']
            if denied.scope:
                parts.append(f'scope="{denied.scope}"')
            if denied.error:
                parts.append(f'error="{denied.error}"')
            headers["WWW-Authenticate"] = "Bearer " + ",".join(parts)
    status = 401 if denied.challenge else 403
    if api:
        return problem_response(status, str(denied), headers=headers)
    code = ErrorCode.UNAUTHORIZED if denied.challenge else ErrorCode.DENIED
    return error_response(RegistryError(code, str(denied), status=status, headers=headers))
