"""The scanning flow through a real server: scan on push, the queue, reports, re-matching.

Fixture images (tests/support/scan_images.py) are pushed over HTTP, the vulnerability
database is imported with `moorage vulndb import` while the server runs, and each report is
compared with the image's expected-findings file (tests/data/scanning/<image>.json).
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from moorage.metadata.database import make_engine
from tests.support.api import (
    PASSWORD,
    api_client,
    assert_problem,
    create_project,
    create_user,
    set_role,
    unique,
)
from tests.support.auth import ADMIN_PASSWORD, ADMIN_USER, RegistryAuth
from tests.support.backends import server_database_url
from tests.support.fake_adapter import FakeAdapter, vulnerability
from tests.support.images import (
    Image,
    ImageIndex,
    Platform,
    image_index,
    push_image,
    push_manifest,
    write_layout,
)
from tests.support.osv import run_vulndb, write_bundle
from tests.support.scan_images import (
    BUNDLE_V1,
    FIXTURE_TOOLS,
    bomb,
    bundle_v2,
    cosign_signature,
    diff_ids,
    distroless,
    expected,
    finding_key,
    fixtures,
    multiarch,
    sbom_referrer,
)
from tests.support.server import RegistryProcess
from tests.support.wait import wait_until

# Look for new database generations often, so an import shows within a fraction of a second.
FAST_POLL = {"MOORAGE_VULNDB_POLL_SECONDS": "0.2"}
NO_DATABASE = "no vulnerability database imported"
COMPLETE = ("Success", "Error")


class Scanning:
    """One server, its management API as the administrator, and its registry API."""

    def __init__(self, server: RegistryProcess) -> None:
        self.server = server
        self.api = api_client(server)
        self.v2 = httpx.Client(base_url=server.url, timeout=60, auth=RegistryAuth())

    def close(self) -> None:
        self.api.close()
        self.v2.close()

    def project(self, scan_on_push: bool) -> str:
        project = create_project(self.api, "scan")
        response = self.api.put(
            f"/projects/{project}/scan-settings", json={"scanOnPush": scan_on_push}
        )
        assert response.status_code == 200, response.text
        assert response.json()["scanOnPush"] is scan_on_push
        return project

    def push(self, repository: str, image: Image, tag: str | None = "latest") -> str:
        return push_image(self.v2, repository, image, tag)

    def push_index(self, repository: str, index: ImageIndex, tag: str = "latest") -> str:
        for image in index.images:
            push_image(self.v2, repository, image, None)
        return push_manifest(self.v2, repository, tag, index.index)

    def report(self, repository: str, digest: str) -> httpx.Response:
        return self.api.get(f"/repositories/{repository}/manifests/{digest}/scan")

    def wait(
        self,
        repository: str,
        digest: str,
        until: Callable[[dict[str, Any]], bool],
        what: str,
        timeout: float = 120.0,
    ) -> dict[str, Any]:
        """Poll the report until `until` holds (reports complete in the background)."""
        last: list[Any] = [None]

        def holds() -> bool:
            response = self.report(repository, digest)
            last[0] = response.json() if response.status_code == 200 else response.text
            return response.status_code == 200 and until(last[0])

        wait_until(
            holds, timeout, lambda: f"{repository}@{digest}: {what}; last: {last[0]}", interval=0.1
        )
        return dict(last[0])

    def vulndb(self, *args: str) -> str:
        """`moorage vulndb …` on the server's data directory, while the server runs."""
        return run_vulndb(self.server.data_dir, *args)

    def import_bundle(self, bundle: dict[str, list[dict[str, Any]]], path: Path) -> str:
        """Import a bundle; the id of the generation it made current."""
        output = self.vulndb("import", str(write_bundle(path, bundle)))
        found = re.search(r"generation (\S+) is current", output)
        assert found is not None, output
        return found.group(1)

    def blob_file(self, digest: str) -> Path:
        algorithm, hex_digest = digest.split(":", 1)
        return self.server.data_dir / "storage" / "blobs" / algorithm / hex_digest[:2] / hex_digest


@pytest.fixture
def scanning(start_registry: Callable[..., RegistryProcess]) -> Iterator[Scanning]:
    session = Scanning(start_registry(env=dict(FAST_POLL)))
    yield session
    session.close()


