"""Stages, promotion-only projects and promotion with gates, on a real server over HTTP.

The module's server has a small synthetic vulnerability database (the scan gate), so scans of
Debian-like images find DSA-9901-1 in openssl and nothing in a clean image. skopeo pushes and
pulls where a client matters; the promotion record is verified here with `cryptography`
against the keys the registry publishes.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.registry.test_clients_skopeo import (
    Skopeo,
    docker_ref,
    podman_environment,
    tool_environment,
)
from tests.supply_chain.vulnerabilities.test_vulnerability_policy_clients import (
    CLEAN_STATUS,
    OPENSSL_CVE,
    OPENSSL_ID,
    OPENSSL_STATUS,
    bundle_records,
    debian_image,
    scan,
)
from tests.support.api import (
    PASSWORD,
    api_client,
    assert_problem,
    create_project,
    create_user,
    eventually,
    set_role,
)
from tests.support.auth import ADMIN_PASSWORD, ADMIN_USER, RegistryAuth
from tests.support.images import (
    OCI_INDEX,
    OCI_MANIFEST,
    Blob,
    Image,
    busybox_image,
    fetch_blob,
    image_index,
    push_image,
    push_manifest,
    sha256_digest,
    tiny_image,
    write_layout,
)
from tests.support.oci import assert_oci_error
from tests.support.osv import run_vulndb, write_bundle
from tests.support.server import RegistryProcess, command_environment
from tests.support.signing import (
    ec_key,
    legacy_signature,
    public_pem,
    push_legacy_signatures,
    push_referrer,
    signature_tag,
)
from tests.support.tools import require_tool

DSSE = "application/vnd.dsse.envelope.v1+json"
IN_TOTO = "application/vnd.in-toto+json"
ACCEPT = {"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"}
SBOM_TYPE = "application/vnd.example.sbom+json"
PROMOTION_HINT = "accepts only promotions: POST /api/v1/promotions or `moorage promote`"

_labels = iter(range(1_000_000))


# -- servers and clients


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    root = tmp_path_factory.mktemp("promotion")
    data_dir = root / "data"
    run_vulndb(data_dir, "import", str(write_bundle(root / "osv-bundle.tar.gz", bundle_records())))
    with RegistryProcess(data_dir).start() as process:
        yield process


@pytest.fixture
def admin(server: RegistryProcess) -> Iterator[httpx.Client]:
    with api_client(server) as http:
        yield http


@pytest.fixture
def v2(server: RegistryProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60, auth=RegistryAuth()) as http:
        yield http


@pytest.fixture(scope="module")
def skopeo(tmp_path_factory: pytest.TempPathFactory) -> Skopeo:
    require_tool("skopeo")
    return Skopeo(tool_environment(tmp_path_factory.mktemp("promotion-tools")))


def user_v2(server: RegistryProcess, username: str) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=60, auth=RegistryAuth(username, PASSWORD))


# -- helpers


def set_stage(admin: httpx.Client, project: str, stage: str | None, only: bool = False) -> None:
    response = admin.put(f"/projects/{project}/stage", json={"stage": stage, "promotionOnly": only})
    assert response.status_code == 200, response.text


def set_gates(admin: httpx.Client, project: str, *gates: dict[str, Any]) -> dict[str, Any]:
    response = admin.put(f"/projects/{project}/promotion-gates", json={"gates": list(gates)})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def promote(client: httpx.Client, source: str, destination: str, **extra: Any) -> httpx.Response:
    return client.post("/promotions", json={"source": source, "destination": destination, **extra})


def promoted(client: httpx.Client, source: str, destination: str) -> dict[str, Any]:
    response = promote(client, source, destination)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def refusal(client: httpx.Client, source: str, destination: str) -> dict[str, str]:
    """The failing gates of a refused promotion: name -> reason."""
    body = assert_problem(promote(client, source, destination), 422)
    return {error["field"].removeprefix("gates."): error["message"] for error in body["errors"]}


def stages(admin: httpx.Client) -> tuple[str, str, str]:
    """dev -> staging -> prod projects; prod accepts only promotions."""
    dev, staging, prod = (create_project(admin, name) for name in ("dev", "staging", "prod"))
    set_stage(admin, dev, "dev")
    set_stage(admin, staging, "staging")
    set_stage(admin, prod, "prod", only=True)
    return dev, staging, prod


def fresh_image(v2: httpx.Client, repository: str, tag: str = "v1") -> Image:
    image = tiny_image(f"promotion-{repository}-{next(_labels)}")
    push_image(v2, repository, image, tag)
    return image


def audit(admin: httpx.Client, project: str, action: str) -> list[dict[str, Any]]:
    response = admin.get("/audit-logs", params={"project": project, "action": action})
    assert response.status_code == 200, response.text
    entries: list[dict[str, Any]] = response.json()
    return entries


def audited(admin: httpx.Client, project: str, action: str, count: int = 1) -> list[dict[str, Any]]:
    """The project's entries for `action`, once at least `count` were written (in batches)."""
    eventually(lambda: len(audit(admin, project, action)) >= count, what=f"{action} audited")
    return audit(admin, project, action)


