"""The route table and its enforcement: every route declares a permission, an undeclared route
fails closed, names are validated before anyone is asked, and each /v2 route is decided with the
permission its operation needs (seen in the challenge scope and in who gets through)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from moorage.config import load_settings
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
    Scope,
)
from moorage.http.api import API_ROUTES
from moorage.http.app import build_app
from moorage.http.routes import ROUTES
from moorage.server import prepare_data
from tests.support.api import PASSWORD, api_client, create_user, set_role
from tests.support.auth import ADMIN_PASSWORD, ADMIN_USER, basic_header, parse_challenge
from tests.support.oci import (
    OCI_MANIFEST,
    Pushed,
    assert_oci_error,
    bearer,
    encode,
    fetch_token,
    image_manifest,
    push_image_parts,
    push_manifest,
)
from tests.support.server import RegistryProcess

DIGEST = "sha256:" + "0" * 64


def make_app(data_dir: Path) -> web.Application:
    settings = load_settings(
        flags={"data_dir": data_dir}, environ={"MOORAGE_ADMIN_PASSWORD": ADMIN_PASSWORD}
    )
    prepare_data(settings)  # what `moorage serve` does before it builds the application
    return build_app(settings, run_jobs=False)


# -- the table


def test_every_registered_route_declares_a_permission(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    permissions = app[PERMISSIONS]
    routes = list(app.router.routes())
    assert len(routes) == len(ROUTES) + len(API_ROUTES)
    undeclared = [describe(route) for route in routes if route not in permissions]
    assert undeclared == []


def describe(route: web.AbstractRoute) -> str:
    return f"{route.method} {route.resource.canonical if route.resource is not None else '?'}"


def test_route_table_has_no_duplicates() -> None:
    keys = [(route.method, route.path) for route in ROUTES]
    keys += [(route.method, route.path) for route in API_ROUTES]
    assert len(keys) == len(set(keys))


def test_repository_routes_and_only_those_are_repository_scoped() -> None:
    for route in ROUTES:
        if "{name" in route.path:
            expected = Scope.REPOSITORY
        elif route.path.startswith(("/v2/", "/scanner/api/v1/")):
            expected = Scope.REGISTRY
        else:
            expected = Scope.PUBLIC
        assert route.permission.scope is expected, route


def expected_permission(method: str, path: str) -> Permission:
    """What each endpoint should require, derived from the spec's operations."""
    if path in ("/healthz", "/readyz", "/service/token"):
        return PUBLIC  # the token service authenticates by itself; health says nothing
    if path == "/v2/":
        return PING
    if path == "/v2/_catalog":
        return CATALOG
    if path.startswith("/scanner/api/v1/"):
        # The repository is in the body or the scan id: the handler decides on it (access.may).
        return AUTHENTICATED
    if "/blobs/uploads/" in path:
        return PUSH  # cancelling an upload is part of pushing
    if method in ("GET", "HEAD"):
        return PULL
    if method == "DELETE":
        return DELETE
    return PUSH


def test_each_route_requires_the_permission_its_operation_needs() -> None:
    for route in ROUTES:
        assert route.permission == expected_permission(route.method, route.path), route


def test_every_method_the_spec_names_is_routed() -> None:
    routed = {(route.method, route.path.replace("{name:.+}", "<name>")) for route in ROUTES}
    spec_endpoints = [
        ("GET", "/v2/"),
        ("GET", "/v2/<name>/blobs/{digest:[^/]+}"),
        ("HEAD", "/v2/<name>/blobs/{digest:[^/]+}"),
        ("GET", "/v2/<name>/manifests/{reference:[^/]+}"),
        ("HEAD", "/v2/<name>/manifests/{reference:[^/]+}"),
        ("PUT", "/v2/<name>/manifests/{reference:[^/]+}"),
        ("DELETE", "/v2/<name>/manifests/{reference:[^/]+}"),
        ("DELETE", "/v2/<name>/blobs/{digest:[^/]+}"),
        ("POST", "/v2/<name>/blobs/uploads/"),
        ("PATCH", "/v2/<name>/blobs/uploads/{upload_id:[A-Za-z0-9_-]+}"),
        ("PUT", "/v2/<name>/blobs/uploads/{upload_id:[A-Za-z0-9_-]+}"),
        ("GET", "/v2/<name>/blobs/uploads/{upload_id:[A-Za-z0-9_-]+}"),
        ("DELETE", "/v2/<name>/blobs/uploads/{upload_id:[A-Za-z0-9_-]+}"),
        ("GET", "/v2/<name>/tags/list"),
        ("GET", "/v2/<name>/referrers/{digest:[^/]+}"),
    ]
    assert [endpoint for endpoint in spec_endpoints if endpoint not in routed] == []