def completed_in(generation: str) -> Callable[[dict[str, Any]], bool]:
    return lambda report: report["status"] == "Success" and report["generation"] == generation


def assert_oracle(report: dict[str, Any], name: str, generation: int = 1) -> None:
    oracle = expected(name, generation)
    assert report["status"] == "Success", report
    found = {finding_key(finding) for finding in report["findings"]}
    assert found == {finding_key(finding) for finding in oracle["findings"]}, name
    ids = {finding["id"] for finding in report["findings"]}
    for absent in oracle.get("absent", []):
        assert absent["id"] not in ids, (name, absent["why"])
    counts = {severity: 0 for severity in report["summary"]}
    for finding in report["findings"]:
        counts[finding["severity"]] += 1
    assert report["summary"] == counts


@pytest.mark.tools(*FIXTURE_TOOLS)
@pytest.mark.parametrize(
    ("workers", "concurrency"),
    [(1, 1), (2, 3)],  # with 2 workers, pushes reach a process that does not run the jobs
)
def test_fixture_images_are_scanned_on_push_matched_on_import_and_rematched_per_generation(
    start_registry: Callable[..., RegistryProcess], tmp_path: Path, workers: int, concurrency: int
) -> None:
    server = start_registry(
        workers=workers, env={**FAST_POLL, "MOORAGE_SCAN_CONCURRENCY": str(concurrency)}
    )
    scanning = Scanning(server)
    try:
        check_fixture_images(scanning, tmp_path)
    finally:
        scanning.close()


def check_fixture_images(scanning: Scanning, tmp_path: Path) -> None:
    project = scanning.project(scan_on_push=True)
    built = fixtures(tmp_path / "fixtures")
    digests = {
        name: scanning.push(f"{project}/{name}", image) for name, image in built.images.items()
    }
    digests["multiarch"] = scanning.push_index(f"{project}/multiarch", built.index)
    children = [image.manifest.digest for image in built.index.images]

    def repository(name: str) -> str:
        return f"{project}/{name}"

    # No database yet: every image is catalogued, and its report says why nothing was matched.
    for name, digest in digests.items():
        report = scanning.wait(
            repository(name), digest, lambda r: r["status"] == "Error", "scan without a database"
        )
        assert NO_DATABASE in report["error"], report
        assert report["generation"] is None
    index_report = scanning.report(repository("multiarch"), digests["multiarch"]).json()
    assert index_report["children"] == children

    # The first import matches every stored inventory.
    first = scanning.import_bundle(BUNDLE_V1, tmp_path / "v1.tar.gz")
    reports = {
        name: scanning.wait(repository(name), digest, completed_in(first), "matching generation 1")
        for name, digest in digests.items()
    }
    for name, report in reports.items():
        assert_oracle(report, name)
    assert reports["languages"]["worstSeverity"] == "Critical"
    assert reports["alpine"]["worstSeverity"] == "High"
    log4j = next(f for f in reports["languages"]["findings"] if f["id"] == "GHSA-jfh8-c2jp-5v3q")
    assert log4j["aliases"] == ["CVE-2021-44228"]
    assert log4j["cvssScore"] == 10.0
    assert log4j["purl"] == "pkg:maven/org.apache.logging.log4j/log4j-core@2.14.1"
    assert log4j["layer"] == diff_ids(built.images["languages"])[0]
    lodash = next(f for f in reports["whiteouts"]["findings"] if f["package"] == "lodash")
    assert lodash["layer"] == diff_ids(built.images["whiteouts"])[1]

    # Without any layer or config left in storage, a full scan would fail: a new generation
    # must re-match from the stored inventories alone.
    stored = {
        blob.digest
        for image in [*built.images.values(), *built.index.images]
        for blob in image.blobs
    }
    for digest in stored:
        assert scanning.blob_file(digest).is_file(), digest
        scanning.blob_file(digest).unlink()
    second = scanning.import_bundle(bundle_v2(), tmp_path / "v2.tar.gz")
    assert second != first
    affected = {"alpine", "languages", "multiarch"}
    after = {
        name: scanning.wait(repository(name), digest, completed_in(second), "generation 2")
        for name, digest in digests.items()
    }
    for name, report in after.items():
        before = reports[name]
        assert report["finishedAt"] == before["finishedAt"], name  # not scanned again
        if name in affected:
            assert_oracle(report, name, generation=2)
            assert report["matchedAt"] > before["matchedAt"], name
        else:
            assert report["findings"] == before["findings"], name
            assert report["matchedAt"] == before["matchedAt"], name
            assert report["rematches"] == before["rematches"], name
    for name in ("alpine", "languages"):
        assert after[name]["rematches"] == reports[name]["rematches"] + 1, name
    amd64, arm64 = (scanning.report(repository("multiarch"), child).json() for child in children)
    assert arm64["rematches"] == 1 + 1  # matched at the first import, re-matched now
    assert amd64["rematches"] == 1

    # Rolling back restores the first generation's results, again from the inventories.
    scanning.vulndb("rollback")
    for name, digest in digests.items():
        report = scanning.wait(repository(name), digest, completed_in(first), "rollback")
        assert_oracle(report, name)

    # The registry kept serving the images whose blobs were removed behind its back.
    assert scanning.v2.get("/v2/").status_code == 200


