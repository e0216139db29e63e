"""The client's address behind a load balancer: X-Forwarded-For counts only when the peer is a
trusted proxy, and only its hops written by trusted proxies; a client cannot pick the address
that sign-in throttling and the audit log see by sending the header itself."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable

import httpx
import pytest

from moorage.config import ConfigError, load_settings
from moorage.http.forwarded import client_address
from tests.support.api import api_client
from tests.support.server import RegistryProcess
from tests.support.wait import wait_until

BALANCERS = [ipaddress.ip_network("10.0.0.0/24"), ipaddress.ip_network("fd00::/64")]


@pytest.mark.parametrize(
    ("peer", "headers", "expected"),
    [
        # No trusted peer: the header is the client's own words and ignored.
        ("192.0.2.9", ["198.51.100.1"], "192.0.2.9"),
        # The balancer appended the client's address.
        ("10.0.0.5", ["198.51.100.1"], "198.51.100.1"),
        # A client that sends its own header: only the hop the balancer wrote counts.
        ("10.0.0.5", ["203.0.113.66, 198.51.100.1"], "198.51.100.1"),
        ("10.0.0.5", ["203.0.113.66", "198.51.100.1"], "198.51.100.1"),
        # Two trusted balancers in a row.
        ("10.0.0.5", ["203.0.113.66, 198.51.100.1, 10.0.0.7"], "198.51.100.1"),
        # IPv6 and ports.
        ("fd00::2", ["[2001:db8::1]:4711"], "2001:db8::1"),
        ("10.0.0.5", ["198.51.100.1:5555"], "198.51.100.1"),
        # No header, or only balancers: the innermost balancer is all we know.
        ("10.0.0.5", [], "10.0.0.5"),
        ("10.0.0.5", ["10.0.0.9"], "10.0.0.9"),
        # Garbage stops the walk: nothing left of it is believed.
        ("10.0.0.5", ["198.51.100.1, not-an-address"], "10.0.0.5"),
        ("10.0.0.5", ["unknown"], "10.0.0.5"),
        ("10.0.0.5", [""], "10.0.0.5"),
    ],
)
def test_the_client_is_the_rightmost_untrusted_hop(
    peer: str, headers: list[str], expected: str
) -> None:
    assert client_address(peer, headers, BALANCERS) == expected


def test_trusted_proxies_are_validated_and_split_from_the_environment() -> None:
    settings = load_settings(environ={"MOORAGE_TRUSTED_PROXIES": "10.0.0.0/24, 127.0.0.1"})
    assert settings.trusted_proxies == ["10.0.0.0/24", "127.0.0.1"]
    with pytest.raises(ConfigError, match="trusted_proxies"):
        load_settings(environ={"MOORAGE_TRUSTED_PROXIES": "balancer.internal"})


def _audited_address(node: RegistryProcess, forwarded_for: str) -> str:
    with api_client(node) as admin:
        name = f"fwd-{forwarded_for.replace('.', '-')}"
        created = admin.post(
            "/groups", json={"name": name}, headers={"X-Forwarded-For": forwarded_for}
        )
        assert created.status_code == 201, created.text

        def audited() -> str | None:
            entries = admin.get("/audit-logs", params={"action": "group:create", "limit": 50})
            found = [e for e in entries.json() if name in json.dumps(e)]
            return str(found[0]["clientIp"]) if found else None

        # Entries reach the log within a flush interval.
        return wait_until(audited, 30, "the audit entry")


def test_the_audit_log_names_the_forwarded_client_only_behind_a_trusted_proxy(
    start_registry: Callable[..., RegistryProcess],
) -> None:
    trusting = start_registry(env={"MOORAGE_TRUSTED_PROXIES": "127.0.0.1"})
    assert _audited_address(trusting, "198.51.100.23") == "198.51.100.23"
    plain = start_registry()
    assert _audited_address(plain, "198.51.100.24") == "127.0.0.1"
    assert httpx.get(f"{plain.url}/healthz").status_code == 200
