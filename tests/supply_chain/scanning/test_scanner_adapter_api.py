"""Registering external scanner adapters: the admin API, the write-only credential, the audit
trail, the SSRF guard, and reading an adapter's metadata (ping) from a fake adapter."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.api import (
    PASSWORD,
    api_client,
    assert_problem,
    create_project,
    create_user,
    eventually,
    set_role,
    unique,
)
from tests.support.fake_adapter import REPORT_V1_1, FakeAdapter
from tests.support.server import RegistryProcess

SCANNERS = "/scanners"


@pytest.fixture
def adapter() -> Iterator[FakeAdapter]:
    fake = FakeAdapter().start()
    yield fake
    fake.stop()


def register(admin: httpx.Client, **fields: Any) -> dict[str, Any]:
    body = {"name": unique("scanner"), "allowPrivateNetwork": True, **fields}
    response = admin.post(SCANNERS, json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def audit_entries(admin: httpx.Client, action: str, name: str) -> list[dict[str, Any]]:
    response = admin.get("/audit-logs", params={"action": action, "limit": 100})
    assert response.status_code == 200, response.text
    return [entry for entry in response.json() if entry["resource"] == f"scanner:{name}"]


def test_an_adapter_is_registered_read_changed_and_removed(
    admin_api: httpx.Client, adapter: FakeAdapter
) -> None:
    created = register(admin_api, url=adapter.url, description="trivy in the cluster")
    name = created["name"]
    assert created["url"] == adapter.url
    assert created["auth"] == "none"
    assert created["hasCredential"] is False
    assert created["allowPrivateNetwork"] is True
    assert created["capabilities"] is None
    assert created["createdBy"] == "admin"

    assert admin_api.get(f"{SCANNERS}/{name}").json() == created
    assert name in [item["name"] for item in admin_api.get(SCANNERS).json()]

    changed = admin_api.patch(f"{SCANNERS}/{name}", json={"timeoutSeconds": 60})
    assert changed.status_code == 200, changed.text
    assert changed.json()["timeoutSeconds"] == 60
    assert changed.json()["description"] == "trivy in the cluster"  # left out: unchanged

    again = {"name": name, "url": adapter.url, "allowPrivateNetwork": True}
    assert_problem(admin_api.post(SCANNERS, json=again), 409)
    assert admin_api.delete(f"{SCANNERS}/{name}").status_code == 204
    assert_problem(admin_api.get(f"{SCANNERS}/{name}"), 404)
    assert_problem(admin_api.delete(f"{SCANNERS}/{name}"), 404)


def test_the_credential_is_write_only_and_never_audited(
    admin_api: httpx.Client, adapter: FakeAdapter
) -> None:
    secret = "cred-" + secrets.token_hex(16)
    created = register(admin_api, url=adapter.url, auth="bearer", credential=secret)
    name = created["name"]
    assert created["hasCredential"] is True
    rotated = "cred-" + secrets.token_hex(16)
    changed = admin_api.patch(f"{SCANNERS}/{name}", json={"credential": rotated})
    assert changed.status_code == 200, changed.text
    responses = [
        admin_api.get(SCANNERS).text,
        admin_api.get(f"{SCANNERS}/{name}").text,
        changed.text,
        str(created),
    ]
    for text in responses:
        assert secret not in text
        assert rotated not in text

    eventually(
        lambda: bool(audit_entries(admin_api, "scanner:update", name)), what="update audited"
    )
    (creation,) = audit_entries(admin_api, "scanner:create", name)
    assert creation["details"]["url"] == adapter.url
    assert creation["details"]["auth"] == "bearer"
    (update,) = audit_entries(admin_api, "scanner:update", name)
    assert update["details"]["changed"] == ["credential"]
    everything = admin_api.get("/audit-logs", params={"limit": 100}).text
    assert secret not in everything
    assert rotated not in everything


def test_each_auth_kind_reaches_the_adapter_as_configured(
    admin_api: httpx.Client, adapter: FakeAdapter
) -> None:
    key = secrets.token_hex(12)
    adapter.behaviour.required_headers = {"X-ScannerAdapter-API-Key": key}
    keyed = register(admin_api, url=adapter.url, auth="api-key", credential=key)
    assert keyed["apiKeyHeader"] == "X-ScannerAdapter-API-Key"
    pinged = admin_api.post(f"{SCANNERS}/{keyed['name']}/ping")
    assert pinged.status_code == 200, pinged.text

    adapter.behaviour.required_headers = {"Authorization": "Basic dHJpdnk6czNjcmV0"}
    basic = register(
        admin_api, url=adapter.url, auth="basic", username="trivy", credential="s3cret"
    )
    assert admin_api.post(f"{SCANNERS}/{basic['name']}/ping").status_code == 200

    adapter.behaviour.required_headers = {"Authorization": "Bearer tok-123"}
    bearer = register(admin_api, url=adapter.url, auth="bearer", credential="tok-123")
    assert admin_api.post(f"{SCANNERS}/{bearer['name']}/ping").status_code == 200
    # Switching to no authentication drops the stored credential; the adapter then refuses.
    none = admin_api.patch(f"{SCANNERS}/{bearer['name']}", json={"auth": "none"})
    assert none.status_code == 200, none.text
    assert none.json()["hasCredential"] is False
    refused = assert_problem(admin_api.post(f"{SCANNERS}/{bearer['name']}/ping"), 424)
    assert "401" in refused["detail"]
    assert "missing or wrong credentials" in refused["detail"]


def test_ping_stores_the_adapters_capabilities(
    admin_api: httpx.Client, adapter: FakeAdapter
) -> None:
    name = register(admin_api, url=adapter.url)["name"]
    pinged = admin_api.post(f"{SCANNERS}/{name}/ping")
    assert pinged.status_code == 200, pinged.text
    body = pinged.json()
    assert body["pingedAt"] is not None
    assert body["capabilities"]["scanner"] == {"name": "Fake", "vendor": "Tests", "version": "1.0"}
    (capability,) = body["capabilities"]["capabilities"]
    assert REPORT_V1_1 in capability["produces_mime_types"]
    assert admin_api.get(f"{SCANNERS}/{name}").json()["capabilities"] == body["capabilities"]
    assert adapter.requests_to("/api/v1/metadata")


def test_private_addresses_need_allow_private_network(
    admin_api: httpx.Client, adapter: FakeAdapter
) -> None:
    # A literal loopback address is refused when it is registered...
    refused = admin_api.post(SCANNERS, json={"name": unique("scanner"), "url": adapter.url})
    body = assert_problem(refused, 422)
    assert "allowPrivateNetwork" in body["detail"]
    for url in ("http://169.254.169.254", "http://10.0.0.8:8080", "http://[::1]:80"):
        assert_problem(admin_api.post(SCANNERS, json={"name": unique("s"), "url": url}), 422)
    # ...and a name that resolves to one is refused when it is contacted: nothing arrives.
    named = register(admin_api, url=f"http://localhost:{adapter.port}", allowPrivateNetwork=False)
    failed = assert_problem(admin_api.post(f"{SCANNERS}/{named['name']}/ping"), 424)
    assert "localhost resolves to 127.0.0.1, a loopback address" in failed["detail"]
    assert adapter.received == []
    # Allowing private networks on that adapter lets the same call through.
    allowed = admin_api.patch(f"{SCANNERS}/{named['name']}", json={"allowPrivateNetwork": True})
    assert allowed.status_code == 200, allowed.text
    assert admin_api.post(f"{SCANNERS}/{named['name']}/ping").status_code == 200
    assert adapter.requests_to("/api/v1/metadata")


@pytest.mark.parametrize(
    "body",
    [
        {"url": "ftp://scanner.example"},
        {"url": "https://user:pw@scanner.example"},
        {"url": "https://scanner.example", "auth": "bearer"},
        {"url": "https://scanner.example", "credential": "x"},
        {"url": "https://scanner.example", "auth": "basic", "credential": "x"},
        {"url": "https://scanner.example", "auth": "api-key", "credential": "x",
         "apiKeyHeader": "Authorization"},
        {"url": "https://scanner.example", "caBundle": "not a certificate"},
        {"url": "https://scanner.example", "timeoutSeconds": 1},
        {"url": "https://scanner.example", "auth": "bearer", "credential": "a\nb"},
        {"url": "https://scanner.example", "name": "Bad Name"},
        {"url": "https://scanner..example"},
        {"url": "https://scanner.example", "caBundle": "-----BEGIN CERTIFICATE-----\u00c9"},
    ],
)  # fmt: skip
def test_invalid_registrations_are_refused(admin_api: httpx.Client, body: dict[str, Any]) -> None:
    response = admin_api.post(SCANNERS, json={"name": unique("scanner"), **body})
    assert_problem(response, 422)


def test_only_administrators_manage_adapters(
    api_registry: RegistryProcess, admin_api: httpx.Client, adapter: FakeAdapter
) -> None:
    name = register(admin_api, url=adapter.url)["name"]
    user = create_user(admin_api)
    project = create_project(admin_api)
    set_role(admin_api, project, user, "project-admin")
    with api_client(api_registry, user, PASSWORD) as client:
        assert_problem(client.get(SCANNERS), 403)
        assert_problem(client.get(f"{SCANNERS}/{name}"), 403)
        assert_problem(client.post(SCANNERS, json={"name": "x", "url": adapter.url}), 403)
        assert_problem(client.patch(f"{SCANNERS}/{name}", json={"timeoutSeconds": 30}), 403)
        assert_problem(client.post(f"{SCANNERS}/{name}/ping"), 403)
        assert_problem(client.delete(f"{SCANNERS}/{name}"), 403)
    with api_client(api_registry, None) as anonymous:
        assert_problem(anonymous.get(SCANNERS), 401)
    assert adapter.received == []