# -- an undeclared route, in a served application


async def _leaked(request: web.Request) -> web.Response:
    return web.json_response({"leaked": True})


def test_route_without_a_declaration_is_refused_even_to_the_administrator(
    tmp_path: Path,
) -> None:
    app = make_app(tmp_path)
    app.router.add_route("GET", "/v2/undeclared", _leaked)
    app.router.add_route("POST", "/v2/{name:.+}/undeclared", _leaked)

    async def run() -> list[tuple[int, str]]:
        answers = []
        async with TestClient(TestServer(app)) as client:
            admin = {"Authorization": basic_header(ADMIN_USER, ADMIN_PASSWORD)}
            issued = await client.get(
                "/service/token",
                params=[("service", "moorage"), ("scope", "repository:some/repo:pull,push")],
                headers=admin,
            )
            assert issued.status == 200
            token = bearer((await issued.json())["token"])
            for method, path, headers in (
                ("GET", "/v2/undeclared", {}),
                ("GET", "/v2/undeclared", token),
                ("POST", "/v2/some/repo/undeclared", {}),
                ("POST", "/v2/some/repo/undeclared", token),
                ("GET", "/v2/", token),  # the same application serves its declared routes
            ):
                response = await client.request(method, path, headers=headers)
                answers.append((response.status, await response.text()))
        return answers

    *undeclared, declared = asyncio.run(run())
    for status, text in undeclared:
        assert status == 403, text
        assert '"DENIED"' in text
        assert "leaked" not in text
    assert declared == (200, "{}")


# -- enforcement on a running server


@dataclass(frozen=True)
class Setup:
    server: RegistryProcess
    repo: str
    manifest: Pushed
    config: Pushed
    altered: bytes  # another valid manifest for the same tag, never stored
    reader: str  # limited-guest in the repository's project: pull only
    stranger: str  # signed in, no role anywhere


def populate(server: RegistryProcess) -> Setup:
    with api_client(server) as admin:
        assert admin.post("/projects", json={"name": "routes"}).status_code == 201
        reader = create_user(admin, "reader")
        stranger = create_user(admin, "stranger")
        set_role(admin, "routes", reader, "limited-guest")
    repo = "routes/app"
    token = fetch_token(server.url, [f"repository:{repo}:pull,push"])
    with httpx.Client(base_url=server.url, headers=bearer(token), timeout=30) as client:
        config, layers = push_image_parts(client, repo)
        document = image_manifest(config, layers)
        manifest = push_manifest(client, repo, encode(document), OCI_MANIFEST, "latest")
    altered = encode({**document, "annotations": {"changed": "yes"}})
    return Setup(server, repo, manifest, config, altered, reader, stranger)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """A server with the defaults: tokens only on /v2."""
    with RegistryProcess(tmp_path_factory.mktemp("routes") / "data").start() as server:
        yield populate(server)


@pytest.fixture(scope="module")
def basic_setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """A server that also accepts Basic credentials on /v2: refusals there are 403, not 401."""
    with RegistryProcess(
        tmp_path_factory.mktemp("routes-basic") / "data", env={"MOORAGE_V2_BASIC_AUTH": "true"}
    ).start() as server:
        yield populate(server)


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # {repo}, {manifest} and {blob} are filled in from the setup
    permission: Permission

    def url(self, setup: Setup) -> str:
        return self.path.format(
            repo=setup.repo, manifest=setup.manifest.digest, blob=setup.config.digest
        )

    def send(self, setup: Setup, headers: dict[str, str] | None = None) -> httpx.Response:
        body = setup.altered if self.method == "PUT" and "/manifests/" in self.path else b""
        content_type = OCI_MANIFEST if body else "application/octet-stream"
        return httpx.request(
            self.method,
            f"{setup.server.url}{self.url(setup)}",
            content=body,
            headers={"Content-Type": content_type, **(headers or {})},
            timeout=30,
        )

    def challenge_scope(self, setup: Setup) -> str | None:
        """The scope a client is told to ask for."""
        if self.permission == CATALOG:
            return "registry:catalog:*"
        actions = {PULL: "pull", PUSH: "pull,push", DELETE: "delete"}.get(self.permission)
        return None if actions is None else f"repository:{setup.repo}:{actions}"


