"""The token service: Docker's GET form and the OAuth2 POST form newer docker clients use."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest

from tests.support.auth import ADMIN_PASSWORD, ADMIN_USER
from tests.support.server import RegistryProcess


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    with RegistryProcess(tmp_path_factory.mktemp("token-service") / "data").start() as process:
        yield process


def _claims(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


def _post(server: RegistryProcess, **form: str) -> httpx.Response:
    return httpx.post(f"{server.url}/service/token", data=form)


def test_password_grant_with_offline_access_returns_a_refresh_token(
    server: RegistryProcess,
) -> None:
    response = _post(
        server,
        grant_type="password",
        username=ADMIN_USER,
        password=ADMIN_PASSWORD,
        service="moorage",
        client_id="docker",
        access_type="offline",
        scope="repository:oauth/app:pull,push",
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["access_token"] == body["token"]
    assert body["expires_in"] == 300
    assert body["refresh_token"]
    assert response.headers["Cache-Control"] == "no-store"
    claims = _claims(body["access_token"])
    assert claims["access"] == [
        {"type": "repository", "name": "oauth/app", "actions": ["pull", "push"]}
    ]
    # The token really works: a push (upload session) into the repository it names.
    upload = httpx.post(
        f"{server.url}/v2/oauth/app/blobs/uploads/",
        headers={"Authorization": f"Bearer {body['access_token']}"},
    )
    assert upload.status_code == 202, upload.text

    refreshed = _post(
        server,
        grant_type="refresh_token",
        refresh_token=body["refresh_token"],
        service="moorage",
        scope="repository:oauth/app:pull",
    )
    assert refreshed.status_code == 200, refreshed.text
    assert _claims(refreshed.json()["access_token"])["access"] == [
        {"type": "repository", "name": "oauth/app", "actions": ["pull"]}
    ]
    # Rotation: the answer carries the family's next refresh token, the first one is used up.
    successor = refreshed.json()["refresh_token"]
    assert successor != body["refresh_token"]


def test_password_grant_without_offline_access_has_no_refresh_token(
    server: RegistryProcess,
) -> None:
    response = _post(server, grant_type="password", username=ADMIN_USER, password=ADMIN_PASSWORD)
    assert response.status_code == 200
    assert "refresh_token" not in response.json()


@pytest.mark.parametrize(
    ("form", "status"),
    [
        (
            {"grant_type": "password", "username": ADMIN_USER, "password": "wrong-password-here"},
            401,
        ),
        ({"grant_type": "refresh_token", "refresh_token": "not-a-refresh-token"}, 401),
        ({"grant_type": "client_credentials"}, 400),
        ({}, 400),
    ],
    ids=["wrong-password", "unknown-refresh-token", "unsupported-grant", "no-grant"],
)
def test_refused_oauth_requests(server: RegistryProcess, form: dict[str, str], status: int) -> None:
    response = _post(server, **form)
    assert response.status_code == status
    assert response.json()["errors"][0]["code"]


def test_get_token_claims_are_docker_shaped(server: RegistryProcess) -> None:
    response = httpx.get(
        f"{server.url}/service/token",
        params=[
            ("service", "moorage"),
            ("scope", "repository:shape/a:pull"),
            ("scope", "repository:shape/b:push,pull"),
            ("scope", "registry:catalog:*"),
            ("scope", "somethingelse:x:y"),
        ],
        auth=(ADMIN_USER, ADMIN_PASSWORD),
    )
    assert response.status_code == 200, response.text
    token = response.json()["token"]
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "ES256"
    assert header["kid"]
    claims = _claims(token)
    assert claims["iss"] == "moorage"
    assert claims["aud"] == "moorage"
    assert claims["sub"] == ADMIN_USER
    assert claims["exp"] - claims["iat"] == 300
    assert {(a["type"], a["name"]): a["actions"] for a in claims["access"]} == {
        ("repository", "shape/a"): ["pull"],
        ("repository", "shape/b"): ["pull", "push"],
        ("registry", "catalog"): ["*"],
    }


def test_an_anonymous_token_opens_the_version_check_only(server: RegistryProcess) -> None:
    response = httpx.get(f"{server.url}/service/token", params={"service": "moorage"})
    assert response.status_code == 200
    token = response.json()["token"]
    assert _claims(token)["access"] == []
    assert (
        httpx.get(f"{server.url}/v2/", headers={"Authorization": f"Bearer {token}"}).status_code
        == 200
    )
    assert httpx.get(f"{server.url}/v2/").status_code == 401


def test_malformed_scopes_and_too_many_scopes(server: RegistryProcess) -> None:
    auth = (ADMIN_USER, ADMIN_PASSWORD)
    bad = httpx.get(
        f"{server.url}/service/token", params={"scope": "repository:UPPER:pull"}, auth=auth
    )
    assert bad.status_code == 400
    many = [("scope", f"repository:many/r{i}:pull") for i in range(40)]
    assert httpx.get(f"{server.url}/service/token", params=many, auth=auth).status_code == 400