def test_an_index_is_the_worst_of_its_platforms_and_a_bomb_layer_fails_only_its_scan(
    scanning: Scanning, tmp_path: Path
) -> None:
    project = scanning.project(scan_on_push=True)
    generation = scanning.import_bundle(BUNDLE_V1, tmp_path / "v1.tar.gz")
    good, bad = distroless(Platform("linux", "amd64")), bomb(Platform("linux", "arm64"))
    index = image_index([good, bad])
    repository = f"{project}/mixed"
    digest = scanning.push_index(repository, index)
    report = scanning.wait(repository, digest, lambda r: r["status"] in COMPLETE, "index scan")
    assert report["status"] == "Error"
    assert bad.manifest.digest in report["error"]
    assert "compression ratio" in report["error"]
    assert report["children"] == [good.manifest.digest, bad.manifest.digest]
    assert {f["id"] for f in report["findings"]} == {"TEST-DEB-OPENSSL"}
    good_report = scanning.report(repository, good.manifest.digest).json()
    assert good_report["status"] == "Success"
    assert good_report["generation"] == generation
    bad_report = scanning.report(repository, bad.manifest.digest).json()
    assert bad_report["status"] == "Error"
    assert "compression ratio exceeds" in bad_report["error"]

    # The registry is up and keeps scanning.
    pulled = scanning.v2.get(
        f"/v2/{repository}/manifests/{bad.manifest.digest}",
        headers={"Accept": bad.manifest.media_type},
    )
    assert pulled.status_code == 200
    later = scanning.push(f"{project}/later", distroless(Platform("linux", "s390x")))
    scanning.wait(f"{project}/later", later, completed_in(generation), "a later scan")


def test_scan_on_push_off_scans_only_on_request(scanning: Scanning, tmp_path: Path) -> None:
    project = scanning.project(scan_on_push=False)
    generation = scanning.import_bundle(BUNDLE_V1, tmp_path / "v1.tar.gz")
    repository = f"{project}/app"
    digest = scanning.push(repository, distroless())
    # Pushed with scanning off: a later pushed image in a scanning project is done first.
    other = scanning.project(scan_on_push=True)
    marker = scanning.push(f"{other}/app", distroless(Platform("linux", "ppc64le")))
    scanning.wait(f"{other}/app", marker, completed_in(generation), "the other project's scan")
    problem = assert_problem(scanning.report(repository, digest), 404)
    assert "has not been scanned" in problem["detail"]

    requested = scanning.api.post(f"/repositories/{repository}/manifests/{digest}/scan")
    assert requested.status_code == 202, requested.text
    assert requested.json()["status"] in ("Pending", "Running", "Success")
    report = scanning.wait(repository, digest, completed_in(generation), "requested scan")
    assert_oracle(report, "distroless")


