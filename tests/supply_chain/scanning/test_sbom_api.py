"""SBOMs through a real server: scanned on push, downloaded as CycloneDX and SPDX through the
API, attached to the image as a referrer that `GET /v2/<name>/referrers/<digest>` and the oras
client find, not attached twice, and readable only with `read-scan`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from spdx_tools.spdx.parser.jsonlikedict.json_like_dict_parser import JsonLikeDictParser
from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

from tests.support.api import (
    PASSWORD,
    api_client,
    assert_problem,
    create_project,
    create_user,
    set_role,
)
from tests.support.auth import ADMIN_PASSWORD, ADMIN_USER, RegistryAuth
from tests.support.images import fetch_blob, fetch_manifest, push_image, tiny_image
from tests.support.osv import write_bundle
from tests.support.scan_images import BUNDLE_V1, debian, expected
from tests.support.server import RegistryProcess
from tests.support.tools import require_module
from tests.support.wait import wait_until

oras_client = require_module("oras.client")

CYCLONEDX = "application/vnd.cyclonedx+json"
SPDX = "application/spdx+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
LIBSSL3_PURL = (
    "pkg:deb/debian/libssl3@3.0.11-1~deb12u1?arch=amd64&distro=debian-12&upstream=openssl"
)
ATTACHED_ALREADY = "has this SBOM attached already"
_MOORAGE = (sys.executable, "-m", "moorage")


@dataclass
class Scanned:
    """A server whose project scans on push and attaches SBOMs, with one scanned image."""

    server: RegistryProcess
    api: httpx.Client
    v2: httpx.Client
    project: str
    repository: str
    digest: str
    generation: str

    def sbom(self, params: dict[str, str] | None = None, **kwargs: Any) -> httpx.Response:
        return self.api.get(self.sbom_path(self.repository, self.digest), params=params, **kwargs)

    @staticmethod
    def sbom_path(repository: str, digest: str) -> str:
        return f"/repositories/{repository}/manifests/{digest}/sbom"

    def report(self, digest: str) -> httpx.Response:
        return self.api.get(f"/repositories/{self.repository}/manifests/{digest}/scan")

    def wait_report(self, digest: str, until: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        report: dict[str, Any] = _wait(
            lambda: _json_if_ok(self.report(digest)), until, f"the report of {digest}"
        )
        return report

    def sbom_referrers(self, digest: str) -> list[dict[str, Any]]:
        response = self.v2.get(
            f"/v2/{self.repository}/referrers/{digest}", params={"artifactType": CYCLONEDX}
        )
        assert response.status_code == 200, response.text
        assert response.headers["Content-Type"] == OCI_INDEX
        manifests: list[dict[str, Any]] = response.json()["manifests"]
        return manifests


def _json_if_ok(response: httpx.Response) -> Any:
    return response.json() if response.status_code == 200 else None


def _wait(
    read: Callable[[], Any], until: Callable[[Any], bool], what: str, timeout: float = 120
) -> Any:
    last: list[Any] = [None]

    def holds() -> bool:
        last[0] = read()
        return last[0] is not None and until(last[0])

    wait_until(holds, timeout, lambda: f"{what} (last seen: {last[0]!r})", interval=0.1)
    return last[0]


def _import_database(server: RegistryProcess, bundle: Path) -> str:
    result = subprocess.run(
        [*_MOORAGE, "vulndb", "import", str(bundle), "--data-dir", str(server.data_dir)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    found = re.search(r"generation (\S+) is current", result.stdout)
    assert found is not None, result.stdout
    return found.group(1)


@pytest.fixture(scope="module")
def scanned(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scanned]:
    directory = tmp_path_factory.mktemp("sbom")
    server = RegistryProcess(directory / "data", env={"MOORAGE_VULNDB_POLL_SECONDS": "0.2"}).start()
    api = api_client(server)
    v2 = httpx.Client(base_url=server.url, timeout=60, auth=RegistryAuth())
    try:
        project = create_project(api, "sbom")
        response = api.put(
            f"/projects/{project}/scan-settings", json={"scanOnPush": True, "attachSbom": True}
        )
        assert response.status_code == 200, response.text
        assert response.json()["attachSbom"] is True
        generation = _import_database(server, write_bundle(directory / "v1.tar.gz", BUNDLE_V1))
        repository = f"{project}/debian"
        digest = push_image(v2, repository, debian(), "12")
        session = Scanned(server, api, v2, project, repository, digest, generation)
        session.wait_report(digest, lambda report: report["status"] == "Success")
        yield session
    finally:
        api.close()
        v2.close()
        server.stop()


def _validated_cyclonedx(body: bytes) -> dict[str, Any]:
    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(body.decode())
    assert error is None, str(error)[:2000]
    document: dict[str, Any] = json.loads(body)
    return document


def test_the_api_serves_cyclonedx_with_the_scan_findings(scanned: Scanned) -> None:
    response = scanned.sbom()
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == CYCLONEDX
    hex_prefix = scanned.digest.split(":")[1][:12]
    assert response.headers["Content-Disposition"] == (
        f'attachment; filename="debian-{hex_prefix}.cdx.json"'
    )
    bom = _validated_cyclonedx(response.content)
    image = bom["metadata"]["component"]
    assert (image["type"], image["name"], image["version"]) == (
        "container",
        scanned.repository,
        scanned.digest,
    )
    assert image["purl"] == f"pkg:oci/debian@{scanned.digest}"
    components = {component["bom-ref"]: component for component in bom["components"]}
    purls = {component.get("purl") for component in components.values()}
    assert LIBSSL3_PURL in purls
    assert "pkg:pypi/requests@2.28.1" in purls
    (system,) = [c for c in components.values() if c["type"] == "operating-system"]
    assert (system["name"], system["version"]) == ("debian", "12")

    oracle = {finding["id"]: finding for finding in expected("debian")["findings"]}
    vulnerabilities = {v["id"]: v for v in bom["vulnerabilities"]}
    assert set(vulnerabilities) == set(oracle)
    for advisory, vulnerability in vulnerabilities.items():
        affected = [components[target["ref"]]["name"] for target in vulnerability["affects"]]
        assert affected == [oracle[advisory]["package"]]
        (rating,) = vulnerability["ratings"]
        assert rating["severity"] == oracle[advisory]["severity"].lower()
    properties = {p["name"]: p["value"] for p in bom["metadata"]["properties"]}
    assert properties["moorage:scan:database-generation"] == scanned.generation

    composition = scanned.sbom({"vulnerabilities": "false"})
    assert composition.status_code == 200
    assert "vulnerabilities" not in _validated_cyclonedx(composition.content)


def test_the_api_serves_spdx(scanned: Scanned) -> None:
    response = scanned.sbom({"format": "spdx"})
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == SPDX
    assert response.headers["Content-Disposition"].endswith('.spdx.json"')
    document = response.json()
    parser = JsonLikeDictParser()  # type: ignore[no-untyped-call]
    assert validate_full_spdx_document(parser.parse(document)) == []
    assert document["documentNamespace"] == (
        f"https://moorage.invalid/spdx/{scanned.repository}/{scanned.digest}"
    )
    (described,) = document["documentDescribes"]
    relationships = {
        (r["spdxElementId"], r["relationshipType"], r["relatedSpdxElement"])
        for r in document["relationships"]
    }
    assert ("SPDXRef-DOCUMENT", "DESCRIBES", described) in relationships
    packages = {package["SPDXID"]: package for package in document["packages"]}
    assert packages[described]["versionInfo"] == scanned.digest
    libssl = next(p for p in packages.values() if p["name"] == "libssl3")
    assert (described, "CONTAINS", libssl["SPDXID"]) in relationships
    assert libssl["externalRefs"][0]["referenceLocator"] == LIBSSL3_PURL
    # The same image and inventory give the same document, but for its creation time.
    again = scanned.sbom({"format": "spdx"}).json()
    assert again == document


def test_what_cannot_be_served_is_a_problem(scanned: Scanned) -> None:
    assert "format" in json.dumps(assert_problem(scanned.sbom({"format": "xml"}), 400))
    assert_problem(scanned.api.get(scanned.sbom_path(scanned.repository, "sha256:12")), 400)
    # An image of a project that does not scan has no SBOM.
    quiet = create_project(scanned.api, "quiet")
    unscanned = push_image(scanned.v2, f"{quiet}/app", tiny_image("unscanned"), "v1")
    problem = assert_problem(scanned.api.get(scanned.sbom_path(f"{quiet}/app", unscanned)), 404)
    assert "has not been scanned" in problem["detail"]
    # The scanned digest, named through a repository that does not hold it.
    elsewhere = scanned.sbom_path(f"{quiet}/app", scanned.digest)
    assert assert_problem(scanned.api.get(elsewhere), 404)["code"] == "MANIFEST_UNKNOWN"


def _attached(scanned: Scanned) -> dict[str, Any]:
    (descriptor,) = _wait(lambda: scanned.sbom_referrers(scanned.digest), bool, "the attached SBOM")
    result: dict[str, Any] = descriptor
    return result


def test_the_sbom_is_attached_to_the_image_as_a_referrer(scanned: Scanned) -> None:
    descriptor = _attached(scanned)
    assert descriptor["artifactType"] == CYCLONEDX
    annotations = descriptor["annotations"]
    assert annotations["dev.moorage.sbom.generation"] == scanned.generation
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", annotations["org.opencontainers.image.created"]
    )
    manifest = fetch_manifest(scanned.v2, scanned.repository, descriptor["digest"]).json()
    assert manifest["subject"]["digest"] == scanned.digest
    assert manifest["config"]["mediaType"] == "application/vnd.oci.empty.v1+json"
    assert fetch_blob(scanned.v2, scanned.repository, manifest["config"]["digest"]) == b"{}"
    (layer,) = manifest["layers"]
    assert layer["mediaType"] == CYCLONEDX
    attached = _validated_cyclonedx(fetch_blob(scanned.v2, scanned.repository, layer["digest"]))
    served = _validated_cyclonedx(scanned.sbom({"vulnerabilities": "false"}).content)
    assert attached["components"] == served["components"]
    assert attached["metadata"]["component"] == served["metadata"]["component"]
    # The SBOM is an artifact: it is not scanned, and nothing is attached to it.
    assert scanned.report(descriptor["digest"]).status_code == 404
    assert scanned.sbom_referrers(descriptor["digest"]) == []

    # The push is audited like any other, by the system.
    def pushes_by_the_system() -> set[str]:
        entries = scanned.api.get(
            f"/projects/{scanned.project}/audit-logs",
            params={"action": "manifest:pushed", "actor": "moorage"},
        )
        assert entries.status_code == 200, entries.text
        return {entry["resource"] for entry in entries.json() if entry["actorKind"] == "system"}

    resource = f"{scanned.repository}@{descriptor['digest']}"
    _wait(pushes_by_the_system, lambda found: resource in found, "the audited push")


def test_oras_discovers_and_pulls_the_attached_sbom(
    scanned: Scanned, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    descriptor = _attached(scanned)
    monkeypatch.chdir(tmp_path)
    client = oras_client.OrasClient(hostname=scanned.server.host, insecure=True)
    client.login(
        ADMIN_USER,
        ADMIN_PASSWORD,
        hostname=scanned.server.host,
        config_path=str(tmp_path / "docker-config.json"),
    )
    # Discovery as `oras discover` does it: the referrers API, filtered by artifact type.
    discovered = client.do_request(
        f"http://{scanned.server.host}/v2/{scanned.repository}/referrers/{scanned.digest}"
        f"?artifactType={quote(CYCLONEDX, safe='')}",
        "GET",
        headers={"Accept": OCI_INDEX},
    )
    assert discovered.status_code == 200, discovered.text
    found = [m["digest"] for m in discovered.json()["manifests"]]
    assert found == [descriptor["digest"]]

    pulled = client.pull(
        target=f"{scanned.server.host}/{scanned.repository}@{descriptor['digest']}",
        outdir=str(tmp_path / "pulled"),
    )
    assert [Path(path).name for path in pulled] == ["sbom.cdx.json"]
    bom = _validated_cyclonedx(Path(pulled[0]).read_bytes())
    assert bom["metadata"]["component"]["version"] == scanned.digest


def test_a_rescan_attaches_no_second_identical_sbom(scanned: Scanned) -> None:
    first = _attached(scanned)
    before = scanned.wait_report(scanned.digest, lambda report: True)
    response = scanned.api.post(
        f"/repositories/{scanned.repository}/manifests/{scanned.digest}/scan"
    )
    assert response.status_code in (200, 202), response.text
    scanned.wait_report(
        scanned.digest,
        lambda report: (
            report["status"] == "Success" and report["finishedAt"] != before["finishedAt"]
        ),
    )
    # The attach that follows the scan runs in the background; the server says when it found
    # the same SBOM already attached.
    _wait(
        lambda: scanned.server.logs().count(
            f"{scanned.repository}@{scanned.digest} {ATTACHED_ALREADY}"
        ),
        lambda count: count >= 1,
        "the second attach",
    )
    assert scanned.sbom_referrers(scanned.digest) == [first]


def test_reading_an_sbom_needs_read_scan(scanned: Scanned) -> None:
    guest = create_user(scanned.api, "guest")
    set_role(scanned.api, scanned.project, guest, "guest")
    puller = create_user(scanned.api, "puller")
    set_role(scanned.api, scanned.project, puller, "limited-guest")
    path = scanned.sbom_path(scanned.repository, scanned.digest)
    with api_client(scanned.server, guest, PASSWORD) as client:
        response = client.get(path, params={"format": "spdx"})
        assert response.status_code == 200, response.text
    with api_client(scanned.server, puller, PASSWORD) as client:
        assert_problem(client.get(path), 403)
    # ... while the attached SBOM stays readable to anyone who may pull, as every referrer is.
    _attached(scanned)
    auth = RegistryAuth(puller, PASSWORD)
    with httpx.Client(base_url=scanned.server.url, timeout=60, auth=auth) as v2:
        response = v2.get(f"/v2/{scanned.repository}/referrers/{scanned.digest}")
        assert response.status_code == 200, response.text
        assert [m["artifactType"] for m in response.json()["manifests"]] == [CYCLONEDX]
    with api_client(scanned.server, None) as anonymous:
        assert_problem(anonymous.get(path), 401)
