"""HTTPS and mutual TLS with certificates made here: who gets in, and who they are."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from moorage.config import load_settings
from moorage.server import tls_context
from tests.support.pki import CertificateAuthority, Issued
from tests.support.server import RegistryProcess


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, object]:
    ca = CertificateAuthority(tmp_path)
    other = CertificateAuthority(tmp_path, "Some Other CA")
    return {
        "ca": ca,
        "server": ca.issue("server", common_name="localhost", server=True),
        "admin": ca.issue("admin", common_name="admin", emails=("admin@example.org",)),
        "nobody": ca.issue("nobody", common_name="nobody"),
        "expired": ca.issue("expired", common_name="admin", expired=True),
        "foreign": other.issue("foreign", common_name="admin"),
    }


def _tls_env(pki: dict[str, object], client_auth: str, identity: str = "cn") -> dict[str, str]:
    server = pki["server"]
    ca = pki["ca"]
    assert isinstance(server, Issued)
    assert isinstance(ca, CertificateAuthority)
    return {
        "MOORAGE_TLS_CERT": str(server.cert),
        "MOORAGE_TLS_KEY": str(server.key),
        "MOORAGE_TLS_CLIENT_CA": str(ca.bundle),
        "MOORAGE_TLS_CLIENT_AUTH": client_auth,
        "MOORAGE_TLS_CLIENT_IDENTITY": identity,
    }


def _client(pki: dict[str, object], who: str | None) -> httpx.Client:
    ca = pki["ca"]
    assert isinstance(ca, CertificateAuthority)
    context = ssl.create_default_context(cafile=str(ca.bundle))
    if who is not None:
        issued = pki[who]
        assert isinstance(issued, Issued)
        context.load_cert_chain(issued.cert, issued.key)
    return httpx.Client(verify=context, timeout=10)


def _start(start_registry: Callable[..., RegistryProcess], env: dict[str, str]) -> RegistryProcess:
    return start_registry(env=env, scheme="https")


def test_required_client_certificates(
    start_registry: Callable[..., RegistryProcess], pki: dict[str, object]
) -> None:
    server = _start(start_registry, _tls_env(pki, "required"))
    for who in (None, "foreign", "expired"):
        with (
            _client(pki, who) as client,
            pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)),
        ):
            client.get(f"{server.url}/v2/")
    with _client(pki, "admin") as client:
        response = client.get(f"{server.url}/v2/")
        # The certificate names the admin account: it is a signed-in caller.
        assert response.status_code == 200
    with _client(pki, "nobody") as client:
        # A valid certificate that names no account is only anonymous.
        assert client.get(f"{server.url}/v2/").status_code == 401


def test_optional_client_certificates(
    start_registry: Callable[..., RegistryProcess], pki: dict[str, object]
) -> None:
    server = _start(start_registry, _tls_env(pki, "optional", identity="san-email"))
    with _client(pki, None) as client:
        assert client.get(f"{server.url}/v2/").status_code == 401
    with _client(pki, "admin") as client:
        assert client.get(f"{server.url}/v2/").status_code == 200
    with (
        _client(pki, "foreign") as client,
        pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)),
    ):
        client.get(f"{server.url}/v2/")


def test_plain_http_is_not_served_on_a_tls_port(
    start_registry: Callable[..., RegistryProcess], pki: dict[str, object]
) -> None:
    server = _start(start_registry, _tls_env(pki, "optional"))
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://{server.host}/v2/", timeout=5)


def test_server_context_refuses_tls_before_1_2(pki: dict[str, object], tmp_path: Path) -> None:
    # A client below TLS 1.2 may not even be buildable against this OpenSSL, so the server's
    # own context is what is checked.
    env = _tls_env(pki, "required")
    settings = load_settings(
        flags={"data_dir": tmp_path},
        environ={k: v for k, v in env.items()},
    )
    context = tls_context(settings)
    assert context is not None
    assert context.minimum_version is ssl.TLSVersion.TLSv1_2
    assert context.verify_mode is ssl.CERT_REQUIRED