def test_queue_is_deduplicated_and_survives_a_restart(
    start_registry: Callable[..., RegistryProcess], tmp_path: Path
) -> None:
    # A node with no scan workers only queues; the jobs wait in the database.
    queuing = start_registry(env={**FAST_POLL, "MOORAGE_SCAN_CONCURRENCY": "0"})
    session = Scanning(queuing)
    restarted: RegistryProcess | None = None
    try:
        project = session.project(scan_on_push=False)
        image, other = distroless(), distroless(Platform("linux", "arm64"))
        digest = session.push(f"{project}/a", image)
        assert session.push(f"{project}/b", image) == digest
        other_digest = session.push(f"{project}/a", other, "other")

        first = session.api.post(f"/repositories/{project}/a/manifests/{digest}/scan")
        assert first.status_code == 202, first.text
        assert first.json()["status"] == "Pending"
        for again in (f"{project}/a", f"{project}/b"):
            response = session.api.post(f"/repositories/{again}/manifests/{digest}/scan")
            assert response.status_code == 202, response.text
            assert response.json()["status"] == "Pending"
            assert response.json()["createdAt"] == first.json()["createdAt"]

        everything = session.api.post("/scans")
        assert everything.status_code == 202, everything.text
        assert everything.json() == {"queued": 1}  # only `other`: the image is queued already
        assert session.api.post("/scans").json() == {"queued": 0}
        assert queued_jobs(queuing.data_dir) == {digest, other_digest}

        generation = session.import_bundle(BUNDLE_V1, tmp_path / "v1.tar.gz")
        assert queuing.stop() == 0
        session.close()

        restarted = RegistryProcess(queuing.data_dir, env=dict(FAST_POLL), port=queuing.port)
        restarted.start()
        session = Scanning(restarted)
        for repository, pushed in ((f"{project}/a", digest), (f"{project}/a", other_digest)):
            report = session.wait(repository, pushed, completed_in(generation), "after restart")
            assert_oracle(report, "distroless")
        assert queued_jobs(queuing.data_dir) == set()
    finally:
        session.close()
        if restarted is not None and restarted.process is not None:
            restarted.stop()


def queued_jobs(data_dir: Path) -> set[str]:
    """The digests in the persistent queue, read from the server's database."""
    engine = make_engine(server_database_url(data_dir), pool_size=1)
    try:
        with engine.connect() as connection:
            return set(connection.execute(text("SELECT digest FROM scan_jobs")).scalars())
    finally:
        engine.dispose()


def test_signatures_sboms_and_other_artifacts_are_not_scanned(
    scanning: Scanning, tmp_path: Path
) -> None:
    project = scanning.project(scan_on_push=True)
    generation = scanning.import_bundle(BUNDLE_V1, tmp_path / "v1.tar.gz")
    repository = f"{project}/signed"
    image = distroless()
    digest = scanning.push(repository, image)
    tag, signature = cosign_signature(digest)
    signature_digest = scanning.push(repository, signature, tag)
    sbom = sbom_referrer(image.manifest)
    sbom_digest = scanning.push(repository, sbom, None)
    scanning.wait(repository, digest, completed_in(generation), "the image's scan")
    # Pushed after the artifacts into the same scanning project, and done: the artifacts
    # would have been queued first.
    marker = scanning.push(f"{project}/marker", distroless(Platform("linux", "arm64")))
    scanning.wait(f"{project}/marker", marker, completed_in(generation), "a later scan")

    for artifact, reason in ((signature_digest, "cosign"), (sbom_digest, "artifact")):
        assert_problem(scanning.report(repository, artifact), 404)
        refused = scanning.api.post(f"/repositories/{repository}/manifests/{artifact}/scan")
        problem = assert_problem(refused, 422)
        assert reason in problem["detail"]