def stored_blobs(server: RegistryProcess) -> dict[str, int]:
    """Every blob file in the storage directory, with its size."""
    root = server.data_dir / "storage" / "blobs"
    return {path.name: path.stat().st_size for path in root.rglob("*") if path.is_file()}


def verify_envelope(server: RegistryProcess, envelope: dict[str, Any]) -> dict[str, Any]:
    """Check the DSSE signature with the registry's published key; the statement."""
    keys = httpx.get(f"{server.url}/api/v1/promotions/keys")  # no credentials needed
    assert keys.status_code == 200, keys.text
    by_id = {key["kid"]: key["publicKeyPem"] for key in keys.json()}
    assert envelope["payloadType"] == IN_TOTO
    payload = base64.b64decode(envelope["payload"])
    (signature,) = envelope["signatures"]
    key = serialization.load_pem_public_key(by_id[signature["keyid"]].encode())
    assert isinstance(key, ec.EllipticCurvePublicKey)
    pae = b"DSSEv1 %d %s %d %s" % (len(IN_TOTO), IN_TOTO.encode(), len(payload), payload)
    key.verify(base64.b64decode(signature["sig"]), pae, ec.ECDSA(hashes.SHA256()))
    statement: dict[str, Any] = json.loads(payload)
    return statement


def referrers(v2: httpx.Client, repository: str, digest: str) -> list[dict[str, Any]]:
    response = v2.get(f"/v2/{repository}/referrers/{digest}")
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["manifests"]
    return found


# -- stages and promotion-only projects


def test_stages_are_set_by_administrators_and_audited(
    server: RegistryProcess, admin: httpx.Client
) -> None:
    project = create_project(admin)
    owner = create_user(admin)
    set_role(admin, project, owner, "project-admin")
    with api_client(server, owner, PASSWORD) as own:
        refused = own.put(f"/projects/{project}/stage", json={"stage": "prod"})
        assert refused.status_code == 403
        refused = own.put(f"/projects/{project}/promotion-gates", json={"gates": []})
        assert refused.status_code == 403
        set_stage(admin, project, "prod", only=True)
        seen = own.get(f"/projects/{project}/stage").json()
    assert seen["stage"] == "prod"
    assert seen["promotionOnly"] is True
    assert seen["stageOrder"] == ["dev", "staging", "prod"]
    assert seen["updatedBy"] == ADMIN_USER
    shown = admin.get(f"/projects/{project}").json()
    assert (shown["stage"], shown["promotionOnly"]) == ("prod", True)
    listed = [
        p for p in admin.get("/projects", params={"limit": 100}).json() if p["name"] == project
    ]
    assert listed == [] or (listed[0]["stage"], listed[0]["promotionOnly"]) == ("prod", True)
    bad = admin.put(f"/projects/{project}/stage", json={"stage": "Prod!"})
    assert_problem(bad, 422)
    entry = audited(admin, project, "promotion-stage:update")[-1]
    assert entry["details"]["stage"] == "prod"
    assert entry["details"]["promotion_only"] is True


def test_direct_pushes_into_a_promotion_only_project_are_refused_for_every_role(
    server: RegistryProcess, admin: httpx.Client, v2: httpx.Client
) -> None:
    _, _, prod = stages(admin)
    image = tiny_image(f"direct-{next(_labels)}")
    clients = {"system admin": v2}
    for role in ("developer", "maintainer", "project-admin"):
        username = create_user(admin, role)
        set_role(admin, prod, username, role)
        clients[role] = user_v2(server, username)
    for role, client in clients.items():
        upload = client.post(f"/v2/{prod}/app/blobs/uploads/")
        assert PROMOTION_HINT in assert_oci_error(upload, 403, "DENIED")["message"], role
        monolithic = client.post(
            f"/v2/{prod}/app/blobs/uploads/",
            params={"digest": image.config.digest},
            content=image.config.data,
        )
        assert_oci_error(monolithic, 403, "DENIED")
        manifest = client.put(
            f"/v2/{prod}/app/manifests/v1",
            content=image.manifest.data,
            headers={"Content-Type": OCI_MANIFEST},
        )
        message = assert_oci_error(manifest, 403, "DENIED")["message"]
        assert f"{prod} {PROMOTION_HINT}" in message, role
    for client in clients.values():
        if client is not v2:
            client.close()
    assert v2.get(f"/v2/{prod}/app/tags/list").status_code == 404
    denials = [
        entry
        for entry in audited(admin, prod, "policy:denied", 12)
        if entry["details"]["policy"] == "promotion-only"
    ]
    assert {entry["details"]["point"] for entry in denials} == {"push:blob", "push:manifest"}