ENDPOINTS = [
    Endpoint("GET", "/v2/", PING),
    Endpoint("HEAD", "/v2/", PING),
    Endpoint("GET", "/v2/_catalog", CATALOG),
    Endpoint("GET", "/v2/{repo}/tags/list", PULL),
    Endpoint("GET", "/v2/{repo}/referrers/{manifest}", PULL),
    Endpoint("GET", "/v2/{repo}/manifests/latest", PULL),
    Endpoint("HEAD", "/v2/{repo}/manifests/latest", PULL),
    Endpoint("GET", "/v2/{repo}/manifests/{manifest}", PULL),
    Endpoint("PUT", "/v2/{repo}/manifests/latest", PUSH),
    Endpoint("DELETE", "/v2/{repo}/manifests/latest", DELETE),
    Endpoint("DELETE", "/v2/{repo}/manifests/{manifest}", DELETE),
    Endpoint("POST", "/v2/{repo}/blobs/uploads/", PUSH),
    Endpoint("GET", "/v2/{repo}/blobs/uploads/session", PUSH),
    Endpoint("PATCH", "/v2/{repo}/blobs/uploads/session", PUSH),
    Endpoint("PUT", "/v2/{repo}/blobs/uploads/session", PUSH),
    Endpoint("DELETE", "/v2/{repo}/blobs/uploads/session", PUSH),
    Endpoint("GET", "/v2/{repo}/blobs/{blob}", PULL),
    Endpoint("HEAD", "/v2/{repo}/blobs/{blob}", PULL),
    Endpoint("DELETE", "/v2/{repo}/blobs/{blob}", DELETE),
]
REPOSITORY_ENDPOINTS = [e for e in ENDPOINTS if e.permission.scope is Scope.REPOSITORY]


def endpoint_id(endpoint: Endpoint) -> str:
    return f"{endpoint.method} {endpoint.path}"


_PARAMETER = re.compile(r"\{\w+(?::([^{}]+))?\}")


def _route_pattern(path: str) -> re.Pattern[str]:
    """The regular expression aiohttp matches a route's path with."""
    parts, position = [], 0
    for match in _PARAMETER.finditer(path):
        parts.append(re.escape(path[position : match.start()]))
        parts.append(f"(?:{match.group(1) or '[^/]+'})")
        position = match.end()
    parts.append(re.escape(path[position:]))
    return re.compile("".join(parts))


def test_the_endpoints_below_cover_every_v2_route_with_its_declared_permission() -> None:
    covered = set()
    for endpoint in ENDPOINTS:
        path = endpoint.path.format(repo="a/b", manifest=DIGEST, blob=DIGEST)
        # The router takes the first route that matches, as aiohttp does.
        route = next(
            r
            for r in ROUTES
            if r.method == endpoint.method and _route_pattern(r.path).fullmatch(path)
        )
        assert route.permission == endpoint.permission, (endpoint, route)
        covered.add((route.method, route.path))
    v2_routes = {(r.method, r.path) for r in ROUTES if r.path.startswith("/v2")}
    assert covered == v2_routes


def assert_untouched(setup: Setup) -> None:
    """A refused request ran no handler: the tag, the manifest and the blob are as pushed."""
    token = fetch_token(setup.server.url, [f"repository:{setup.repo}:pull"])
    with httpx.Client(base_url=setup.server.url, headers=bearer(token), timeout=30) as admin:
        manifest = admin.get(f"/v2/{setup.repo}/manifests/latest")
        assert manifest.status_code == 200, manifest.text
        assert manifest.headers["Docker-Content-Digest"] == setup.manifest.digest
        assert admin.head(f"/v2/{setup.repo}/blobs/{setup.config.digest}").status_code == 200


def assert_challenge(
    setup: Setup, response: httpx.Response, scope: str | None, error: str | None
) -> None:
    assert response.status_code == 401, response.text
    header = response.headers["WWW-Authenticate"]
    challenge = parse_challenge(header)
    assert challenge.get("realm") == f"{setup.server.url}/service/token", header
    assert challenge.get("service") == "moorage", header
    assert challenge.get("scope") == scope, header
    assert challenge.get("error") == error, header
    if response.request.method != "HEAD":
        assert_oci_error(response, 401, "UNAUTHORIZED")


@pytest.mark.parametrize(
    "endpoint",
    [pytest.param(e, id=endpoint_id(e)) for e in ENDPOINTS],
)
def test_anonymous_requests_are_challenged_for_the_scope_of_their_route(
    setup: Setup, endpoint: Endpoint
) -> None:
    response = endpoint.send(setup)
    assert_challenge(setup, response, endpoint.challenge_scope(setup), None)
    assert_untouched(setup)