def test_permissions_and_bad_input(scanning: Scanning, tmp_path: Path) -> None:
    project = scanning.project(scan_on_push=True)
    generation = scanning.import_bundle(BUNDLE_V1, tmp_path / "v1.tar.gz")
    repository = f"{project}/app"
    digest = scanning.push(repository, distroless())
    scanning.wait(repository, digest, completed_in(generation), "the scan")
    report_path = f"/repositories/{repository}/manifests/{digest}/scan"
    settings_path = f"/projects/{project}/scan-settings"

    roles = ("limited-guest", "guest", "developer", "maintainer")
    users = {role: create_user(scanning.api, role) for role in roles}
    for role, user in users.items():
        set_role(scanning.api, project, user, role)
    clients = {role: api_client(scanning.server, user, PASSWORD) for role, user in users.items()}
    try:
        assert clients["limited-guest"].get(report_path).status_code == 403
        assert clients["guest"].get(report_path).status_code == 200
        assert clients["guest"].post(report_path).status_code == 403
        assert clients["developer"].post(report_path).status_code == 202
        assert clients["guest"].get(settings_path).status_code == 200
        assert clients["developer"].put(settings_path, json={}).status_code == 403
        changed = clients["maintainer"].put(settings_path, json={"scanOnPush": False})
        assert changed.status_code == 200, changed.text
        assert changed.json()["updatedBy"] == users["maintainer"]
        assert clients["maintainer"].post("/scans").status_code == 403
    finally:
        for client in clients.values():
            client.close()
    with api_client(scanning.server, None) as anonymous:
        assert anonymous.get(report_path).status_code == 401

    assert_problem(scanning.api.get(f"/repositories/{repository}/manifests/sha256:abc/scan"), 400)
    unknown = "sha256:" + "0" * 64
    assert_problem(scanning.api.get(f"/repositories/{repository}/manifests/{unknown}/scan"), 404)
    assert_problem(scanning.api.post(f"/repositories/{repository}/manifests/{unknown}/scan"), 404)
    # A digest of another repository is not readable through this one.
    elsewhere = f"{project}/other"
    assert_problem(scanning.api.get(f"/repositories/{elsewhere}/manifests/{digest}/scan"), 404)
    refused = scanning.api.put(settings_path, json={"scanner": "not-registered"})
    assert "not registered" in assert_problem(refused, 422)["detail"]
    assert_problem(scanning.api.put(settings_path, json={"scanOnPush": "yes"}), 422)
    assert_problem(scanning.api.get("/projects/no-such-project/scan-settings"), 404)

    def audited(action: str) -> list[dict[str, Any]]:
        response = scanning.api.get("/audit-logs", params={"project": project, "action": action})
        assert response.status_code == 200, response.text
        return list(response.json())

    wait_until(
        lambda: len(audited("scan-settings:update")) >= 2 and audited("scan:request"),
        60,
        "scan settings and requests to be audited",
        interval=0.2,
    )
    (change,) = (e for e in audited("scan-settings:update") if e["actor"] == users["maintainer"])
    assert change["details"] == {"scan_on_push": False, "attach_sbom": False}
    assert change["resource"] == f"project:{project}"