def test_skopeo_cannot_push_into_a_promotion_only_project(
    server: RegistryProcess, admin: httpx.Client, skopeo: Skopeo, tmp_path: Path
) -> None:
    _, _, prod = stages(admin)
    layout = write_layout(tmp_path / "layout", "v1", tiny_image(f"skopeo-{next(_labels)}"))
    result = skopeo.attempt(
        *skopeo.copy_args(layout.reference, docker_ref(server, f"{prod}/app", "v1"))
    )
    assert result.returncode != 0
    assert "accepts only promotions" in result.stderr.decode(errors="replace")


def test_break_glass_lets_an_administrator_push_and_is_audited(start_registry: Any) -> None:
    server: RegistryProcess = start_registry(env={"MOORAGE_PROMOTION_BREAK_GLASS": "true"})
    with (
        api_client(server) as admin,
        httpx.Client(base_url=server.url, timeout=60, auth=RegistryAuth()) as v2,
    ):
        prod = create_project(admin, "prod")
        set_stage(admin, prod, "prod", only=True)
        image = fresh_image(v2, f"{prod}/hotfix", "v1")
        developer = create_user(admin, "dev")
        set_role(admin, prod, developer, "maintainer")
        with user_v2(server, developer) as other:
            refused = other.post(f"/v2/{prod}/hotfix/blobs/uploads/")
            assert_oci_error(refused, 403, "DENIED")
        (entry,) = audited(admin, prod, "promotion:break-glass")
        assert entry["actor"] == ADMIN_USER
        assert entry["details"] == {"digest": image.manifest.digest, "tag": "v1"}


# -- promotion


def test_promotion_links_without_copying_and_the_record_verifies(
    server: RegistryProcess,
    admin: httpx.Client,
    v2: httpx.Client,
    skopeo: Skopeo,
    tmp_path: Path,
) -> None:
    dev, staging, prod = stages(admin)
    image = busybox_image(label=f"busybox-{next(_labels)}")
    layout = write_layout(tmp_path / "layout", "v1", image)
    skopeo.copy(layout.reference, docker_ref(server, f"{dev}/app", "v1"))
    digest = image.manifest.digest
    set_gates(admin, staging, {"kind": "source-stage"})

    before = stored_blobs(server)
    body = promoted(admin, f"{dev}/app:v1", f"{staging}/app:rc1")
    after = stored_blobs(server)

    assert body["digest"] == digest
    assert body["source"] == f"{dev}/app:v1"
    assert body["destination"] == f"{staging}/app:rc1"
    assert [gate["passed"] for gate in body["gates"]] == [True]
    # No blob of the image was written again: only the record's own blobs are new.
    added = set(after) - set(before)
    record = v2.get(f"/v2/{staging}/app/manifests/{body['recordDigest']}", headers=ACCEPT).json()
    record_blobs = {record["config"]["digest"], record["layers"][0]["digest"]}
    assert {f"sha256:{name}" for name in added} <= record_blobs
    assert sum(after.values()) - sum(before.values()) == sum(after[n] for n in added)
    for blob in image.blobs:
        assert (
            before[blob.digest.removeprefix("sha256:")]
            == after[blob.digest.removeprefix("sha256:")]
        )

    # The promoted image pulls from the destination with skopeo.
    pulled = tmp_path / "pulled"
    skopeo.copy(docker_ref(server, f"{staging}/app", "rc1"), f"oci:{pulled}:rc1")
    index = json.loads((pulled / "index.json").read_text())
    assert index["manifests"][0]["digest"] == digest

    # The record: signed by the registry, attached as a referrer, naming what moved.
    statement = verify_envelope(server, body["envelope"])
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == "https://moorage.dev/promotion/v1"
    assert statement["subject"] == [
        {"name": f"{staging}/app", "digest": {"sha256": digest.removeprefix("sha256:")}}
    ]
    predicate = statement["predicate"]
    assert predicate["source"] == {"repository": f"{dev}/app", "reference": "v1"}
    assert predicate["destination"] == {"repository": f"{staging}/app", "tag": "rc1"}
    assert predicate["digest"] == digest
    assert predicate["promotedBy"] == {"name": ADMIN_USER, "kind": "user"}
    assert predicate["gates"][0]["kind"] == "source-stage"
    listed = referrers(v2, f"{staging}/app", digest)
    assert [(r["digest"], r["artifactType"]) for r in listed] == [(body["recordDigest"], DSSE)]
    attached = fetch_blob(v2, f"{staging}/app", record["layers"][0]["digest"])
    assert verify_envelope(server, json.loads(attached)) == statement

    # Idempotent: the same digest to the same tag returns the same promotion.
    again = promote(admin, f"{dev}/app@{digest}", f"{staging}/app:rc1")
    assert again.status_code == 200, again.text
    assert again.json()["id"] == body["id"]
    history = admin.get("/promotions", params={"project": staging}).json()
    assert [item["id"] for item in history] == [body["id"]]
    assert history[0]["envelope"] == body["envelope"]

    (entry,) = audited(admin, staging, "promotion:create")
    assert entry["result"] == "success"
    assert entry["details"]["source"] == f"{dev}/app:v1"
    assert entry["details"]["destination"] == f"{staging}/app:rc1"
    assert entry["details"]["digest"] == digest
    assert entry["details"]["gates"][0]["passed"] is True

    # On to prod (promotion-only): a promoted image's own record travels with it.
    set_gates(admin, prod, {"kind": "source-stage"})
    final = promoted(admin, f"{staging}/app:rc1", f"{prod}/app:1.0")
    kinds = {r["digest"] for r in referrers(v2, f"{prod}/app", digest)}
    assert {body["recordDigest"], final["recordDigest"]} <= kinds
    skopeo.copy(docker_ref(server, f"{prod}/app", "1.0"), f"oci:{tmp_path / 'prod'}:1.0")


