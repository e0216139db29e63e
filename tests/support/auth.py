"""Docker-style token authentication for httpx: answer Bearer challenges with a token."""

from __future__ import annotations

import base64
import re
from collections.abc import Generator

import httpx

ADMIN_USER = "admin"
ADMIN_PASSWORD = "admin-password-for-tests"

_NAME_RE = re.compile(r"^/v2/(.+?)/(?:manifests|blobs|tags|referrers)/")
_PARAM_RE = re.compile(r'(\w+)="([^"]*)"')


def parse_challenge(header: str) -> dict[str, str]:
    scheme, _, rest = header.partition(" ")
    if scheme.lower() != "bearer":
        return {}
    return dict(_PARAM_RE.findall(rest))


def basic_header(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


class RegistryAuth(httpx.Auth):
    """Fetches a token for each repository (all actions the account may have) and retries once
    on a challenge, as docker and skopeo do. `None` credentials fetch anonymous tokens."""

    requires_request_body = True

    def __init__(
        self, username: str | None = ADMIN_USER, password: str | None = ADMIN_PASSWORD
    ) -> None:
        self._credentials = (username, password) if username is not None else None
        self._tokens: dict[str, str] = {}

    def _scopes(self, request: httpx.Request) -> list[str]:
        path = request.url.path
        match = _NAME_RE.match(path)
        if match:
            scopes = [f"repository:{match.group(1)}:pull,push,delete"]
            source = request.url.params.get("from")
            if source:
                scopes.append(f"repository:{source}:pull")
            return scopes
        if path.startswith("/v2/_catalog"):
            return ["registry:catalog:*"]
        return []

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        key = " ".join(self._scopes(request))
        if key in self._tokens:
            request.headers["Authorization"] = f"Bearer {self._tokens[key]}"
        response = yield request
        if response.status_code != 401:
            return
        challenge = parse_challenge(response.headers.get("WWW-Authenticate", ""))
        if "realm" not in challenge:
            return
        scopes = self._scopes(request) or ([challenge["scope"]] if "scope" in challenge else [])
        params = [("service", challenge.get("service", ""))] + [("scope", s) for s in scopes]
        token_request = httpx.Request("GET", challenge["realm"], params=params)
        if self._credentials is not None:
            username, password = self._credentials
            token_request.headers["Authorization"] = basic_header(username, password or "")
        token_response = yield token_request
        if token_response.status_code != 200:
            return
        token_response.read()
        token = token_response.json()["token"]
        self._tokens[key] = token
        request.headers["Authorization"] = f"Bearer {token}"
        yield request
