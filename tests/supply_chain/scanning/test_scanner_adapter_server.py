"""Harbor's scanner adapter API on a real server, both ways.

- Server side (/scanner/api/v1/): the contract a Harbor-built tool relies on: metadata, scan
  202 + id, report 302 + Refresh-After then 200 in both report types, ErrorResponse bodies,
  authentication and per-repository permissions.
- Client side through the scan flow: a project scanning with a fake adapter on loopback
  (pending then done, failure, time limit), and the pull-only token the adapter is given.
- Moorage's own client against Moorage's own server side: the findings must match the
  built-in scanner's report.

The module has its own server: the vulnerability database belongs to its data directory. Its
images are small Debian 12 file systems; the bundle's advisories name their real packages.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from moorage.domain.events import Actor
from moorage.http.scanner_client import HarborAdapterClient, guard_url
from moorage.metadata.access.iam_store import IamStore
from moorage.metadata.database import make_engine, migrate, sqlite_url
from moorage.metadata.registry.store import MetadataStore
from moorage.metadata.supply_chain.scanner_store import ScannerStore
from moorage.scanning.report import ScanTarget
from moorage.services.access.tokens import TokenService, ensure_signing_key
from moorage.services.events import EventBus
from moorage.services.supply_chain.scanner_adapters import (
    AdapterSettings,
    CredentialBox,
    ScannerAdapterService,
    ScannerRegistry,
    secret_key_source,
)
from moorage.services.threads import Threads
from tests.support.api import (
    PASSWORD,
    api_client,
    create_project,
    create_user,
    eventually,
    set_role,
    unique,
)
from tests.support.auth import ADMIN_PASSWORD, ADMIN_USER, RegistryAuth, basic_header
from tests.support.fake_adapter import FakeAdapter, vulnerability
from tests.support.images import (
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Blob,
    Image,
    LayerBlob,
    Platform,
    image_from_layers,
    push_image,
    sha256_digest,
)
from tests.support.osv import osv_record, write_bundle
from tests.support.server import RegistryProcess

SCANNER_API = "/scanner/api/v1"
METADATA_TYPE = "application/vnd.scanner.adapter.metadata+json; version=1.1"
SCAN_REQUEST = "application/vnd.scanner.adapter.scan.request+json; version=1.1"
SCAN_RESPONSE = "application/vnd.scanner.adapter.scan.response+json; version=1.0"
ERROR_TYPE = "application/vnd.scanner.adapter.error+json; version=1.0"
REPORT_V1_1 = "application/vnd.security.vulnerability.report; version=1.1"
REPORT_HARBOR_V1_0 = "application/vnd.scanner.adapter.vuln.report.harbor+json; version=1.0"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"

ECOSYSTEM = "Debian:12"
HIGH_VECTOR = "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:N/A:N"  # 7.5
LOW_VECTOR = "CVSS:3.1/AV:L/AC:H/PR:H/UI:R/S:U/C:L/I:N/A:N"  # 1.8
OS_RELEASE = b'ID=debian\nVERSION_ID="12"\nVERSION_CODENAME=bookworm\n'
EXPECTED_IDS = {"DSA-9911-1", "TEST-ZLIB-11", "TEST-BASH-11"}


def dpkg_entry(package: str, version: str, source: str | None = None) -> str:
    source_line = f"Source: {source}\n" if source else ""
    return (
        f"Package: {package}\nStatus: install ok installed\nArchitecture: amd64\n"
        f"{source_line}Version: {version}\nDescription: {package}\n"
    )


STATUS = "\n".join(
    [
        dpkg_entry("libssl3", "3.0.11-1~deb12u1", "openssl"),
        dpkg_entry("zlib1g", "1:1.2.13.dfsg-1", "zlib"),
        dpkg_entry("bash", "5.2.15-2+b2"),
        dpkg_entry("tzdata", "2024a-0+deb12u1"),
    ]
)


def debian_image(label: str) -> Image:
    """Debian 12's os-release and a dpkg status database; `label` makes the digest unique."""
    files = {
        "etc/os-release": OS_RELEASE,
        "var/lib/dpkg/status": STATUS.encode(),
        "etc/label": label.encode(),
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for directory in ("etc", "var", "var/lib", "var/lib/dpkg"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
            archive.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1_700_000_000
            archive.addfile(info, io.BytesIO(data))
    tar = buffer.getvalue()
    layer = LayerBlob(Blob(OCI_LAYER_GZIP, gzip.compress(tar, mtime=0)), sha256_digest(tar))
    return image_from_layers(Platform(), [layer], label)


def bundle_records() -> dict[str, list[dict[str, Any]]]:
    return {
        "Debian": [
            osv_record(
                "DSA-9911-1",
                ECOSYSTEM,
                "openssl",
                fixed="3.0.11-1~deb12u2",
                aliases=("CVE-2099-1001",),
                cvss_v3=HIGH_VECTOR,
                summary="openssl: a test advisory",
                references=("https://security-tracker.debian.org/tracker/DSA-9911-1",),
            ),
            osv_record("TEST-ZLIB-11", ECOSYSTEM, "zlib", aliases=("CVE-2099-1002",)),
            osv_record("TEST-BASH-11", ECOSYSTEM, "bash", fixed="5.2.15-2+b3", cvss_v3=LOW_VECTOR),
        ]
    }


# -- the server, its database and the fake adapter


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    root = tmp_path_factory.mktemp("scanner-adapters")
    data_dir = root / "data"
    bundle = write_bundle(root / "osv-bundle.tar.gz", bundle_records())
    command = [sys.executable, "-m", "moorage", "vulndb", "import", str(bundle)]
    imported = subprocess.run(
        [*command, "--data-dir", str(data_dir)], capture_output=True, timeout=300, check=False
    )
    assert imported.returncode == 0, imported.stderr.decode(errors="replace")
    with RegistryProcess(data_dir).start() as process:
        yield process


@pytest.fixture
def admin_api(server: RegistryProcess) -> Iterator[httpx.Client]:
    with api_client(server) as http:
        yield http


@pytest.fixture
def v2(server: RegistryProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60, auth=RegistryAuth()) as http:
        yield http


@pytest.fixture
def scanner_api(server: RegistryProcess) -> Iterator[httpx.Client]:
    """The server side of the adapter API, as the administrator (Basic, like Harbor sends)."""
    with httpx.Client(
        base_url=f"{server.url}{SCANNER_API}",
        headers={"Authorization": basic_header(ADMIN_USER, ADMIN_PASSWORD)},
        timeout=30,
    ) as http:
        yield http


@pytest.fixture
def adapter() -> Iterator[FakeAdapter]:
    fake = FakeAdapter().start()
    yield fake
    fake.stop()


def pushed_image(admin_api: httpx.Client, v2: httpx.Client, scanner: str | None = None) -> str:
    """A fresh project (scanning with `scanner`, or the built-in one) holding a fresh image;
    returns `repository@digest`."""
    project = create_project(admin_api, "scan")
    response = admin_api.put(f"/projects/{project}/scan-settings", json={"scanner": scanner})
    assert response.status_code == 200, response.text
    repository = f"{project}/app"
    digest = push_image(v2, repository, debian_image(unique("image")), "1.0")
    return f"{repository}@{digest}"


def register_adapter(admin_api: httpx.Client, adapter: FakeAdapter, **fields: Any) -> str:
    name = unique("fake")
    body = {"name": name, "url": adapter.url, "allowPrivateNetwork": True, **fields}
    response = admin_api.post("/scanners", json=body)
    assert response.status_code == 201, response.text
    return name


def report_path(artifact: str) -> str:
    repository, digest = artifact.split("@")
    return f"/repositories/{repository}/manifests/{digest}/scan"


def scan_to_completion(admin_api: httpx.Client, artifact: str) -> dict[str, Any]:
    requested = admin_api.post(report_path(artifact))
    assert requested.status_code == 202, requested.text
    return completed_report(admin_api, artifact)


def completed_report(admin_api: httpx.Client, artifact: str) -> dict[str, Any]:
    report: dict[str, Any] = {}

    def completed() -> bool:
        nonlocal report
        response = admin_api.get(report_path(artifact))
        assert response.status_code == 200, response.text
        report = response.json()
        return report["status"] in ("Success", "Error")

    eventually(completed, timeout=120, what=f"the scan of {artifact}")
    return report


def scan_request(server: RegistryProcess, artifact: str, **artifact_fields: Any) -> dict[str, Any]:
    repository, digest = artifact.split("@")
    return {
        "registry": {"url": server.url, "authorization": "Bearer ignored"},
        "artifact": {
            "repository": repository,
            "digest": digest,
            "tag": "1.0",
            "mime_type": OCI_MANIFEST,
            **artifact_fields,
        },
    }


def post_scan(client: httpx.Client, document: object) -> httpx.Response:
    content = document if isinstance(document, bytes) else json.dumps(document).encode()
    return client.post(
        "/scan", content=content, headers={"Content-Type": SCAN_REQUEST, "Accept": SCAN_RESPONSE}
    )


def assert_error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == ERROR_TYPE
    message = response.json()["error"]["message"]
    assert isinstance(message, str)
    assert message
    return message


def poll_report(client: httpx.Client, scan_id: str, accept: str) -> httpx.Response:
    """Ask for the report until it is no longer 302; every 302 says when to ask again."""
    answer: httpx.Response | None = None

    def ready() -> bool:
        nonlocal answer
        answer = client.get(f"/scan/{scan_id}/report", headers={"Accept": accept})
        if answer.status_code == 302:
            assert int(answer.headers["Refresh-After"]) >= 1
            return False
        return True

    eventually(ready, timeout=120, what="the report")
    assert answer is not None
    return answer


# -- the server side


def test_metadata_describes_the_built_in_scanner(scanner_api: httpx.Client) -> None:
    response = scanner_api.get("/metadata")
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == METADATA_TYPE
    document = response.json()
    assert document["scanner"]["name"] == "Moorage"
    assert document["scanner"]["vendor"] == "Moorage"
    assert document["scanner"]["version"]
    (capability,) = document["capabilities"]
    assert capability["type"] == "vulnerability"
    assert set(capability["consumes_mime_types"]) == {
        OCI_MANIFEST,
        DOCKER_MANIFEST,
        OCI_INDEX,
        DOCKER_LIST,
    }
    assert capability["produces_mime_types"] == [REPORT_V1_1, REPORT_HARBOR_V1_0]
    properties = document["properties"]
    assert properties["harbor.scanner-adapter/scanner-type"] == "os-package-vulnerability"
    assert properties["moorage/vulnerability-database-generation"]
    assert "harbor.scanner-adapter/vulnerability-database-updated-at" in properties


def test_a_scan_is_accepted_and_its_report_served_in_both_types(
    server: RegistryProcess,
    admin_api: httpx.Client,
    v2: httpx.Client,
    scanner_api: httpx.Client,
) -> None:
    artifact = pushed_image(admin_api, v2)
    accepted = post_scan(scanner_api, scan_request(server, artifact))
    assert accepted.status_code == 202, accepted.text
    assert accepted.headers["Content-Type"] == SCAN_RESPONSE
    scan_id = accepted.json()["id"]
    assert artifact.split("@")[1] not in scan_id  # opaque

    newer = poll_report(scanner_api, scan_id, REPORT_V1_1)
    assert newer.status_code == 200, newer.text
    assert newer.headers["Content-Type"] == REPORT_V1_1
    older = scanner_api.get(f"/scan/{scan_id}/report", headers={"Accept": REPORT_HARBOR_V1_0})
    assert older.status_code == 200, older.text
    assert older.headers["Content-Type"] == REPORT_HARBOR_V1_0
    assert older.json() == newer.json()  # the same document under both names

    document = newer.json()
    repository, digest = artifact.split("@")
    assert document["artifact"] == {
        "repository": repository,
        "digest": digest,
        "mime_type": OCI_MANIFEST,
    }
    assert document["scanner"]["name"] == "Moorage"
    assert document["severity"] == "High"
    items = {item["id"]: item for item in document["vulnerabilities"]}
    assert set(items) == EXPECTED_IDS
    openssl = items["DSA-9911-1"]
    assert (openssl["package"], openssl["version"], openssl["fix_version"]) == (
        "libssl3",
        "3.0.11-1~deb12u1",
        "3.0.11-1~deb12u2",
    )
    assert openssl["severity"] == "High"
    assert openssl["preferred_cvss"] == {"score_v3": 7.5, "vector_v3": HIGH_VECTOR}
    assert openssl["vendor_attributes"]["aliases"] == ["CVE-2099-1001"]
    assert "https://security-tracker.debian.org/tracker/DSA-9911-1" in openssl["links"]
    assert items["TEST-ZLIB-11"]["fix_version"] == ""
    assert items["TEST-BASH-11"]["severity"] == "Low"
    # The same findings as the registry's own report.
    report = admin_api.get(report_path(artifact)).json()
    assert {finding["id"] for finding in report["findings"]} == EXPECTED_IDS


def test_reports_wait_with_302_and_refresh_after_while_the_scan_runs(
    server: RegistryProcess,
    admin_api: httpx.Client,
    v2: httpx.Client,
    scanner_api: httpx.Client,
    adapter: FakeAdapter,
) -> None:
    # A project scanning with an adapter that holds the scan back until the test lets it go.
    adapter.behaviour.never_ready = True
    adapter.behaviour.vulnerabilities = [vulnerability("CVE-2099-7", "zlib", "1.2.13", "Medium")]
    name = register_adapter(admin_api, adapter)
    artifact = pushed_image(admin_api, v2, scanner=name)
    scan_id = post_scan(scanner_api, scan_request(server, artifact)).json()["id"]

    eventually(lambda: bool(adapter.requests_to("/report")), what="the adapter to be polled")
    waiting = scanner_api.get(f"/scan/{scan_id}/report", headers={"Accept": REPORT_V1_1})
    assert waiting.status_code == 302
    assert waiting.headers["Refresh-After"] == "1"
    assert "Location" not in waiting.headers

    adapter.behaviour.never_ready = False
    done = poll_report(scanner_api, scan_id, REPORT_V1_1)
    assert done.status_code == 200, done.text
    document = done.json()
    assert document["scanner"]["name"] == name
    assert [item["id"] for item in document["vulnerabilities"]] == ["CVE-2099-7"]


def test_bad_scan_requests_get_error_responses(
    server: RegistryProcess,
    admin_api: httpx.Client,
    v2: httpx.Client,
    scanner_api: httpx.Client,
) -> None:
    artifact = pushed_image(admin_api, v2)
    repository = artifact.split("@")[0]
    assert "malformed scan request" in assert_error(post_scan(scanner_api, b"{not json"), 400)
    assert_error(post_scan(scanner_api, {"registry": {"url": server.url}}), 400)
    assert_error(post_scan(scanner_api, {"registry": 1, "artifact": []}), 400)
    wrong_type = scanner_api.post("/scan", content=b"{}", headers={"Content-Type": "text/plain"})
    assert_error(wrong_type, 400)
    too_big = post_scan(scanner_api, b"{" + b" " * (65 * 1024) + b"}")
    assert_error(too_big, 400)
    bad_digest = scan_request(server, artifact, digest="sha256:1234")
    assert "artifact" in assert_error(post_scan(scanner_api, bad_digest), 422)
    bad_name = scan_request(server, artifact, repository="Not/Valid")
    assert_error(post_scan(scanner_api, bad_name), 422)
    missing = scan_request(server, f"{repository}@sha256:{'0' * 64}")
    assert "not stored in this registry" in assert_error(post_scan(scanner_api, missing), 422)
    chart = scan_request(server, artifact, mime_type="application/vnd.cncf.helm.config.v1+json")
    assert_error(post_scan(scanner_api, chart), 501)
    sbom_only = {**scan_request(server, artifact), "enabled_capabilities": [{"type": "sbom"}]}
    assert_error(post_scan(scanner_api, sbom_only), 501)


@pytest.mark.parametrize(
    "url", ["https://harbor.example", "http://127.0.0.2:5000", "http://127.0.0.1:1/"]
)
def test_artifacts_of_other_registries_are_refused(
    url: str,
    server: RegistryProcess,
    admin_api: httpx.Client,
    v2: httpx.Client,
    scanner_api: httpx.Client,
) -> None:
    artifact = pushed_image(admin_api, v2)
    foreign = scan_request(server, artifact)
    foreign["registry"]["url"] = url
    message = assert_error(post_scan(scanner_api, foreign), 422)
    assert "is not this registry" in message
    assert "only artifacts stored here" in message


def test_reports_of_unknown_scans_and_unsupported_types(scanner_api: httpx.Client) -> None:
    for scan_id in ("nope", "W10", "x" * 1100):
        assert_error(
            scanner_api.get(f"/scan/{scan_id}/report", headers={"Accept": REPORT_V1_1}), 404
        )
    assert_error(scanner_api.get("/no-such-endpoint"), 404)


def test_the_scanner_api_needs_authentication_and_per_repository_permissions(
    server: RegistryProcess,
    admin_api: httpx.Client,
    v2: httpx.Client,
    scanner_api: httpx.Client,
) -> None:
    artifact = pushed_image(admin_api, v2)
    project = artifact.split("/")[0]
    document = scan_request(server, artifact)
    scan_id = post_scan(scanner_api, document).json()["id"]
    report = f"/scan/{scan_id}/report"

    with httpx.Client(base_url=f"{server.url}{SCANNER_API}", timeout=30) as anonymous:
        for response in (
            anonymous.get("/metadata"),
            post_scan(anonymous, document),
            anonymous.get(report, headers={"Accept": REPORT_V1_1}),
        ):
            assert_error(response, 401)
            assert response.headers["WWW-Authenticate"].startswith("Basic")
    wrong = {"Authorization": basic_header(ADMIN_USER, "wrong-password")}
    assert_error(httpx.get(f"{server.url}{SCANNER_API}/metadata", headers=wrong), 401)

    outsider, guest, developer = (create_user(admin_api, role) for role in ("out", "gst", "dev"))
    set_role(admin_api, project, guest, "guest")
    set_role(admin_api, project, developer, "developer")

    def as_user(username: str) -> httpx.Client:
        return httpx.Client(
            base_url=f"{server.url}{SCANNER_API}",
            headers={"Authorization": basic_header(username, PASSWORD)},
            timeout=30,
        )

    with as_user(outsider) as client:
        assert client.get("/metadata").status_code == 200  # any signed-in caller
        assert_error(post_scan(client, document), 403)
        assert_error(client.get(report, headers={"Accept": REPORT_V1_1}), 403)
    with as_user(guest) as client:  # read-scan, but not scan
        assert_error(post_scan(client, document), 403)
        assert poll_report(client, scan_id, REPORT_V1_1).status_code == 200
    with as_user(developer) as client:  # scan and read-scan
        accepted = post_scan(client, document)
        assert accepted.status_code == 202, accepted.text
        assert poll_report(client, accepted.json()["id"], REPORT_V1_1).status_code == 200
    # A scan id names its repository: it does not open another repository's reports.
    other = pushed_image(admin_api, v2)
    other_id = post_scan(scanner_api, scan_request(server, other)).json()["id"]
    with as_user(guest) as client:
        assert_error(client.get(f"/scan/{other_id}/report", headers={"Accept": REPORT_V1_1}), 403)


# -- the client side, through the scan flow


def test_a_project_scans_with_its_registered_adapter(
    server: RegistryProcess, admin_api: httpx.Client, v2: httpx.Client, adapter: FakeAdapter
) -> None:
    adapter.behaviour.pending_polls = 2
    adapter.behaviour.vulnerabilities = [
        vulnerability(
            "CVE-2099-2001",
            "libssl3",
            "3.0.11-1~deb12u1",
            "Critical",
            "3.0.11-1~deb12u2",
            preferred_cvss={"score_v3": 9.8, "vector_v3": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U"},
        ),
        vulnerability("CVE-2099-2002", "bash", "5.2.15-2+b2", "Negligible"),
    ]
    name = register_adapter(admin_api, adapter)
    artifact = pushed_image(admin_api, v2, scanner=name)
    report = scan_to_completion(admin_api, artifact)

    assert report["status"] == "Success", report
    assert report["scanner"] == name
    assert report["worstSeverity"] == "Critical"
    findings = {finding["id"]: finding for finding in report["findings"]}
    assert set(findings) == {"CVE-2099-2001", "CVE-2099-2002"}
    ssl = findings["CVE-2099-2001"]
    assert (ssl["package"], ssl["installedVersion"], ssl["fixedVersion"]) == (
        "libssl3",
        "3.0.11-1~deb12u1",
        "3.0.11-1~deb12u2",
    )
    assert (ssl["cvssScore"], ssl["severity"]) == (9.8, "Critical")
    assert ssl["links"] == ["https://advisories.example/CVE-2099-2001"]
    assert findings["CVE-2099-2002"]["severity"] == "Low"
    assert len(adapter.requests_to("/report")) >= 3


def test_the_adapter_gets_a_short_lived_token_that_only_pulls_that_repository(
    server: RegistryProcess, admin_api: httpx.Client, v2: httpx.Client, adapter: FakeAdapter
) -> None:
    name = register_adapter(admin_api, adapter)
    artifact = pushed_image(admin_api, v2, scanner=name)
    repository, digest = artifact.split("@")
    other = pushed_image(admin_api, v2).split("@")[0]
    scan_to_completion(admin_api, artifact)

    (request,) = adapter.scan_requests()
    assert request["registry"]["url"] == server.url
    assert request["artifact"] == {
        "repository": repository,
        "digest": digest,
        "mime_type": OCI_MANIFEST,
    }
    scheme, token = request["registry"]["authorization"].split(" ", 1)
    assert scheme == "Bearer"
    claims = jwt_claims(token)
    assert claims["access"] == [{"type": "repository", "name": repository, "actions": ["pull"]}]
    assert 300 <= claims["exp"] - claims["iat"] <= 1800

    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as adapter_pull:
        manifest = adapter_pull.get(
            f"/v2/{repository}/manifests/{digest}", headers={"Accept": OCI_MANIFEST}
        )
        assert manifest.status_code == 200, manifest.text
        config = manifest.json()["config"]["digest"]
        assert adapter_pull.get(f"/v2/{repository}/blobs/{config}").status_code == 200
        pushed = adapter_pull.put(
            f"/v2/{repository}/manifests/2.0",
            content=manifest.content,
            headers={"Content-Type": OCI_MANIFEST},
        )
        assert pushed.status_code == 401, pushed.text
        assert 'error="insufficient_scope"' in pushed.headers["WWW-Authenticate"]
        upload = adapter_pull.post(f"/v2/{repository}/blobs/uploads/")
        assert upload.status_code == 401
        elsewhere = adapter_pull.get(f"/v2/{other}/tags/list")
        assert elsewhere.status_code == 401
        assert adapter_pull.get("/api/v1/users/me").status_code == 401

    # Its pulls are audited under the adapter's name.
    def pulled_by_adapter() -> bool:
        entries = admin_api.get(
            "/audit-logs", params={"actor": f"scanner-adapter:{name}", "action": "manifest:pulled"}
        )
        assert entries.status_code == 200, entries.text
        return any(entry["resource"] == artifact for entry in entries.json())

    eventually(pulled_by_adapter, what="the adapter's pull in the audit log")


def test_the_adapter_reads_an_image_that_pull_policies_block_while_it_is_unscanned(
    server: RegistryProcess, admin_api: httpx.Client, v2: httpx.Client, adapter: FakeAdapter
) -> None:
    """`blockUnscanned` blocks the image until its scan ends; the adapter scanning it must
    still read it, or it could never be scanned."""
    adapter.behaviour.never_ready = True  # hold the scan in Running until the test is done
    name = register_adapter(admin_api, adapter)
    artifact = pushed_image(admin_api, v2, scanner=name)
    repository, digest = artifact.split("@")
    project = repository.split("/")[0]
    policy = {"enabled": True, "severity": "High", "blockUnscanned": True}
    assert admin_api.put(f"/projects/{project}/vulnerability-policy", json=policy).is_success
    assert admin_api.post(report_path(artifact)).status_code == 202
    eventually(lambda: bool(adapter.scan_requests()), what="the adapter to be asked to scan")

    blocked = v2.get(f"/v2/{repository}/manifests/{digest}", headers={"Accept": OCI_MANIFEST})
    assert blocked.status_code == 403, blocked.text
    assert blocked.json()["errors"][0]["code"] == "DENIED"
    (request,) = adapter.scan_requests()
    token = request["registry"]["authorization"].split(" ", 1)[1]
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as adapter_pull:
        manifest = adapter_pull.get(
            f"/v2/{repository}/manifests/{digest}", headers={"Accept": OCI_MANIFEST}
        )
        assert manifest.status_code == 200, manifest.text

    adapter.behaviour.never_ready = False
    assert completed_report(admin_api, artifact)["status"] == "Success"


def jwt_claims(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


def test_an_adapter_failure_ends_the_report_in_error(
    admin_api: httpx.Client, v2: httpx.Client, adapter: FakeAdapter
) -> None:
    adapter.behaviour.fail_message = "failed to analyse: disk full"
    name = register_adapter(admin_api, adapter)
    artifact = pushed_image(admin_api, v2, scanner=name)
    report = scan_to_completion(admin_api, artifact)
    assert report["status"] == "Error"
    assert report["scanner"] == name
    assert "failed to analyse: disk full" in report["error"]
    assert name in report["error"]


def test_an_adapter_that_never_finishes_ends_the_report_in_error(
    admin_api: httpx.Client, v2: httpx.Client, adapter: FakeAdapter
) -> None:
    adapter.behaviour.never_ready = True
    name = register_adapter(admin_api, adapter, timeoutSeconds=5)
    artifact = pushed_image(admin_api, v2, scanner=name)
    report = scan_to_completion(admin_api, artifact)
    assert report["status"] == "Error"
    assert "no report within 5 s" in report["error"]


def test_a_scanner_in_use_cannot_be_removed_nor_the_registry_registered_as_its_own(
    server: RegistryProcess, admin_api: httpx.Client, v2: httpx.Client, adapter: FakeAdapter
) -> None:
    name = register_adapter(admin_api, adapter)
    pushed_image(admin_api, v2, scanner=name)
    refused = admin_api.delete(f"/scanners/{name}")
    assert refused.status_code == 409, refused.text
    assert "scans with scanner" in refused.json()["detail"]
    own = admin_api.post(
        "/scanners",
        json={"name": unique("self"), "url": f"{server.url}/scanner", "allowPrivateNetwork": True},
    )
    assert own.status_code == 422, own.text
    assert "the registry itself" in own.json()["detail"]


# -- Moorage's client against Moorage's server side


def test_moorages_client_reads_moorages_server_side_like_any_adapter(
    server: RegistryProcess, admin_api: httpx.Client, v2: httpx.Client, tmp_path: Path
) -> None:
    """The server side is driven by the real client code (configured in a database of its own,
    so the registry under test cannot send the request to itself); the findings it brings back
    are those of the registry's own report."""
    artifact = pushed_image(admin_api, v2)
    repository, digest = artifact.split("@")
    builtin = scan_to_completion(admin_api, artifact)
    assert builtin["status"] == "Success"

    engine = make_engine(sqlite_url(tmp_path / "client.db"))
    migrate(engine)
    iam = IamStore(engine)
    ensure_signing_key(iam)
    threads = Threads(2)
    try:
        service = ScannerAdapterService(
            ScannerStore(engine),
            CredentialBox(secret_key_source(MetadataStore(engine).server_secret)),
            HarborAdapterClient(),
            EventBus(),
            threads,
            url_guard=guard_url,
            default_timeout_seconds=120,
        )
        service.create(
            Actor("admin", "user"),
            "moorage",
            AdapterSettings(
                url=f"{server.url}/scanner",
                auth="basic",
                username=ADMIN_USER,
                allow_private_network=True,
            ),
            ADMIN_PASSWORD,
        )
        tokens = TokenService(iam, service="moorage", ttl_seconds=300)
        scanner = ScannerRegistry(service, tokens, threads, server.url).external_for("moorage")
        assert scanner is not None
        findings = asyncio.run(scanner.scan(ScanTarget(repository, digest, OCI_MANIFEST)))
    finally:
        threads.shutdown()
        engine.dispose()

    def key(item: dict[str, Any]) -> tuple[Any, ...]:
        return (
            item["id"],
            tuple(item["aliases"]),
            item["package"],
            item["ecosystem"],
            item["installedVersion"],
            item["fixedVersion"],
            item["severity"],
            item["cvssScore"],
            item["cvssVector"],
            tuple(item["links"]),
            item["purl"],
            item["layer"],
        )

    through_adapter_api = sorted(
        (
            f.id,
            f.aliases,
            f.package,
            f.ecosystem,
            f.installed_version,
            f.fixed_version,
            f.severity.value,
            f.cvss_score,
            f.cvss_vector,
            f.links,
            f.purl,
            f.layer,
        )
        for f in findings
    )
    assert through_adapter_api == sorted(key(item) for item in builtin["findings"])
    assert {f.id for f in findings} == EXPECTED_IDS
