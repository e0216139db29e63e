"""The client of Harbor's scanner adapter API against a fake adapter on loopback: polling with
Refresh-After, the report, failures, the time limit, the SSRF guard and the pull token it
hands out. The registrations live in a real (SQLite) metadata database."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import jwt
import pytest

from moorage.domain.events import Actor, DomainEvent
from moorage.http.scanner_client import HarborAdapterClient, guard_url
from moorage.metadata.access.iam_store import IamStore
from moorage.metadata.database import make_engine, migrate, sqlite_url
from moorage.metadata.registry.store import MetadataStore
from moorage.metadata.supply_chain.scanner_store import ScannerStore
from moorage.scanning.report import ScanFailedError, ScanTarget
from moorage.services.access.tokens import TokenService, ensure_signing_key
from moorage.services.events import EventBus
from moorage.services.supply_chain.scanner_adapters import (
    AdapterScanner,
    AdapterSettings,
    CredentialBox,
    ScannerAdapterService,
    ScannerRegistry,
    secret_key_source,
)
from moorage.services.threads import Threads
from moorage.vulnerability.severity import Severity
from tests.support.fake_adapter import (
    DOCKER_MANIFEST,
    OCI_MANIFEST,
    REPORT_HARBOR_V1_0,
    REPORT_V1_1,
    FakeAdapter,
    vulnerability,
)
from tests.support.pki import CertificateAuthority

ADMIN = Actor("admin", "user", "127.0.0.1", id=1)
REGISTRY_URL = "https://registry.example"
DIGEST = "sha256:" + "cd" * 32
TARGET = ScanTarget("team/app", DIGEST, OCI_MANIFEST)


@dataclass
class Client:
    service: ScannerAdapterService
    resolver: ScannerRegistry
    tokens: TokenService
    events: list[DomainEvent]

    def register(
        self, url: str, *, allow_private: bool = True, name: str | None = None, **extra: object
    ) -> AdapterScanner:
        name = name or f"fake-{secrets.token_hex(4)}"
        credential = extra.pop("credential", None)
        settings = AdapterSettings(url=url, allow_private_network=allow_private, **extra)  # type: ignore[arg-type]
        self.service.create(ADMIN, name, settings, credential)  # type: ignore[arg-type]
        scanner = self.resolver.external_for(name)
        assert scanner is not None
        return scanner


@pytest.fixture
def client(tmp_path: Path) -> Iterator[Client]:
    engine = make_engine(sqlite_url(tmp_path / "moorage.db"))
    migrate(engine)
    iam = IamStore(engine)
    ensure_signing_key(iam)
    tokens = TokenService(iam, service="moorage", ttl_seconds=300)
    threads = Threads(2)
    events = EventBus()
    seen: list[DomainEvent] = []
    events.subscribe(seen.append)
    service = ScannerAdapterService(
        ScannerStore(engine),
        CredentialBox(secret_key_source(MetadataStore(engine).server_secret)),
        HarborAdapterClient(),
        events,
        threads,
        url_guard=guard_url,
        default_timeout_seconds=60,
    )
    yield Client(service, ScannerRegistry(service, tokens, threads, REGISTRY_URL), tokens, seen)
    threads.shutdown()
    engine.dispose()


@pytest.fixture
def adapter() -> Iterator[FakeAdapter]:
    fake = FakeAdapter().start()
    yield fake
    fake.stop()


def test_pending_polls_then_the_report_becomes_findings(
    client: Client, adapter: FakeAdapter
) -> None:
    adapter.behaviour.pending_polls = 2
    adapter.behaviour.vulnerabilities = [
        vulnerability(
            "CVE-2021-44228",
            "org.apache.logging.log4j:log4j-core",
            "2.14.1",
            "Critical",
            "2.15.0",
            preferred_cvss={"score_v3": 10.0, "vector_v3": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:C"},
        ),
        vulnerability("CVE-2023-0464", "libssl3", "3.0.8-1", "High"),
    ]
    scanner = client.register(adapter.url)
    findings = asyncio.run(scanner.scan(TARGET))

    log4j, ssl = findings
    assert (log4j.id, log4j.package, log4j.installed_version) == (
        "CVE-2021-44228",
        "org.apache.logging.log4j:log4j-core",
        "2.14.1",
    )
    assert (log4j.fixed_version, log4j.severity, log4j.cvss_score) == (
        "2.15.0",
        Severity.CRITICAL,
        10.0,
    )
    assert log4j.links == ("https://advisories.example/CVE-2021-44228",)
    assert (ssl.fixed_version, ssl.severity) == (None, Severity.HIGH)
    # The report was polled until it was ready, with the newest report type.
    polls = adapter.requests_to("/report")
    assert len(polls) == 3
    assert {poll.headers["Accept"] for poll in polls} == {REPORT_V1_1}


def test_the_scan_request_carries_a_short_lived_pull_only_token(
    client: Client, adapter: FakeAdapter
) -> None:
    scanner = client.register(adapter.url)
    asyncio.run(scanner.scan(TARGET))
    (request,) = adapter.scan_requests()
    assert request["registry"]["url"] == REGISTRY_URL
    assert request["artifact"] == {
        "repository": "team/app",
        "digest": DIGEST,
        "mime_type": OCI_MANIFEST,
    }
    scheme, token = request["registry"]["authorization"].split(" ", 1)
    assert scheme == "Bearer"
    verified = client.tokens.verify(token)
    assert verified.access == {("repository", "team/app"): frozenset({"pull"})}
    assert verified.allows("repository", "team/app", "pull")
    assert not verified.allows("repository", "team/app", "push")
    assert not verified.allows("repository", "team/other", "pull")
    assert verified.subject.name == f"scanner-adapter:{scanner.name}"
    assert not verified.subject.is_admin
    claims = jwt.decode(token, options={"verify_signature": False})
    assert 300 <= claims["exp"] - claims["iat"] <= 1800


def test_the_older_report_type_is_used_when_it_is_the_only_one(
    client: Client, adapter: FakeAdapter
) -> None:
    adapter.behaviour.produces = [REPORT_HARBOR_V1_0]
    adapter.behaviour.vulnerabilities = [vulnerability("CVE-1", "zlib", "1.2", "Low")]
    scanner = client.register(adapter.url)
    (finding,) = asyncio.run(scanner.scan(ScanTarget("team/app", DIGEST, DOCKER_MANIFEST)))
    assert finding.severity is Severity.LOW
    assert adapter.requests_to("/report")[0].headers["Accept"] == REPORT_HARBOR_V1_0


def scan_fails(scanner: AdapterScanner, target: ScanTarget = TARGET) -> str:
    with pytest.raises(ScanFailedError) as failed:
        asyncio.run(scanner.scan(target))
    reason = failed.value.reason
    assert reason.startswith(f"scanner adapter {scanner.name}: ")
    return reason


def test_an_error_response_fails_the_scan_with_its_message(
    client: Client, adapter: FakeAdapter
) -> None:
    adapter.behaviour.pending_polls = 1
    adapter.behaviour.fail_message = "failed to pull the image: unauthorized"
    reason = scan_fails(client.register(adapter.url))
    assert "HTTP 500" in reason
    assert "failed to pull the image: unauthorized" in reason


def test_a_report_that_never_comes_fails_the_scan_within_the_time_limit(
    client: Client, adapter: FakeAdapter
) -> None:
    adapter.behaviour.never_ready = True
    reason = scan_fails(client.register(adapter.url, timeout_seconds=5))
    assert "no report within 5 s" in reason
    assert len(adapter.requests_to("/report")) >= 2  # it kept asking, as Refresh-After said


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("text/html", "the report came as 'text/html'"),
        ("application/vnd.scanner.adapter.vuln.report.raw", "not as"),
    ],
)
def test_a_report_of_another_type_fails_the_scan(
    client: Client, adapter: FakeAdapter, content_type: str, expected: str
) -> None:
    adapter.behaviour.report_content_type = content_type
    assert expected in scan_fails(client.register(adapter.url))


def test_a_malformed_report_fails_the_scan(client: Client, adapter: FakeAdapter) -> None:
    adapter.behaviour.vulnerabilities = [{"package": "no id"}]
    assert "malformed vulnerability report" in scan_fails(client.register(adapter.url))


def test_an_adapter_that_cannot_scan_the_artifact_type_is_not_asked(
    client: Client, adapter: FakeAdapter
) -> None:
    adapter.behaviour.consumes = [DOCKER_MANIFEST]
    reason = scan_fails(client.register(adapter.url))
    assert f"does not produce a vulnerability report for {OCI_MANIFEST}" in reason
    assert adapter.scan_requests() == []


def test_an_adapter_without_a_vulnerability_report_type_is_not_asked(
    client: Client, adapter: FakeAdapter
) -> None:
    adapter.behaviour.produces = ["application/vnd.scanner.adapter.vuln.report.raw"]
    scan_fails(client.register(adapter.url))
    assert adapter.scan_requests() == []


def test_an_unreachable_adapter_fails_the_scan(client: Client) -> None:
    fake = FakeAdapter().start()
    url = fake.url
    fake.stop()
    assert "cannot connect" in scan_fails(client.register(url))


def test_a_private_address_is_refused_without_allow_private_network(
    client: Client, adapter: FakeAdapter
) -> None:
    scanner = client.register(f"http://localhost:{adapter.port}", allow_private=False)
    reason = scan_fails(scanner)
    assert "localhost resolves to 127.0.0.1, a loopback address" in reason
    assert adapter.received == []


def test_credentials_reach_the_adapter_but_no_event(client: Client, adapter: FakeAdapter) -> None:
    key = secrets.token_hex(16)
    adapter.behaviour.required_headers = {"X-Api-Key": key}
    scanner = client.register(
        adapter.url, auth="api-key", credential=key, api_key_header="X-Api-Key"
    )
    asyncio.run(scanner.scan(TARGET))
    assert all(request.headers["X-Api-Key"] == key for request in adapter.received)
    assert client.events
    assert all(key not in repr(event) for event in client.events)
    assert key not in repr(client.service.config(scanner.name))


def test_a_removed_adapter_is_no_longer_resolved(client: Client, adapter: FakeAdapter) -> None:
    scanner = client.register(adapter.url)
    assert client.resolver.external_for("no-such-scanner") is None
    client.service.delete(ADMIN, scanner.name)
    assert "not found" in scan_fails(scanner)


def test_refresh_after_is_bounded() -> None:
    from moorage.http.scanner_client import refresh_after

    assert refresh_after("3") == 3.0
    assert refresh_after("0") == 0.2
    assert refresh_after("-5") == 0.2
    assert refresh_after("100000") == 30.0
    assert refresh_after("nan") == 2.0
    assert refresh_after("soon") == 2.0
    assert refresh_after(None) == 2.0


def test_stored_credentials_are_sealed(client: Client, tmp_path: Path) -> None:
    secret = "sealed-" + secrets.token_hex(16)
    client.service.create(
        ADMIN,
        "sealed",
        AdapterSettings(url="https://scanner.example", auth="bearer"),
        secret,
    )
    stored = b"".join(path.read_bytes() for path in tmp_path.glob("moorage.db*"))
    assert b"sealed" in stored  # the adapter's row is there (in the database or its WAL)
    assert secret.encode() not in stored
    assert client.service.config("sealed").headers == {"Authorization": f"Bearer {secret}"}
    assert secret not in repr(client.service.get("sealed"))


def test_tls_is_verified_against_the_registrations_ca_bundle(
    client: Client, tmp_path: Path
) -> None:
    authority = CertificateAuthority(tmp_path)
    adapter = FakeAdapter(authority.issue("adapter", common_name="adapter", server=True)).start()
    try:
        adapter.behaviour.vulnerabilities = [vulnerability("CVE-9", "zlib", "1.2", "High")]
        trusted = client.register(adapter.url, ca_bundle=authority.bundle.read_text())
        assert len(asyncio.run(trusted.scan(TARGET))) == 1
        untrusted = client.register(adapter.url)
        assert "certificate verify failed" in scan_fails(untrusted)
        unverified = client.register(adapter.url, skip_tls_verify=True)
        assert len(asyncio.run(unverified.scan(TARGET))) == 1
    finally:
        adapter.stop()