def test_a_dry_run_evaluates_the_gates_and_changes_nothing(
    admin: httpx.Client, v2: httpx.Client
) -> None:
    dev, staging, _ = stages(admin)
    image = fresh_image(v2, f"{dev}/app")
    set_gates(admin, staging, {"kind": "source-stage"}, {"kind": "age", "maxDays": 1})
    response = promote(admin, f"{dev}/app:v1", f"{staging}/app:v1", dryRun=True)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["dryRun"] is True
    assert body["id"] is None
    assert body["digest"] == image.manifest.digest
    assert [gate["name"] for gate in body["gates"]] == ["source-stage", "age"]
    assert v2.get(f"/v2/{staging}/app/tags/list").status_code == 404


def test_a_failed_promotion_lists_every_failing_gate(admin: httpx.Client, v2: httpx.Client) -> None:
    _, _, prod = stages(admin)
    unstaged = create_project(admin, "nostage")
    image = fresh_image(v2, f"{unstaged}/app")
    set_gates(
        admin,
        prod,
        {"kind": "scan", "severity": "High"},
        {"kind": "signature"},
        {"kind": "source-stage"},
        {"kind": "age", "minHours": 1},
        {"kind": "label", "key": "org.example.qa", "value": "passed"},
        {"kind": "approval", "count": 2, "role": "maintainer"},
    )
    failing = refusal(admin, f"{unstaged}/app:v1", f"{prod}/app:v1")
    assert set(failing) == {"scan", "signature", "source-stage", "age", "label", "approval"}
    assert "has not been scanned" in failing["scan"]
    assert "no trust rule" in failing["signature"]
    assert "accepts promotions from stage staging only" in failing["source-stage"]
    assert "less than 1 h" in failing["age"]
    assert "org.example.qa=passed" in failing["label"]
    assert "0 of 2 approvals" in failing["approval"]
    assert v2.get(f"/v2/{prod}/app/manifests/v1", headers=ACCEPT).status_code == 404
    denied = [e for e in audited(admin, prod, "promotion:create") if e["result"] == "denied"]
    assert denied
    assert denied[-1]["details"]["digest"] == image.manifest.digest


