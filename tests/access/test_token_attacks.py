"""Attacks on registry tokens: each forged, stale or misdirected token is refused.

Tokens that need a valid signature (expired, wrong audience) are signed with the server's own
key, read from its database, to prove the claim checks hold on their own.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.support.auth import ADMIN_PASSWORD, ADMIN_USER
from tests.support.backends import query_database, server_database_url
from tests.support.server import RegistryProcess
from tests.support.wait import wait_until


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    with RegistryProcess(tmp_path_factory.mktemp("tokens") / "data").start() as process:
        yield process


def _token(
    server: RegistryProcess, scope: str, auth: tuple[str, str] | None = (ADMIN_USER, ADMIN_PASSWORD)
) -> str:
    response = httpx.get(
        f"{server.url}/service/token", params={"service": "moorage", "scope": scope}, auth=auth
    )
    assert response.status_code == 200, response.text
    return str(response.json()["token"])


def _push_config(server: RegistryProcess, repository: str) -> None:
    token = _token(server, f"repository:{repository}:pull,push")
    digest = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
    response = httpx.post(
        f"{server.url}/v2/{repository}/blobs/uploads/",
        params={"digest": digest},
        content=b"{}",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 201, response.text


def _get(server: RegistryProcess, path: str, token: str) -> httpx.Response:
    return httpx.get(f"{server.url}{path}", headers={"Authorization": f"Bearer {token}"})


def _signing_key(server: RegistryProcess) -> tuple[str, ec.EllipticCurvePrivateKey, bytes]:
    ((kid, private_pem, public_pem),) = query_database(
        server_database_url(server.data_dir),
        "SELECT kid, private_pem, public_pem FROM signing_keys WHERE retired_at IS NULL",
    )
    key = serialization.load_pem_private_key(private_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return kid, key, public_pem


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": "moorage",
        "sub": "admin",
        "aud": "moorage",
        "iat": now,
        "nbf": now - 5,
        "exp": now + 300,
        "access": [{"type": "repository", "name": "attack/app", "actions": ["pull", "push"]}],
        "moorage": {"kind": "user", "id": 1, "admin": True},
    }
    claims.update(overrides)
    return claims


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def repository(server: RegistryProcess) -> str:
    _push_config(server, "attack/app")
    return "attack/app"


BLOB = (
    "/v2/attack/app/blobs/sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
)


def _refused(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["errors"][0]["code"] == "UNAUTHORIZED"
    assert response.headers["WWW-Authenticate"].startswith("Bearer ")


def test_a_genuine_token_works(server: RegistryProcess, repository: str) -> None:
    assert _get(server, BLOB, _token(server, f"repository:{repository}:pull")).status_code == 200


def test_bad_signature(server: RegistryProcess, repository: str) -> None:
    token = _token(server, f"repository:{repository}:pull")
    header, payload, signature = token.split(".")
    flipped = signature[:-4] + ("AAAA" if signature[-4:] != "AAAA" else "BBBB")
    _refused(_get(server, BLOB, f"{header}.{payload}.{flipped}"))


def test_payload_swapped_under_a_valid_signature(server: RegistryProcess, repository: str) -> None:
    token = _token(server, "repository:attack/other:pull")
    header, _, signature = token.split(".")
    _refused(_get(server, BLOB, f"{header}.{_b64(_claims())}.{signature}"))


def test_alg_none(server: RegistryProcess, repository: str) -> None:
    kid, _, _ = _signing_key(server)
    unsigned = f"{_b64({'alg': 'none', 'typ': 'JWT', 'kid': kid})}.{_b64(_claims())}."
    _refused(_get(server, BLOB, unsigned))


def test_hmac_with_the_public_key_as_secret(server: RegistryProcess, repository: str) -> None:
    # The classic algorithm confusion: HS256 keyed with the published public key.
    kid, _, public_pem = _signing_key(server)
    header = _b64({"alg": "HS256", "typ": "JWT", "kid": kid})
    body = _b64(_claims())
    mac = hmac.new(public_pem, f"{header}.{body}".encode(), hashlib.sha256).digest()
    forged = f"{header}.{body}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    _refused(_get(server, BLOB, forged))


def test_a_key_of_another_type(server: RegistryProcess, repository: str) -> None:
    kid, _, _ = _signing_key(server)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(_claims(), rsa_key, algorithm="RS256", headers={"kid": kid})
    _refused(_get(server, BLOB, forged))


def test_an_attacker_key_with_a_made_up_kid(server: RegistryProcess, repository: str) -> None:
    attacker = ec.generate_private_key(ec.SECP256R1())
    forged = jwt.encode(_claims(), attacker, algorithm="ES256", headers={"kid": "ATTACKERKEY"})
    _refused(_get(server, BLOB, forged))


def test_an_attacker_key_with_the_real_kid(server: RegistryProcess, repository: str) -> None:
    kid, _, _ = _signing_key(server)
    attacker = ec.generate_private_key(ec.SECP256R1())
    forged = jwt.encode(_claims(), attacker, algorithm="ES256", headers={"kid": kid})
    _refused(_get(server, BLOB, forged))


def test_an_embedded_jwk_is_not_trusted(server: RegistryProcess, repository: str) -> None:
    attacker = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(attacker.public_key()))
    forged = jwt.encode(_claims(), attacker, algorithm="ES256", headers={"jwk": jwk})
    _refused(_get(server, BLOB, forged))


# Times relative to the moment the token is made (never to when the module was collected).
WRONG_CLAIMS: dict[str, Callable[[int], dict[str, Any]]] = {
    "expired": lambda now: {"exp": now - 60, "iat": now - 400, "nbf": now - 400},
    "not-yet-valid": lambda now: {"nbf": now + 600},
    "wrong-audience": lambda now: {"aud": "another-service"},
    "wrong-issuer": lambda now: {"iss": "someone-else"},
}


@pytest.mark.parametrize("case", sorted(WRONG_CLAIMS))
def test_validly_signed_but_wrong_claims(
    server: RegistryProcess, repository: str, case: str
) -> None:
    kid, key, _ = _signing_key(server)
    overrides = WRONG_CLAIMS[case](int(time.time()))
    token = jwt.encode(_claims(**overrides), key, algorithm="ES256", headers={"kid": kid})
    _refused(_get(server, BLOB, token))


def test_token_for_one_repository_on_another(server: RegistryProcess, repository: str) -> None:
    _push_config(server, "attack/second")
    token = _token(server, f"repository:{repository}:pull")
    other = BLOB.replace("attack/app", "attack/second")
    response = _get(server, other, token)
    assert response.status_code == 401
    assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]
    assert 'scope="repository:attack/second:pull"' in response.headers["WWW-Authenticate"]


def test_pull_token_cannot_push(server: RegistryProcess, repository: str) -> None:
    token = _token(server, f"repository:{repository}:pull")
    response = httpx.post(
        f"{server.url}/v2/{repository}/blobs/uploads/", headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 401


def test_anonymous_asking_for_more_gets_nothing(server: RegistryProcess, repository: str) -> None:
    token = _token(server, f"repository:{repository}:pull,push,delete", auth=None)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["access"] == []
    assert _get(server, BLOB, token).status_code == 401


def test_wrong_password_gets_no_token(server: RegistryProcess) -> None:
    response = httpx.get(
        f"{server.url}/service/token",
        params={"service": "moorage", "scope": "repository:attack/app:pull"},
        auth=(ADMIN_USER, "not-the-password"),
    )
    assert response.status_code == 401


def test_wrong_service_name(server: RegistryProcess) -> None:
    response = httpx.get(
        f"{server.url}/service/token", params={"service": "evil"}, auth=(ADMIN_USER, ADMIN_PASSWORD)
    )
    assert response.status_code == 400


def test_a_token_is_not_a_credential_for_the_token_service(server: RegistryProcess) -> None:
    token = _token(server, "repository:attack/app:pull")
    response = httpx.get(
        f"{server.url}/service/token",
        params={"service": "moorage", "scope": "repository:attack/app:push"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 401


def _api(server: RegistryProcess) -> httpx.Client:
    return httpx.Client(
        base_url=f"{server.url}/api/v1", auth=(ADMIN_USER, ADMIN_PASSWORD), timeout=30
    )


def _refused_within(server: RegistryProcess, token: str, seconds: float = 20.0) -> None:
    """Identity facts are cached for 2 s per worker: poll, with a deadline, for the refusal."""
    wait_until(
        lambda: _get(server, BLOB, token).status_code == 401,
        seconds,
        "the token to stop working",
        interval=0.2,
    )
    _refused(_get(server, BLOB, token))


def test_a_robots_token_dies_when_the_robot_is_revoked(
    server: RegistryProcess, repository: str
) -> None:
    with _api(server) as api:
        created = api.post(
            "/projects/attack/robots",
            json={
                "name": "revoked-bot",
                "permissions": [{"project": "attack", "repositories": "**", "actions": ["pull"]}],
            },
        )
        assert created.status_code == 201, created.text
        robot, secret = created.json()["name"], created.json()["secret"]
        token = _token(server, f"repository:{repository}:pull", auth=(robot, secret))
        assert _get(server, BLOB, token).status_code == 200
        assert api.delete("/projects/attack/robots/revoked-bot").status_code == 204
    _refused_within(server, token)


def test_a_users_token_dies_when_the_user_is_deleted(
    server: RegistryProcess, repository: str
) -> None:
    with _api(server) as api:
        assert (
            api.post(
                "/users", json={"username": "leaver", "password": "a-long-enough-password"}
            ).status_code
            == 201
        )
        member = api.put("/projects/attack/members/user/leaver", json={"role": "guest"})
        assert member.status_code == 200, member.text
        token = _token(
            server, f"repository:{repository}:pull", auth=("leaver", "a-long-enough-password")
        )
        assert _get(server, BLOB, token).status_code == 200
        assert api.delete("/users/leaver").status_code == 204
    _refused_within(server, token)
