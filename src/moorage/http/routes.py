"""The route table: every endpoint with the permission it needs, in one place.

`access_middleware` enforces the permission column; a test walks the application's router and
fails for any route that is missing here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web
from aiohttp.typedefs import Handler

from moorage.http import scanner_api, token, v2
from moorage.http.access import (
    AUTHENTICATED,
    CATALOG,
    DELETE,
    PERMISSIONS,
    PING,
    PUBLIC,
    PULL,
    PUSH,
    Permission,
)
from moorage.http.api import API_ROUTES
from moorage.http.readiness import live, ready

# Repository names are matched loosely here and validated against the spec's grammar by the
# access middleware, so that a bad name gets NAME_INVALID instead of a bare 404.
NAME = r"{name:.+}"
DIGEST = r"{digest:[^/]+}"
REFERENCE = r"{reference:[^/]+}"
UPLOAD = r"{upload_id:[A-Za-z0-9_-]+}"


class RouteDeclaration(Protocol):
    """What the route table needs of an entry; `Route` and the API's `ApiRoute` both are one."""

    @property
    def method(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def handler(self) -> Handler: ...
    @property
    def permission(self) -> Permission: ...


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    handler: Handler
    permission: Permission


ROUTES: tuple[Route, ...] = (
    Route("GET", "/healthz", live, PUBLIC),
    Route("GET", "/readyz", ready, PUBLIC),
    Route("GET", "/service/token", token.get_token, PUBLIC),
    Route("POST", "/service/token", token.post_token, PUBLIC),
    Route("GET", "/v2/", v2.api_version, PING),
    Route("HEAD", "/v2/", v2.api_version, PING),
    Route("GET", "/v2/_catalog", v2.catalog, CATALOG),
    Route("GET", f"/v2/{NAME}/tags/list", v2.list_tags, PULL),
    Route("GET", f"/v2/{NAME}/referrers/{DIGEST}", v2.referrers, PULL),
    Route("GET", f"/v2/{NAME}/manifests/{REFERENCE}", v2.get_manifest, PULL),
    Route("HEAD", f"/v2/{NAME}/manifests/{REFERENCE}", v2.get_manifest, PULL),
    Route("PUT", f"/v2/{NAME}/manifests/{REFERENCE}", v2.put_manifest, PUSH),
    Route("DELETE", f"/v2/{NAME}/manifests/{REFERENCE}", v2.delete_manifest, DELETE),
    # Upload routes come before /blobs/{digest} so "uploads" is never read as a digest.
    Route("POST", f"/v2/{NAME}/blobs/uploads/", v2.start_upload, PUSH),
    Route("GET", f"/v2/{NAME}/blobs/uploads/{UPLOAD}", v2.upload_status, PUSH),
    Route("PATCH", f"/v2/{NAME}/blobs/uploads/{UPLOAD}", v2.patch_upload, PUSH),
    Route("PUT", f"/v2/{NAME}/blobs/uploads/{UPLOAD}", v2.finish_upload, PUSH),
    Route("DELETE", f"/v2/{NAME}/blobs/uploads/{UPLOAD}", v2.cancel_upload, PUSH),
    Route("GET", f"/v2/{NAME}/blobs/{DIGEST}", v2.get_blob, PULL),
    Route("HEAD", f"/v2/{NAME}/blobs/{DIGEST}", v2.get_blob, PULL),
    Route("DELETE", f"/v2/{NAME}/blobs/{DIGEST}", v2.delete_blob, DELETE),
    # Harbor's scanner adapter API over the built-in scanner. The repository is in the body or
    # the scan id, so each handler decides on it through `access.may` (scan / read-scan).
    Route("GET", f"{scanner_api.PREFIX}/metadata", scanner_api.metadata, AUTHENTICATED),
    Route("POST", f"{scanner_api.PREFIX}/scan", scanner_api.scan, AUTHENTICATED),
    Route(
        "GET",
        f"{scanner_api.PREFIX}/scan/{{scan_id:[^/]+}}/report",
        scanner_api.report,
        AUTHENTICATED,
    ),
)


def install_routes(
    app: web.Application, routes: Iterable[RouteDeclaration] = (*ROUTES, *API_ROUTES)
) -> None:
    permissions: dict[web.AbstractRoute, Permission] = {}
    for route in routes:
        registered = app.router.add_route(route.method, route.path, route.handler)
        permissions[registered] = route.permission
    app[PERMISSIONS] = permissions