def test_source_stage_gate(admin: httpx.Client, v2: httpx.Client) -> None:
    dev, staging, prod = stages(admin)
    fresh_image(v2, f"{dev}/app")
    set_gates(admin, prod, {"kind": "source-stage"})
    set_gates(admin, staging, {"kind": "source-stage"})
    failing = refusal(admin, f"{dev}/app:v1", f"{prod}/app:v1")
    assert (
        "accepts promotions from stage staging only; the source project has stage dev"
        in (failing["source-stage"])
    )
    passed = promoted(admin, f"{dev}/app:v1", f"{staging}/app:v1")
    assert "right before staging" in passed["gates"][0]["reason"]


def test_age_gate(admin: httpx.Client, v2: httpx.Client) -> None:
    dev, staging, _ = stages(admin)
    fresh_image(v2, f"{dev}/app")
    set_gates(admin, staging, {"kind": "age", "name": "soak", "minHours": 24})
    assert "less than 24 h" in refusal(admin, f"{dev}/app:v1", f"{staging}/app:v1")["soak"]
    set_gates(admin, staging, {"kind": "age", "name": "fresh", "maxDays": 7})
    assert promoted(admin, f"{dev}/app:v1", f"{staging}/app:v1")["gates"][0]["passed"]


def test_label_gate(admin: httpx.Client, v2: httpx.Client) -> None:
    dev, staging, _ = stages(admin)
    image = fresh_image(v2, f"{dev}/app")
    label = json.loads(image.config.data)["config"]["Labels"]["test.label"]
    set_gates(admin, staging, {"kind": "label", "key": "test.label", "value": "other"})
    reason = refusal(admin, f"{dev}/app:v1", f"{staging}/app:v1")["label"]
    assert f"found test.label={label} on the image configuration" in reason
    set_gates(admin, staging, {"kind": "label", "key": "test.label", "value": label})
    assert promoted(admin, f"{dev}/app:v1", f"{staging}/app:v1")["gates"][0]["passed"]


def test_scan_gate_uses_the_destination_allowlist(admin: httpx.Client, v2: httpx.Client) -> None:
    dev, staging, _ = stages(admin)
    vulnerable = debian_image(OPENSSL_STATUS, f"openssl-{next(_labels)}")
    clean = debian_image(CLEAN_STATUS, f"clean-{next(_labels)}")
    push_image(v2, f"{dev}/app", vulnerable, "vulnerable")
    push_image(v2, f"{dev}/app", clean, "clean")
    for image in (vulnerable, clean):
        assert scan(admin, f"{dev}/app", image.manifest.digest)["status"] == "Success"
    set_gates(admin, staging, {"kind": "scan", "severity": "High"})
    reason = refusal(admin, f"{dev}/app:vulnerable", f"{staging}/app:v1")["scan"]
    assert OPENSSL_ID in reason
    assert promoted(admin, f"{dev}/app:clean", f"{staging}/app:clean")["gates"][0]["passed"]
    # The destination's allowlist applies (not the source's).
    response = admin.post(
        f"/projects/{staging}/vulnerability-allowlist",
        json={"vulnerabilityId": OPENSSL_CVE, "reason": "not reachable", "owner": "team-a"},
    )
    assert response.status_code == 201, response.text
    assert promoted(admin, f"{dev}/app:vulnerable", f"{staging}/app:v1")["gates"][0]["passed"]


def test_signature_gate_checks_the_destination_trust_policy(
    admin: httpx.Client, v2: httpx.Client
) -> None:
    dev, staging, _ = stages(admin)
    key = ec_key()
    response = admin.post(
        f"/projects/{staging}/trust-keys", json={"name": "release", "pem": public_pem(key)}
    )
    assert response.status_code == 201, response.text
    rule = {"verifiers": [{"name": "ci", "type": "cosign-key", "keys": ["release"]}]}
    response = admin.put(f"/projects/{staging}/trust-policies", json={"rules": [rule]})
    assert response.status_code == 200, response.text
    set_gates(admin, staging, {"kind": "signature"})
    signed = fresh_image(v2, f"{dev}/app", "signed")
    fresh_image(v2, f"{dev}/app", "unsigned")
    digest = signed.manifest.digest
    push_legacy_signatures(v2, f"{dev}/app", digest, [legacy_signature(key, digest, f"{dev}/app")])
    reason = refusal(admin, f"{dev}/app:unsigned", f"{staging}/app:v1")["signature"]
    assert "no cosign signature found" in reason
    assert promoted(admin, f"{dev}/app:signed", f"{staging}/app:v1")["gates"][0]["passed"]
    # The signature came along: the destination's enforced policy lets the image be pulled.
    assert v2.get(f"/v2/{staging}/app/manifests/v1", headers=ACCEPT).status_code == 200
    assert signature_tag(digest) in v2.get(f"/v2/{staging}/app/tags/list").json()["tags"]


