"""Every credential carries a ceiling that survives every exchange.

A registry token derived from a scoped personal access token, a robot, a refresh token, a client
certificate or a password never does more than that credential may, and registry tokens are for
the registry API only: the management API and the scanner API refuse them. Each credential's
token is replayed against every route of the route table (and each direct credential against
every management route), so a new route is covered the day it is added.

The server speaks HTTPS with optional client certificates, so certificates are one more kind of
credential in the same table.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from moorage.http.access import Scope
from moorage.http.api import API_ROUTES
from moorage.http.routes import ROUTES
from tests.support.api import API, PASSWORD
from tests.support.auth import ADMIN_PASSWORD, ADMIN_USER, RegistryAuth
from tests.support.oci import push_image, token_claims
from tests.support.pki import CertificateAuthority
from tests.support.server import RegistryProcess

# The one repository every limited credential here may pull; the others it must never reach.
CEILING_REPOSITORY = "alpha/app"
OUTSIDE = ("alpha/other", "beta/app")
REPOSITORIES = (CEILING_REPOSITORY, *OUTSIDE)
ASKED = [
    "repository:alpha/app:pull,push,delete",
    "repository:alpha/other:pull,push",
    "repository:beta/app:pull,push,delete",
    "registry:catalog:*",
]
PULL_ONLY_APP = [{"project": "alpha", "repositories": "app", "actions": ["pull"]}]
DENIED = (401, 403)


@dataclass
class World:
    server: RegistryProcess
    tls: ssl.SSLContext
    cert_dir: Path
    pats: dict[str, str]  # alice's and admin's pull-only personal access tokens
    robot: tuple[str, str]  # (name, secret), pull on alpha/app only

    def client(self, *, certificate: str | None = None, **kwargs: object) -> httpx.Client:
        context = self.tls
        if certificate is not None:
            context = ssl.create_default_context(cafile=str(self.cert_dir / "ca.pem"))
            context.load_cert_chain(
                self.cert_dir / f"{certificate}.crt", self.cert_dir / f"{certificate}.key"
            )
        return httpx.Client(base_url=self.server.url, verify=context, timeout=30, **kwargs)  # type: ignore[arg-type]

    def token(self, credentials: tuple[str, str] | None, certificate: str | None = None) -> str:
        params = [("service", "moorage"), *(("scope", scope) for scope in ASKED)]
        with self.client(certificate=certificate) as http:
            response = http.get("/service/token", params=params, auth=credentials)
        assert response.status_code == 200, response.text
        return str(response.json()["token"])

    def oauth(self, **form: str) -> httpx.Response:
        with self.client() as http:
            return http.post("/service/token", data={"service": "moorage", **form})


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("ceiling")
    ca = CertificateAuthority(base)
    server_cert = ca.issue("server", common_name="localhost", server=True)
    ca.issue("carl", common_name="carl")
    (base / "ca.pem").write_bytes(ca.bundle.read_bytes())
    env = {
        "MOORAGE_TLS_CERT": str(server_cert.cert),
        "MOORAGE_TLS_KEY": str(server_cert.key),
        "MOORAGE_TLS_CLIENT_CA": str(ca.bundle),
        "MOORAGE_TLS_CLIENT_AUTH": "optional",
        "MOORAGE_TLS_CLIENT_IDENTITY": "cn",
    }
    server = RegistryProcess(base / "data", env=env, scheme="https").start()
    tls = ssl.create_default_context(cafile=str(ca.bundle))
    world = World(server, tls, base, {}, ("", ""))
    try:
        with world.client(auth=(ADMIN_USER, ADMIN_PASSWORD)) as admin:
            for project in ("alpha", "beta"):
                assert admin.post(f"{API}/projects", json={"name": project}).status_code == 201
            for user in ("alice", "carl"):
                created = admin.post(f"{API}/users", json={"username": user, "password": PASSWORD})
                assert created.status_code == 201, created.text
            # alice administers both projects: only her token's scopes limit her.
            for project in ("alpha", "beta"):
                member = f"{API}/projects/{project}/members/user/alice"
                assert admin.put(member, json={"role": "project-admin"}).status_code == 200
            # carl signs in with a certificate and may only pull in alpha.
            carl = f"{API}/projects/alpha/members/user/carl"
            assert admin.put(carl, json={"role": "limited-guest"}).status_code == 200
            robot = admin.post(
                f"{API}/projects/alpha/robots",
                json={"name": "puller", "permissions": PULL_ONLY_APP},
            )
            assert robot.status_code == 201, robot.text
            world.robot = (robot.json()["name"], robot.json()["secret"])
            admin_pat = admin.post(
                f"{API}/users/me/tokens", json={"name": "pull-app", "scopes": PULL_ONLY_APP}
            )
            assert admin_pat.status_code == 201, admin_pat.text
            world.pats["admin"] = admin_pat.json()["token"]
        with world.client(auth=("alice", PASSWORD)) as alice:
            alice_pat = alice.post(
                f"{API}/users/me/tokens", json={"name": "pull-app", "scopes": PULL_ONLY_APP}
            )
            assert alice_pat.status_code == 201, alice_pat.text
            world.pats["alice"] = alice_pat.json()["token"]
        with world.client(auth=RegistryAuth()) as v2:
            for repository in REPOSITORIES:
                push_image(v2, repository, "1.0")
        yield world
    finally:
        server.stop()


# -- deriving a token from each kind of credential


def _from_pat(owner: str) -> Callable[[World], str]:
    return lambda world: world.token((owner, world.pats[owner]))


def _from_robot(world: World) -> str:
    return world.token(world.robot)


def _refreshed(world: World, scope: str) -> httpx.Response:
    """Sign in as docker does (alice's scoped token, offline access), then redeem the refresh
    token asking for `scope`."""
    signed_in = world.oauth(
        grant_type="password",
        username="alice",
        password=world.pats["alice"],
        access_type="offline",
        scope="repository:alpha/app:pull",
    )
    assert signed_in.status_code == 200, signed_in.text
    refreshed = world.oauth(
        grant_type="refresh_token", refresh_token=signed_in.json()["refresh_token"], scope=scope
    )
    assert refreshed.status_code == 200, refreshed.text
    return refreshed


def _from_refresh_token(world: World) -> str:
    return str(_refreshed(world, " ".join(ASKED)).json()["access_token"])


def _from_certificate(world: World) -> str:
    return world.token(None, certificate="carl")


def _from_password(world: World) -> str:
    return world.token(("carl", PASSWORD))


# Each credential, how its registry token is obtained, and the repositories it may pull.
CREDENTIALS: dict[str, tuple[Callable[[World], str], frozenset[str]]] = {
    "scoped-pat": (_from_pat("alice"), frozenset({CEILING_REPOSITORY})),
    "administrator-scoped-pat": (_from_pat("admin"), frozenset({CEILING_REPOSITORY})),
    "robot": (_from_robot, frozenset({CEILING_REPOSITORY})),
    "refresh-token-of-scoped-pat": (_from_refresh_token, frozenset({CEILING_REPOSITORY})),
    # carl's role is the ceiling: pull anywhere in alpha, nothing in beta.
    "certificate": (_from_certificate, frozenset({CEILING_REPOSITORY, "alpha/other"})),
    "password": (_from_password, frozenset({CEILING_REPOSITORY, "alpha/other"})),
}


# -- filling in the route table

_PARAMETER = re.compile(r"\{([^}:]+)(?::([^}]*))?\}")
_SAMPLES = {
    "digest": "sha256:" + "0" * 64,
    "reference": "1.0",
    "upload_id": "abcdef",
    "kind": "user",
    "member": "alice",
    "username": "alice",
    "robot": "puller",
    "project": "alpha",
    "scan_id": "abc",
    "gc_run": "gc-20260101000000-0123abcd",
}


def concrete(path: str, repository: str) -> str:
    """The route's path with every parameter filled in (checked against its pattern)."""

    def sample(match: re.Match[str]) -> str:
        name, pattern = match.group(1), match.group(2)
        value = repository if name == "name" else _SAMPLES.get(name, "1")
        assert re.fullmatch(pattern or "[^/]+", value), (path, name, value)
        return value

    return _PARAMETER.sub(sample, path)


def every_request() -> Iterator[tuple[str, str, object]]:
    """(method, path, route) for every route; repository routes once per repository."""
    for route in (*ROUTES, *API_ROUTES):
        names = REPOSITORIES if "{name" in route.path else ("-",)
        for repository in names:
            yield route.method, concrete(route.path, repository), route


def _repository_of(path: str) -> str | None:
    for repository in REPOSITORIES:
        if f"/{repository}/" in path:
            return repository
    return None


@pytest.mark.parametrize("credential", sorted(CREDENTIALS))
def test_a_registry_token_never_exceeds_its_credential(world: World, credential: str) -> None:
    derive, may_pull = CREDENTIALS[credential]
    token = derive(world)

    # What the token says: never more than pull, never outside the ceiling.
    granted = {
        entry["name"]: set(entry["actions"])
        for entry in token_claims(token)["access"]
        if entry["type"] == "repository"
    }
    assert set(granted) == set(may_pull), granted
    assert all(actions == {"pull"} for actions in granted.values()), granted

    wrong: list[str] = []
    with world.client(headers={"Authorization": f"Bearer {token}"}) as http:
        for method, path, route in every_request():
            response = http.request(method, path)
            repository = _repository_of(path)
            permission = route.permission  # type: ignore[attr-defined]
            if path == "/service/token":
                # A token is never traded for another (GET refuses it, the OAuth2 form ignores
                # the header and wants a grant).
                if response.status_code < 400:
                    wrong.append(f"{method} {path}: {response.status_code}")
                continue
            if not path.startswith("/v2"):
                # The audience of a registry token is the registry API: nothing else takes it.
                expected_denied = permission.scope is not Scope.PUBLIC
            elif permission.scope is Scope.REPOSITORY:
                expected_denied = not (str(permission.action) == "pull" and repository in may_pull)
            else:
                expected_denied = False  # the ping and the (filtered) catalog
            denied = response.status_code in DENIED
            if denied != expected_denied:
                wrong.append(f"{method} {path}: {response.status_code} {response.text[:120]}")
        catalog = http.get("/v2/_catalog")
        assert catalog.status_code == 200, catalog.text
        assert set(catalog.json()["repositories"]) == set(may_pull)
    assert wrong == []


def _direct_credentials(world: World) -> dict[str, dict[str, str]]:
    """Headers of credentials presented directly (no token exchange) to the management API."""
    import base64

    def basic(username: str, secret: str) -> dict[str, str]:
        encoded = base64.b64encode(f"{username}:{secret}".encode()).decode()
        return {"Authorization": f"Basic {encoded}"}

    return {
        "scoped-pat-bearer": {"Authorization": f"Bearer {world.pats['alice']}"},
        "administrator-scoped-pat-bearer": {"Authorization": f"Bearer {world.pats['admin']}"},
        "scoped-pat-basic": basic("alice", world.pats["alice"]),
        "robot-basic": basic(*world.robot),
    }


@pytest.mark.parametrize(
    "credential",
    [
        "scoped-pat-bearer",
        "administrator-scoped-pat-bearer",
        "scoped-pat-basic",
        "robot-basic",
    ],
)
def test_a_limited_credential_reaches_only_its_ceiling_on_the_management_api(
    world: World, credential: str
) -> None:
    """A pull-only credential holds no project or system action at all: every management
    route except the caller's own profile refuses it."""
    headers = _direct_credentials(world)[credential]
    open_to_any_caller = {"public", "ping", "catalog", "authenticated"}
    wrong: list[str] = []
    with world.client(headers=headers) as http:
        for method, path, route in every_request():
            if path.startswith("/v2"):
                continue  # Basic on /v2 is off; the token exchange is tested above
            permission = route.permission  # type: ignore[attr-defined]
            response = http.request(method, path)
            kind = str(permission.action) if permission.scope is Scope.REGISTRY else ""
            expected_denied = not (permission.scope is Scope.PUBLIC or kind in open_to_any_caller)
            if permission.scope is Scope.REPOSITORY:
                repository = _repository_of(path)
                expected_denied = not (
                    str(permission.action) == "pull" and repository == CEILING_REPOSITORY
                )
            denied = response.status_code in DENIED
            if denied != expected_denied:
                wrong.append(f"{method} {path}: {response.status_code} {response.text[:120]}")
    assert wrong == []


# -- the attacks that were reported, as written


def test_a_token_laundered_through_the_token_service_cannot_administer(world: World) -> None:
    for owner in ("alice", "admin"):
        token = world.token((owner, world.pats[owner]))
        with world.client(headers={"Authorization": f"Bearer {token}"}) as http:
            minted = http.post(f"{API}/users/me/tokens", json={"name": "wider"})
            assert minted.status_code == 401, minted.text
            assert "registry API" in minted.json()["detail"]
            assert http.get(f"{API}/projects/alpha/members").status_code == 401
            backdoor = http.post(
                f"{API}/users",
                json={"username": "backdoor", "password": PASSWORD, "admin": True},
            )
            assert backdoor.status_code == 401
    with world.client(auth=(ADMIN_USER, ADMIN_PASSWORD)) as admin:
        assert admin.get(f"{API}/users/backdoor").status_code == 404


def test_a_refresh_token_never_widens_its_credential(world: World) -> None:
    refreshed = _refreshed(
        world, "repository:alpha/app:pull,push,delete repository:beta/app:pull,push"
    )
    assert token_claims(refreshed.json()["access_token"])["access"] == [
        {"type": "repository", "name": "alpha/app", "actions": ["pull"]}
    ]