def test_anonymous_catalog_token_lists_only_public_repositories(setup: Setup) -> None:
    token = fetch_token(setup.server.url, ["registry:catalog:*"], None)
    response = httpx.get(f"{setup.server.url}/v2/_catalog", headers=bearer(token))
    assert response.status_code == 200, response.text
    assert response.json() == {"repositories": []}


@pytest.fixture(scope="module")
def user_tokens(setup: Setup) -> dict[str, str]:
    """Each user's token for everything on the repository and the catalog."""
    everything = [f"repository:{setup.repo}:pull,push,delete", "registry:catalog:*"]
    return {
        user: fetch_token(setup.server.url, everything, (user, PASSWORD))
        for user in (setup.reader, setup.stranger)
    }


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=endpoint_id)
def test_a_token_without_the_scope_gets_a_challenge_for_it(
    setup: Setup, user_tokens: dict[str, str], endpoint: Endpoint
) -> None:
    """The reader's token grants pull only (the token service drops push and delete), and the
    stranger's grants nothing: a route needing more asks for exactly its own scope."""
    for user, allowed in ((setup.reader, {PULL}), (setup.stranger, set())):
        response = endpoint.send(setup, bearer(user_tokens[user]))
        if endpoint.permission.scope is Scope.REGISTRY or endpoint.permission in allowed:
            assert response.status_code == 200, (user, response.text)
        else:
            assert_challenge(setup, response, endpoint.challenge_scope(setup), "insufficient_scope")
        assert_untouched(setup)


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=endpoint_id)
def test_a_signed_in_caller_without_the_right_is_denied(
    basic_setup: Setup, endpoint: Endpoint
) -> None:
    """With Basic credentials on /v2 a refusal is final (403 DENIED): the limited guest passes
    pull routes only, the stranger no repository route."""
    setup = basic_setup
    for user, allowed in ((setup.reader, {PULL}), (setup.stranger, set())):
        response = endpoint.send(setup, {"Authorization": basic_header(user, PASSWORD)})
        if endpoint.permission.scope is Scope.REGISTRY or endpoint.permission in allowed:
            assert response.status_code == 200, (user, response.text)
        else:
            assert response.status_code == 403, (user, response.text)
            assert "WWW-Authenticate" not in response.headers
            if endpoint.method != "HEAD":
                assert_oci_error(response, 403, "DENIED")
        assert_untouched(setup)


def test_a_signed_in_caller_sees_only_readable_repositories_in_the_catalog(
    basic_setup: Setup,
) -> None:
    setup = basic_setup
    for user, visible in ((setup.reader, [setup.repo]), (setup.stranger, [])):
        response = httpx.get(
            f"{setup.server.url}/v2/_catalog",
            headers={"Authorization": basic_header(user, PASSWORD)},
        )
        assert response.status_code == 200, response.text
        assert response.json() == {"repositories": visible}


INVALID_NAMES = ["Bad/Name", "routes/App", "routes//app", "-routes/app", "routes/app/"]


@pytest.mark.parametrize("name", INVALID_NAMES)
def test_invalid_name_is_refused_before_any_authorization(setup: Setup, name: str) -> None:
    """NAME_INVALID, not a challenge: neither anonymity nor a broken token is looked at."""
    for headers in ({}, {"Authorization": "Bearer not-a-token"}):
        for method, path in (
            ("GET", f"/v2/{name}/tags/list"),
            ("PUT", f"/v2/{name}/manifests/latest"),
            ("POST", f"/v2/{name}/blobs/uploads/"),
            ("DELETE", f"/v2/{name}/blobs/{DIGEST}"),
        ):
            response = httpx.request(method, f"{setup.server.url}{path}", headers=headers)
            assert_oci_error(response, 400, "NAME_INVALID")
            assert "WWW-Authenticate" not in response.headers


def test_unrouted_paths_are_answered_without_authorization(setup: Setup) -> None:
    for headers in ({}, {"Authorization": "Bearer not-a-token"}):
        not_found = httpx.get(f"{setup.server.url}/v2/a/b/nowhere", headers=headers)
        assert_oci_error(not_found, 404, "NAME_UNKNOWN")
        not_allowed = httpx.post(f"{setup.server.url}/v2/a/b/tags/list", headers=headers)
        assert_oci_error(not_allowed, 405, "UNSUPPORTED")
        for response in (not_found, not_allowed):
            assert "WWW-Authenticate" not in response.headers


def test_a_broken_token_is_challenged_as_invalid_with_the_route_scope(setup: Setup) -> None:
    response = httpx.get(
        f"{setup.server.url}/v2/{setup.repo}/tags/list",
        headers={"Authorization": "Bearer not-a-token"},
    )
    assert_challenge(setup, response, f"repository:{setup.repo}:pull", "invalid_token")