def test_approval_gate_counts_distinct_approvers_holding_the_role(
    server: RegistryProcess, admin: httpx.Client, v2: httpx.Client
) -> None:
    dev, staging, _ = stages(admin)
    image = fresh_image(v2, f"{dev}/app")
    digest = image.manifest.digest
    requester, approver, developer = (create_user(admin, n) for n in ("req", "appr", "devl"))
    for username in (requester, approver):
        set_role(admin, staging, username, "maintainer")
    set_role(admin, staging, developer, "developer")
    set_role(admin, dev, requester, "guest")
    set_gates(admin, staging, {"kind": "approval", "count": 1, "role": "maintainer"})
    path = f"/projects/{staging}/promotion-approvals"
    with (
        api_client(server, requester, PASSWORD) as asking,
        api_client(server, developer, PASSWORD) as developing,
        api_client(server, approver, PASSWORD) as approving,
    ):
        assert asking.post(path, json={"digest": digest}).status_code == 201
        assert developing.post(path, json={"digest": digest}).status_code == 201
        reason = refusal(asking, f"{dev}/app:v1", f"{staging}/app:v1")["approval"]
        assert "0 of 1 approvals" in reason
        assert f"{requester} (the requester)" in reason
        assert f"{developer} (not maintainer)" in reason
        first = approving.post(path, json={"digest": digest, "comment": "tested in dev"})
        assert first.status_code == 201, first.text
        assert approving.post(path, json={"digest": digest}).status_code == 200
        listed = asking.get(path, params={"digest": digest}).json()
        assert sorted(a["approver"] for a in listed) == sorted([requester, developer, approver])
        body = promoted(asking, f"{dev}/app:v1", f"{staging}/app:v1")
    assert f"1 of 1 approvals by maintainers: {approver}" in body["gates"][0]["reason"]
    assert body["requester"] == requester
    entries = audited(admin, staging, "promotion:approve", 3)
    assert {entry["actor"] for entry in entries} == {requester, developer, approver}


def test_permissions_pull_on_the_source_and_promote_on_the_destination(
    server: RegistryProcess, admin: httpx.Client, v2: httpx.Client
) -> None:
    dev, staging, _ = stages(admin)
    fresh_image(v2, f"{dev}/app")
    developer, outsider, releaser = (create_user(admin, n) for n in ("dev", "out", "rel"))
    set_role(admin, dev, developer, "developer")
    set_role(admin, staging, developer, "developer")  # may push there, not promote
    set_role(admin, staging, outsider, "maintainer")  # may promote there, may not pull dev
    set_role(admin, dev, releaser, "limited-guest")
    set_role(admin, staging, releaser, "maintainer")
    source, destination = f"{dev}/app:v1", f"{staging}/app:v1"
    with api_client(server, developer, PASSWORD) as client:
        body = assert_problem(promote(client, source, destination), 403)
        assert f"promote on {staging}/app is not allowed" in body["detail"]
    with api_client(server, outsider, PASSWORD) as client:
        body = assert_problem(promote(client, source, destination), 403)
        assert f"pull on {dev}/app is not allowed" in body["detail"]
        # Whether the source exists is not revealed to someone who may not pull it.
        missing = assert_problem(promote(client, f"{dev}/nothing:v1", destination), 403)
        assert "pull on" in missing["detail"]
    with api_client(server, releaser, PASSWORD) as client:
        assert promoted(client, source, destination)["requester"] == releaser
    unknown = assert_problem(promote(admin, f"{dev}/app:missing", destination), 404)
    assert "does not exist" in unknown["detail"]
    bad = assert_problem(promote(admin, f"{dev}/app", destination), 422)
    assert "neither repository:tag nor repository@digest" in bad["detail"]