def test_a_job_of_a_killed_server_is_run_again_after_its_lease_and_by_the_projects_adapter(
    start_registry: Callable[..., RegistryProcess],
) -> None:
    adapter = FakeAdapter().start()
    adapter.behaviour.never_ready = True  # the first scan hangs until the server is killed
    env = {**FAST_POLL, "MOORAGE_SCAN_LEASE_SECONDS": "5"}
    first = start_registry(env=env)
    session = Scanning(first)
    restarted: RegistryProcess | None = None
    try:
        name = unique("fake")
        registered = session.api.post(
            "/scanners", json={"name": name, "url": adapter.url, "allowPrivateNetwork": True}
        )
        assert registered.status_code == 201, registered.text
        project = session.project(scan_on_push=False)
        settings = session.api.put(f"/projects/{project}/scan-settings", json={"scanner": name})
        assert settings.status_code == 200, settings.text
        repository = f"{project}/app"
        digest = session.push(repository, distroless())
        requested = session.api.post(f"/repositories/{repository}/manifests/{digest}/scan")
        assert requested.status_code == 202, requested.text
        assert requested.json()["scanner"] == name
        session.wait(repository, digest, lambda r: r["status"] == "Running", "the scan starts")
        wait_until(lambda: adapter.requests_to("/report"), 60, "the adapter to be polled")

        first.kill()  # no chance to give the job back: its lease has to run out
        session.close()
        adapter.behaviour.never_ready = False
        adapter.behaviour.vulnerabilities = [
            vulnerability(
                "CVE-2023-5678", "libssl3", "3.0.11-1~deb12u1", "Medium", "3.0.11-1~deb12u2"
            )
        ]
        restarted = RegistryProcess(first.data_dir, env=env, port=first.port).start()
        session = Scanning(restarted)
        report = session.wait(repository, digest, lambda r: r["status"] in COMPLETE, "retry")
        assert report["status"] == "Success", report
        assert report["scanner"] == name
        assert report["generation"] is None  # the adapter has its own data
        assert [(f["id"], f["package"], f["fixedVersion"]) for f in report["findings"]] == [
            ("CVE-2023-5678", "libssl3", "3.0.11-1~deb12u2")
        ]
        assert len(adapter.scan_requests()) == 2

        # A scan queued for an adapter that is gone by the time it runs ends in Error.
        restarted.stop()
        session.close()
        queuing = {**env, "MOORAGE_SCAN_CONCURRENCY": "0"}
        restarted = RegistryProcess(first.data_dir, env=queuing, port=first.port).start()
        session = Scanning(restarted)
        again = session.api.post(f"/repositories/{repository}/manifests/{digest}/scan")
        assert again.status_code == 202, again.text
        assert (again.json()["status"], again.json()["scanner"]) == ("Pending", name)
        settings = session.api.put(f"/projects/{project}/scan-settings", json={})
        assert settings.status_code == 200, settings.text
        assert session.api.delete(f"/scanners/{name}").status_code == 204
        restarted.stop()
        session.close()
        restarted = RegistryProcess(first.data_dir, env=env, port=first.port).start()
        session = Scanning(restarted)
        failed = session.wait(repository, digest, lambda r: r["status"] == "Error", "no adapter")
        assert failed["error"] == f"scanner {name} is not registered"
    finally:
        session.close()
        adapter.stop()
        if restarted is not None and restarted.process is not None:
            restarted.stop()


def test_an_import_through_the_api_is_matched_at_once(
    start_registry: Callable[..., RegistryProcess], tmp_path: Path
) -> None:
    # The periodic look at the database is an hour away: only the import itself can trigger
    # the re-match.
    server = start_registry(env={"MOORAGE_VULNDB_POLL_SECONDS": "3600"})
    session = Scanning(server)
    try:
        project = session.project(scan_on_push=True)
        repository = f"{project}/app"
        digest = session.push(repository, distroless())
        waiting = session.wait(repository, digest, lambda r: r["status"] == "Error", "no database")
        assert NO_DATABASE in waiting["error"]
        uploaded = session.api.post(
            "/vulnerability-database",
            content=write_bundle(tmp_path / "v1.tar.gz", BUNDLE_V1).read_bytes(),
            headers={"Content-Type": "application/octet-stream"},
        )
        assert uploaded.status_code == 201, uploaded.text
        generation = uploaded.json()["generation"]
        report = session.wait(repository, digest, completed_in(generation), "matching")
        assert_oracle(report, "distroless")
        assert report["finishedAt"] == waiting["finishedAt"]  # matched, not scanned again
    finally:
        session.close()


@pytest.mark.tools("skopeo")
def test_an_index_copied_by_skopeo_is_scanned_on_push(scanning: Scanning, tmp_path: Path) -> None:
    project = scanning.project(scan_on_push=True)
    generation = scanning.import_bundle(BUNDLE_V1, tmp_path / "v1.tar.gz")
    index = multiarch()
    layout = write_layout(tmp_path / "layout", "v1", index)
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    (tmp_path / "home").mkdir()
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(tmp_path / "home"),
        "REGISTRY_AUTH_FILE": str(tmp_path / "auth.json"),
    }
    (tmp_path / "auth.json").write_text("{}")
    repository = f"{project}/multi"
    copied = subprocess.run(
        [
            "skopeo",
            "--policy",
            str(policy),
            "copy",
            "--quiet",
            "--all",
            "--preserve-digests",
            "--dest-tls-verify=false",
            "--dest-creds",
            f"{ADMIN_USER}:{ADMIN_PASSWORD}",
            layout.reference,
            f"docker://{scanning.server.host}/{repository}:v1",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert copied.returncode == 0, copied.stderr
    report = scanning.wait(repository, index.index.digest, completed_in(generation), "index")
    assert report["children"] == [image.manifest.digest for image in index.images]
    assert_oracle(report, "multiarch")