def test_an_index_is_promoted_with_its_children_and_referrers(
    admin: httpx.Client, v2: httpx.Client
) -> None:
    dev, staging, _ = stages(admin)
    repository = f"{dev}/multi"
    label = f"multi-{next(_labels)}"
    images = [tiny_image(f"{label}-{arch}") for arch in ("amd64", "arm64")]
    index = image_index(images)
    for image in images:
        push_image(v2, repository, image, None)
    push_manifest(v2, repository, "v1", index.index)
    sbom = push_referrer(
        v2, repository, index.index, Blob(SBOM_TYPE, b'{"sbom": "index"}'), SBOM_TYPE
    )
    child_sbom = push_referrer(
        v2, repository, images[0].manifest, Blob(SBOM_TYPE, b'{"sbom": "amd64"}'), SBOM_TYPE
    )
    sbom_blob = Blob(
        OCI_MANIFEST, v2.get(f"/v2/{repository}/manifests/{sbom}", headers=ACCEPT).content
    )
    signature_of_sbom = push_referrer(
        v2,
        repository,
        sbom_blob,
        Blob("application/vnd.example.sig", b"sig"),
        "application/vnd.example.sig",
    )
    key = ec_key()
    digest = index.index.digest
    cosign = push_legacy_signatures(
        v2, repository, digest, [legacy_signature(key, digest, repository)]
    )

    body = promoted(admin, f"{repository}:v1", f"{staging}/multi:1.0")
    target = f"{staging}/multi"
    assert body["digest"] == digest
    for image in images:
        response = v2.get(f"/v2/{target}/manifests/{image.manifest.digest}", headers=ACCEPT)
        assert response.status_code == 200, response.text
        for blob in image.blobs:
            assert sha256_digest(fetch_blob(v2, target, blob.digest)) == blob.digest
    assert {r["digest"] for r in referrers(v2, target, digest)} == {sbom, body["recordDigest"]}
    assert [r["digest"] for r in referrers(v2, target, images[0].manifest.digest)] == [child_sbom]
    assert [r["digest"] for r in referrers(v2, target, sbom)] == [signature_of_sbom]
    tags = v2.get(f"/v2/{target}/tags/list").json()["tags"]
    assert sorted(tags) == sorted(["1.0", signature_tag(digest)])
    assert (
        v2.get(f"/v2/{target}/manifests/{signature_tag(digest)}", headers=ACCEPT).headers[
            "Docker-Content-Digest"
        ]
        == cosign
    )
    linked = set(verify_envelope_payload(body)["predicate"]["linked"])
    assert {image.manifest.digest for image in images} | {sbom, child_sbom, cosign} <= linked


def verify_envelope_payload(body: dict[str, Any]) -> dict[str, Any]:
    statement: dict[str, Any] = json.loads(base64.b64decode(body["envelope"]["payload"]))
    return statement


def test_immutable_tags_apply_to_promotions(admin: httpx.Client, v2: httpx.Client) -> None:
    dev, staging, _ = stages(admin)
    first = fresh_image(v2, f"{dev}/app", "a")
    second = fresh_image(v2, f"{dev}/app", "b")
    response = admin.post(
        f"/projects/{staging}/immutable-tag-rules", json={"repositories": "**", "tags": "*"}
    )
    assert response.status_code == 201, response.text
    promoted(admin, f"{dev}/app:a", f"{staging}/app:1.0")
    moved = promote(admin, f"{dev}/app:b", f"{staging}/app:1.0")
    assert "immutable" in assert_problem(moved, 403)["detail"]
    # All or nothing: the tag stays, and the record attached before the refusal is gone again.
    response = v2.get(f"/v2/{staging}/app/manifests/1.0", headers=ACCEPT)
    assert response.headers["Docker-Content-Digest"] == first.manifest.digest
    assert referrers(v2, f"{staging}/app", second.manifest.digest) == []
    missing = v2.get(f"/v2/{staging}/app/manifests/{second.manifest.digest}", headers=ACCEPT)
    assert missing.status_code == 404
    history = admin.get("/promotions", params={"project": staging}).json()
    assert [item["digest"] for item in history] == [first.manifest.digest]


# -- the command line


def test_moorage_promote_runs_the_same_promotion(
    server: RegistryProcess, admin: httpx.Client, v2: httpx.Client
) -> None:
    dev, staging, _ = stages(admin)
    image = fresh_image(v2, f"{dev}/app")
    set_gates(admin, staging, {"kind": "source-stage"}, {"kind": "age", "minHours": 2})

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "moorage", "promote", *args, "--data-dir", str(server.data_dir)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env=command_environment(server.data_dir),
        )

    refused = run(f"{dev}/app:v1", f"{staging}/app:v1")
    assert refused.returncode == 1
    assert "gate age (age) failed" in refused.stderr
    set_gates(admin, staging, {"kind": "source-stage"})
    done = run(f"{dev}/app:v1", f"{staging}/app:v1", "--json")
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout)
    assert outcome["digest"] == image.manifest.digest
    assert outcome["created"] is True
    statement = verify_envelope(server, outcome["envelope"])
    assert statement["predicate"]["promotedBy"]["kind"] == "system"
    history = admin.get("/promotions", params={"project": staging}).json()
    assert [item["id"] for item in history] == [outcome["id"]]
    assert v2.get(f"/v2/{staging}/app/manifests/v1", headers=ACCEPT).status_code == 200
    again = run(f"{dev}/app:v1", f"{staging}/app:v1")
    assert again.returncode == 0, again.stderr
    assert "already holds" in again.stdout
    entries = audited(admin, staging, "promotion:create", 2)
    assert [entry["result"] for entry in entries].count("success") == 1


def test_a_release_robot_holding_only_promote_and_pull_promotes(
    server: RegistryProcess, admin: httpx.Client, v2: httpx.Client
) -> None:
    dev, staging, _ = stages(admin)
    fresh_image(v2, f"{dev}/app")
    rules = [
        {"project": dev, "repositories": "app", "actions": ["pull"]},
        {"project": staging, "repositories": "app", "actions": ["promote"]},
    ]
    created = admin.post("/robots", json={"name": f"release-{next(_labels)}", "permissions": rules})
    assert created.status_code == 201, created.text
    name, secret = created.json()["name"], created.json()["secret"]
    with api_client(server, name, secret) as robot:
        body = promoted(robot, f"{dev}/app:v1", f"{staging}/app:v1")
        assert body["requester"] == name
        other = assert_problem(promote(robot, f"{dev}/app:v1", f"{staging}/other:v1"), 403)
        assert f"promote on {staging}/other is not allowed" in other["detail"]
        # Promote is not push: the robot cannot push into the destination.
        token = robot.get(
            f"{server.url}/service/token",
            params={"service": "moorage", "scope": f"repository:{staging}/app:pull,push"},
        ).json()["token"]
    pushed = httpx.post(
        f"{server.url}/v2/{staging}/app/blobs/uploads/",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert pushed.status_code == 401


def test_a_proxy_cache_project_takes_no_promotions(admin: httpx.Client, v2: httpx.Client) -> None:
    dev, _, _ = stages(admin)
    fresh_image(v2, f"{dev}/app")
    cache = create_project(admin, "cache")
    configured = admin.put(
        f"/projects/{cache}/proxy",
        json={"url": "http://127.0.0.1:9", "allowPrivateNetwork": True},
    )
    assert configured.status_code == 200, configured.text
    refused = assert_problem(promote(admin, f"{dev}/app:v1", f"{cache}/app:v1"), 409)
    assert "proxy cache" in refused["detail"]


def test_a_promotion_only_project_retags_by_promotion(
    admin: httpx.Client, v2: httpx.Client
) -> None:
    dev, _, prod = stages(admin)
    image = fresh_image(v2, f"{dev}/app")
    promoted(admin, f"{dev}/app:v1", f"{prod}/app:1.0")
    moved = v2.put(
        f"/v2/{prod}/app/manifests/stable",
        content=image.manifest.data,
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert_oci_error(moved, 403, "DENIED")
    body = promoted(admin, f"{prod}/app:1.0", f"{prod}/app:stable")
    assert body["digest"] == image.manifest.digest
    response = v2.get(f"/v2/{prod}/app/manifests/stable", headers=ACCEPT)
    assert response.headers["Docker-Content-Digest"] == image.manifest.digest


def test_podman_pulls_a_promoted_image_and_cannot_push_it_back(
    server: RegistryProcess,
    admin: httpx.Client,
    skopeo: Skopeo,
    tmp_path: Path,
) -> None:
    require_tool("podman")
    dev, _, prod = stages(admin)
    image = busybox_image(label=f"podman-{next(_labels)}")
    layout = write_layout(tmp_path / "layout", "v1", image)
    skopeo.copy(layout.reference, docker_ref(server, f"{dev}/app", "v1"))
    promoted(admin, f"{dev}/app:v1", f"{prod}/app:1.0")
    podman = podman_environment(tmp_path / "podman")
    try:
        podman.login(server.host, ADMIN_USER, ADMIN_PASSWORD)
        source = f"{server.host}/{prod}/app:1.0"
        podman.run("pull", "--quiet", "--tls-verify=false", source)
        assert podman.image_info(source)["Digest"] == image.manifest.digest
        podman.run("tag", source, f"{server.host}/{prod}/app:1.1")
        pushed = podman.attempt("push", "--tls-verify=false", f"{server.host}/{prod}/app:1.1")
        assert pushed.returncode != 0
        assert "accepts only promotions" in pushed.stderr.decode(errors="replace")
    finally:
        podman.attempt("rmi", "--all", "--force")
