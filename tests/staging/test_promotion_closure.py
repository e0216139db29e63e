"""What crosses in a promotion is what the gates judged: attacks on the closure, on a real server.

Every shape hides a vulnerable image (a High openssl finding, refused by a `scan` gate at High)
or an unsigned one somewhere a promotion would carry it: nested indexes, indexes and child
descriptors that claim an `artifactType`, referrers, referrers of referrers, cosign tags. For
each, the promotion is refused and no digest of the shape becomes pullable from the
destination; the same shape with a clean image goes through, so the refusal is the image's.
"""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.supply_chain.vulnerabilities.test_vulnerability_policy_clients import (
    CLEAN_STATUS,
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
from tests.support.auth import RegistryAuth
from tests.support.images import (
    OCI_INDEX,
    OCI_MANIFEST,
    Blob,
    Image,
    push_blob,
    push_image,
    push_manifest,
)
from tests.support.osv import run_vulndb, write_bundle
from tests.support.server import RegistryProcess
from tests.support.signing import (
    SIMPLE_SIGNING,
    ec_key,
    legacy_signature,
    legacy_signature_manifest,
    public_pem,
    push_legacy_signatures,
    push_referrer,
)

ACCEPT = {"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"}
EXAMPLE_TYPE = "application/vnd.example.thing+json"
SCAN_HIGH = {"kind": "scan", "severity": "High"}

_labels = itertools.count()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    root = tmp_path_factory.mktemp("promotion-closure")
    data_dir = root / "data"
    run_vulndb(data_dir, "import", str(write_bundle(root / "osv-bundle.tar.gz", bundle_records())))
    with RegistryProcess(data_dir).start() as process:
        yield process


@pytest.fixture(scope="module")
def admin(server: RegistryProcess) -> Iterator[httpx.Client]:
    with api_client(server) as http:
        yield http


@pytest.fixture(scope="module")
def v2(server: RegistryProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60, auth=RegistryAuth()) as http:
        yield http


class Source:
    """A source repository holding one scanned vulnerable and one scanned clean image."""

    def __init__(self, admin: httpx.Client, v2: httpx.Client) -> None:
        self.project = create_project(admin, "dev")
        self.repository = f"{self.project}/app"
        self.vulnerable = debian_image(OPENSSL_STATUS, f"vulnerable-{next(_labels)}")
        self.clean = debian_image(CLEAN_STATUS, f"clean-{next(_labels)}")
        for image in (self.vulnerable, self.clean):
            push_image(v2, self.repository, image, None)
            assert scan(admin, self.repository, image.manifest.digest)["status"] == "Success"


@pytest.fixture(scope="module")
def source(admin: httpx.Client, v2: httpx.Client) -> Source:
    return Source(admin, v2)


# -- helpers


def set_gates(admin: httpx.Client, project: str, *gates: dict[str, Any]) -> None:
    response = admin.put(f"/projects/{project}/promotion-gates", json={"gates": list(gates)})
    assert response.status_code == 200, response.text


def promote(client: httpx.Client, source: str, destination: str, **extra: Any) -> httpx.Response:
    return client.post("/promotions", json={"source": source, "destination": destination, **extra})


def refused(client: httpx.Client, source: str, destination: str) -> dict[str, str]:
    body = assert_problem(promote(client, source, destination), 422)
    return {error["field"].removeprefix("gates."): error["message"] for error in body["errors"]}


def destination(admin: httpx.Client, *gates: dict[str, Any]) -> str:
    project = create_project(admin, "prod")
    set_gates(admin, project, *gates)
    return project


def descriptor(manifest: Blob, artifact_type: str | None = None) -> dict[str, Any]:
    found: dict[str, Any] = {
        "mediaType": manifest.media_type,
        "digest": manifest.digest,
        "size": len(manifest.data),
    }
    if artifact_type is not None:
        found["artifactType"] = artifact_type
    return found


def index(children: list[dict[str, Any]], artifact_type: str | None = None) -> Blob:
    document: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": children,
        "annotations": {"test.unique": str(next(_labels))},
    }
    if artifact_type is not None:
        document["artifactType"] = artifact_type
    return Blob(OCI_INDEX, json.dumps(document).encode())


def pullable(v2: httpx.Client, repository: str, digest: str) -> bool:
    status = v2.get(f"/v2/{repository}/manifests/{digest}", headers=ACCEPT).status_code
    assert status in (200, 404), status
    return status == 200


def assert_none_pullable(v2: httpx.Client, repository: str, digests: list[str]) -> None:
    crossed = [digest for digest in digests if pullable(v2, repository, digest)]
    assert crossed == [], f"reached {repository}: {crossed}"


def nested(
    repository: str,
    v2: httpx.Client,
    bottom: Image,
    beside: Image,
    depth: int,
    index_type: str | None,
    child_type: str | None,
) -> tuple[str, list[str]]:
    """`bottom` at the end of a chain of `depth` indexes, the outer one also listing `beside`;
    every index (and every descriptor of `bottom`) may claim an artifactType. The outer index's
    tag, and every digest of the shape."""
    inner = descriptor(bottom.manifest, child_type)
    digests = [bottom.manifest.digest, beside.manifest.digest]
    manifest: Blob | None = None
    for level in range(depth):
        children = [inner]
        if level == depth - 1:
            children.append(descriptor(beside.manifest))
        manifest = index(children, index_type)
        push_manifest(v2, repository, manifest.digest, manifest)
        digests.append(manifest.digest)
        inner = descriptor(manifest, child_type)
    assert manifest is not None
    tag = f"shape-{next(_labels)}"
    push_manifest(v2, repository, tag, manifest)
    return tag, digests


# -- indexes: any depth, whatever they or their descriptors claim


SHAPES = [
    (depth, index_type, child_type)
    for depth in (1, 2, 3)
    for index_type in (None, "application/vnd.example.bundle")
    for child_type in (None, EXAMPLE_TYPE)
]


@pytest.mark.parametrize(("depth", "index_type", "child_type"), SHAPES)
def test_a_vulnerable_image_inside_any_index_shape_is_judged(
    admin: httpx.Client,
    v2: httpx.Client,
    source: Source,
    depth: int,
    index_type: str | None,
    child_type: str | None,
) -> None:
    prod = destination(admin, SCAN_HIGH)
    tag, digests = nested(
        source.repository, v2, source.vulnerable, source.clean, depth, index_type, child_type
    )
    reason = refused(admin, f"{source.repository}:{tag}", f"{prod}/app:v1")["scan"]
    assert OPENSSL_ID in reason
    assert source.vulnerable.manifest.digest in reason
    assert_none_pullable(v2, f"{prod}/app", digests)
    # The same shape around a clean image crosses: the refusal was the vulnerable image's.
    tag, digests = nested(
        source.repository, v2, source.clean, source.clean, depth, index_type, child_type
    )
    response = promote(admin, f"{source.repository}:{tag}", f"{prod}/app:v1")
    assert response.status_code == 201, response.text
    assert all(pullable(v2, f"{prod}/app", digest) for digest in digests)


def test_the_report_of_an_index_is_the_worst_of_everything_it_reaches(
    admin: httpx.Client, v2: httpx.Client, source: Source
) -> None:
    tag, _ = nested(source.repository, v2, source.vulnerable, source.clean, 3, None, None)
    outer = v2.get(f"/v2/{source.repository}/manifests/{tag}", headers=ACCEPT)
    digest = outer.headers["Docker-Content-Digest"]
    report = scan(admin, source.repository, digest)
    assert report["status"] == "Success"
    assert OPENSSL_ID in json.dumps(report)
    # The pull-time policy on the index follows: the index is refused, as its image is.
    response = admin.put(
        f"/projects/{source.project}/vulnerability-policy",
        json={"enabled": True, "severity": "High"},
    )
    assert response.status_code == 200, response.text
    try:
        for reference in (tag, source.vulnerable.manifest.digest):
            denied = v2.get(f"/v2/{source.repository}/manifests/{reference}", headers=ACCEPT)
            assert denied.status_code == 403, (reference, denied.text)
        assert pullable(v2, source.repository, source.clean.manifest.digest)
    finally:
        response = admin.put(
            f"/projects/{source.project}/vulnerability-policy", json={"enabled": False}
        )
        assert response.status_code == 200, response.text


# -- what rides along: referrers, their referrers, cosign tags


class Signed:
    """A destination whose signature gate trusts `key`, and a clean image signed with it."""

    def __init__(self, admin: httpx.Client, v2: httpx.Client, source: Source) -> None:
        self.key = ec_key()
        self.prod = destination(admin, SCAN_HIGH, {"kind": "signature"})
        trust(admin, self.prod, self.key)
        self.repository = f"{source.project}/signed-{next(_labels)}"
        self.image = source.clean
        push_image(v2, self.repository, self.image, "v1")
        for image in (source.vulnerable, source.clean):
            push_image(v2, self.repository, image, None)
        self.signature = self.sign(v2, self.image.manifest.digest)

    def sign(self, v2: httpx.Client, digest: str) -> str:
        signature = legacy_signature(self.key, digest, self.repository)
        return push_legacy_signatures(v2, self.repository, digest, [signature])


def trust(admin: httpx.Client, project: str, key: Any, mode: str = "enforce") -> None:
    added = admin.post(
        f"/projects/{project}/trust-keys", json={"name": "release", "pem": public_pem(key)}
    )
    assert added.status_code == 201, added.text
    rule = {
        "mode": mode,
        "verifiers": [{"name": "ci", "type": "cosign-key", "keys": ["release"]}],
    }
    response = admin.put(f"/projects/{project}/trust-policies", json={"rules": [rule]})
    assert response.status_code == 200, response.text


def as_referrer(image: Image, subject: Blob) -> Blob:
    """The image's manifest with a `subject`: still a runnable image (a new digest)."""
    document = json.loads(image.manifest.data)
    document["subject"] = descriptor(subject)
    return Blob(OCI_MANIFEST, json.dumps(document).encode())


def body_of(v2: httpx.Client, repository: str, digest: str) -> Blob:
    response = v2.get(f"/v2/{repository}/manifests/{digest}", headers=ACCEPT)
    assert response.status_code == 200, response.text
    return Blob(response.headers["Content-Type"], response.content)


ATTACHMENTS = ["referrer", "cosign-att", "cosign-sbom", "signature-referrer", "referrer-chain"]


def attach(kind: str, signed: Signed, v2: httpx.Client, admin: httpx.Client, bad: Image) -> str:
    """Attach `bad` (or a referrer form of it) to the signed image; the digest that rides."""
    repository = signed.repository
    subject = signed.image.manifest
    if kind.startswith("cosign-"):
        tag = subject.digest.replace(":", "-") + "." + kind.removeprefix("cosign-")
        return push_manifest(v2, repository, tag, bad.manifest)
    if kind == "signature-referrer":
        subject = body_of(v2, repository, signed.signature)
    elif kind == "referrer-chain":
        sbom = push_referrer(v2, repository, subject, Blob(EXAMPLE_TYPE, b"{}"), EXAMPLE_TYPE)
        subject = body_of(v2, repository, sbom)
    manifest = as_referrer(bad, subject)
    digest = push_manifest(v2, repository, manifest.digest, manifest)
    assert scan(admin, repository, digest)["status"] == "Success"  # judged by its findings
    return digest


@pytest.mark.parametrize("kind", ATTACHMENTS)
def test_a_vulnerable_unsigned_image_attached_to_a_clean_signed_one_does_not_ride_along(
    admin: httpx.Client, v2: httpx.Client, source: Source, kind: str
) -> None:
    signed = Signed(admin, v2, source)
    rider = attach(kind, signed, v2, admin, source.vulnerable)
    failing = refused(admin, f"{signed.repository}:v1", f"{signed.prod}/app:v1")
    assert set(failing) == {"scan", "signature"}
    assert rider in failing["scan"]
    assert OPENSSL_ID in failing["scan"]
    assert rider in failing["signature"]
    assert_none_pullable(v2, f"{signed.prod}/app", [rider, signed.image.manifest.digest])


@pytest.mark.parametrize("kind", ATTACHMENTS)
def test_a_clean_unsigned_image_attached_is_refused_by_the_signature_gate_alone(
    admin: httpx.Client, v2: httpx.Client, source: Source, kind: str
) -> None:
    signed = Signed(admin, v2, source)
    clean = debian_image(CLEAN_STATUS, f"rider-{next(_labels)}")
    push_image(v2, signed.repository, clean, None)
    assert scan(admin, signed.repository, clean.manifest.digest)["status"] == "Success"
    rider = attach(kind, signed, v2, admin, clean)
    failing = refused(admin, f"{signed.repository}:v1", f"{signed.prod}/app:v1")
    assert set(failing) == {"signature"}
    assert rider in failing["signature"]
    assert not pullable(v2, f"{signed.prod}/app", rider)
    # Signed on its own, it is judged and crosses with the image it is attached to.
    signed.sign(v2, rider)
    response = promote(admin, f"{signed.repository}:v1", f"{signed.prod}/app:v1")
    assert response.status_code == 201, response.text
    assert pullable(v2, f"{signed.prod}/app", rider)


def test_artifacts_that_no_runtime_runs_cross_with_their_image(
    admin: httpx.Client, v2: httpx.Client, source: Source
) -> None:
    signed = Signed(admin, v2, source)
    subject = signed.image.manifest
    unknown = push_referrer(v2, signed.repository, subject, Blob(EXAMPLE_TYPE, b"{}"), None)
    on_unknown = push_referrer(
        v2,
        signed.repository,
        body_of(v2, signed.repository, unknown),
        Blob("application/vnd.example.note", b"note"),
        "application/vnd.example.note",
    )
    # An image config with a simple-signing layer is a signature, not an image, however tagged.
    att = subject.digest.replace(":", "-") + ".att"
    _, look_alike = legacy_signature_blobs(signed, v2)
    push_manifest(v2, signed.repository, att, look_alike)
    body = promote(admin, f"{signed.repository}:v1", f"{signed.prod}/app:v1")
    assert body.status_code == 201, body.text
    for digest in (unknown, on_unknown, look_alike.digest, signed.signature):
        assert pullable(v2, f"{signed.prod}/app", digest), digest
    linked = set(json.loads(_payload(body.json()))["predicate"]["linked"])
    assert {unknown, on_unknown, look_alike.digest, signed.signature} <= linked


def legacy_signature_blobs(signed: Signed, v2: httpx.Client) -> tuple[Blob, Blob]:
    signature = legacy_signature(signed.key, signed.image.manifest.digest, signed.repository)
    config, manifest = legacy_signature_manifest([signature])
    push_blob(v2, signed.repository, Blob(SIMPLE_SIGNING, signature.payload))
    push_blob(v2, signed.repository, config)
    return config, manifest


def _payload(body: dict[str, Any]) -> bytes:
    return base64.b64decode(body["envelope"]["payload"])


# -- the source's own pull gates


def test_promotion_does_not_launder_what_the_source_refuses_to_serve(
    server: RegistryProcess, admin: httpx.Client, v2: httpx.Client
) -> None:
    gated, free = create_project(admin, "gated"), create_project(admin, "free")
    developer = create_user(admin, "dev")
    set_role(admin, gated, developer, "developer")
    set_role(admin, free, developer, "maintainer")
    vulnerable = debian_image(OPENSSL_STATUS, f"gated-{next(_labels)}")
    push_image(v2, f"{gated}/app", vulnerable, "vuln")
    assert scan(admin, f"{gated}/app", vulnerable.manifest.digest)["status"] == "Success"
    response = admin.put(
        f"/projects/{gated}/vulnerability-policy", json={"enabled": True, "severity": "High"}
    )
    assert response.status_code == 200, response.text
    assert v2.get(f"/v2/{gated}/app/manifests/vuln", headers=ACCEPT).status_code == 403
    with api_client(server, developer, PASSWORD) as client:
        failing = refused(client, f"{gated}/app:vuln", f"{free}/app:vuln")
    assert set(failing) == {"source-vulnerability-policy"}
    assert OPENSSL_ID in failing["source-vulnerability-policy"]
    assert not pullable(v2, f"{free}/app", vulnerable.manifest.digest)
    # Inside an index, and as a referrer of a clean image: the same.
    clean = debian_image(CLEAN_STATUS, f"gated-clean-{next(_labels)}")
    push_image(v2, f"{gated}/app", clean, "clean")
    assert scan(admin, f"{gated}/app", clean.manifest.digest)["status"] == "Success"
    wrapper = index([descriptor(vulnerable.manifest, EXAMPLE_TYPE)], "application/x")
    push_manifest(v2, f"{gated}/app", "wrapped", wrapper)
    assert "source-vulnerability-policy" in refused(admin, f"{gated}/app:wrapped", f"{free}/a:1")
    rider = as_referrer(vulnerable, clean.manifest)
    push_manifest(v2, f"{gated}/app", rider.digest, rider)
    assert scan(admin, f"{gated}/app", rider.digest)["status"] == "Success"
    assert "source-vulnerability-policy" in refused(admin, f"{gated}/app:clean", f"{free}/b:1")
    for repository in (f"{free}/a", f"{free}/b"):
        shape = [wrapper.digest, vulnerable.manifest.digest, rider.digest, clean.manifest.digest]
        assert_none_pullable(v2, repository, shape)
    # The destination may re-judge instead, explicitly: its scan gate replaces the source's.
    set_gates(admin, free, {"kind": "scan", "severity": "Critical", "replaceSourcePolicy": True})
    response = promote(admin, f"{gated}/app:vuln", f"{free}/app:vuln")
    assert response.status_code == 201, response.text
    assert [gate["kind"] for gate in response.json()["gates"]] == ["scan"]


def test_an_enforced_source_trust_rule_is_not_laundered(
    admin: httpx.Client, v2: httpx.Client
) -> None:
    gated, free = create_project(admin, "gated"), create_project(admin, "free")
    key = ec_key()
    trust(admin, gated, key)
    unsigned = debian_image(CLEAN_STATUS, f"unsigned-{next(_labels)}")
    signed = debian_image(CLEAN_STATUS, f"signed-{next(_labels)}")
    push_image(v2, f"{gated}/app", unsigned, "unsigned")
    push_image(v2, f"{gated}/app", signed, "signed")
    digest = signed.manifest.digest
    signature = legacy_signature(key, digest, f"{gated}/app")
    push_legacy_signatures(v2, f"{gated}/app", digest, [signature])
    assert v2.get(f"/v2/{gated}/app/manifests/unsigned", headers=ACCEPT).status_code == 403
    failing = refused(admin, f"{gated}/app:unsigned", f"{free}/app:v1")
    assert set(failing) == {"source-signature-policy"}
    assert not pullable(v2, f"{free}/app", unsigned.manifest.digest)
    body = promote(admin, f"{gated}/app:signed", f"{free}/app:v1")
    assert body.status_code == 201, body.text
    assert [(g["name"], g["passed"]) for g in body.json()["gates"]] == [
        ("source-signature-policy", True)
    ]
    # An audit-mode rule does not refuse pulls, so it refuses no promotion either.
    audit_only = create_project(admin, "audit")
    trust(admin, audit_only, ec_key(), mode="audit")
    push_image(v2, f"{audit_only}/app", unsigned, "unsigned")
    response = promote(admin, f"{audit_only}/app:unsigned", f"{free}/other:v1")
    assert response.status_code == 201, response.text


def test_the_source_policy_option_is_only_for_scan_and_signature_gates(
    admin: httpx.Client,
) -> None:
    project = create_project(admin, "opt")
    bad = admin.put(
        f"/projects/{project}/promotion-gates",
        json={"gates": [{"kind": "age", "minHours": 1, "replaceSourcePolicy": True}]},
    )
    assert "replace_source_policy" in assert_problem(bad, 422)["detail"]
    bad = admin.put(
        f"/projects/{project}/promotion-gates", json={"gates": [{"kind": "source-policy"}]}
    )
    assert_problem(bad, 422)
    good = admin.put(
        f"/projects/{project}/promotion-gates",
        json={"gates": [{"kind": "signature", "replaceSourcePolicy": True}]},
    )
    assert good.status_code == 200, good.text
    (gate,) = good.json()["gates"]
    assert (gate["kind"], gate["replaceSourcePolicy"]) == ("signature", True)


# -- every refusal is audited


def denials(admin: httpx.Client, project: str) -> list[dict[str, Any]]:
    response = admin.get("/audit-logs", params={"project": project, "action": "promotion:create"})
    assert response.status_code == 200, response.text
    return [entry for entry in response.json() if entry["result"] == "denied"]


def denied_once(admin: httpx.Client, project: str) -> dict[str, Any]:
    eventually(lambda: len(denials(admin, project)) >= 1, what="the refusal audited")
    (entry,) = denials(admin, project)
    return entry


def test_every_refused_promotion_is_audited_with_its_reason(
    server: RegistryProcess, admin: httpx.Client, v2: httpx.Client, source: Source
) -> None:
    repository = source.repository
    push_image(v2, repository, source.vulnerable, "vuln")
    push_image(v2, repository, source.clean, "clean")

    # A gate.
    gated = destination(admin, SCAN_HIGH)
    refused(admin, f"{repository}:vuln", f"{gated}/app:v1")
    entry = denied_once(admin, gated)
    assert entry["details"]["digest"] == source.vulnerable.manifest.digest
    assert OPENSSL_ID in entry["details"]["reason"]
    assert [gate["passed"] for gate in entry["details"]["gates"]] == [False]

    # A dry run only asks: not audited as a refusal.
    asked = destination(admin, SCAN_HIGH)
    dry = promote(admin, f"{repository}:vuln", f"{asked}/app:v1", dryRun=True)
    assert_problem(dry, 422)

    # An immutable tag.
    locked = destination(admin)
    rule = admin.post(
        f"/projects/{locked}/immutable-tag-rules", json={"repositories": "**", "tags": "*"}
    )
    assert rule.status_code == 201, rule.text
    assert promote(admin, f"{repository}:clean", f"{locked}/app:1.0").status_code == 201
    moved = promote(admin, f"{repository}:vuln", f"{locked}/app:1.0")
    assert "immutable" in assert_problem(moved, 403)["detail"]
    assert "immutable" in denied_once(admin, locked)["details"]["reason"]

    # Permissions decided by the handler: no pull on the source, no promote on the destination.
    outsider = create_user(admin, "outsider")
    no_pull, no_promote = destination(admin), destination(admin)
    set_role(admin, no_pull, outsider, "maintainer")
    set_role(admin, source.project, outsider, "guest")
    set_role(admin, no_promote, outsider, "developer")
    with api_client(server, outsider, PASSWORD) as client:
        other = create_project(admin, "hidden")
        assert_problem(promote(client, f"{other}/app:v1", f"{no_pull}/app:v1"), 403)
        assert_problem(promote(client, f"{repository}:clean", f"{no_promote}/app:v1"), 403)
        assert_problem(promote(client, f"{other}/app:v1", f"{no_pull}/app:v2", dryRun=True), 403)
    entry = denied_once(admin, no_pull)
    assert entry["actor"] == outsider
    assert entry["details"]["reason"] == f"pull on {other}/app is not allowed"
    assert entry["details"].get("digest") is None  # not looked up: nothing revealed
    assert "promote on" in denied_once(admin, no_promote)["details"]["reason"]

    # A missing source, and the source's own pull policy.
    missing = destination(admin)
    assert_problem(promote(admin, f"{repository}:nothing", f"{missing}/app:v1"), 404)
    assert "does not exist" in denied_once(admin, missing)["details"]["reason"]
    strict = create_project(admin, "strict")
    push_image(v2, f"{strict}/app", source.vulnerable, "vuln")
    response = admin.put(
        f"/projects/{strict}/vulnerability-policy", json={"enabled": True, "severity": "High"}
    )
    assert response.status_code == 200, response.text
    laundered = destination(admin)
    refused(admin, f"{strict}/app:vuln", f"{laundered}/app:v1")
    entry = denied_once(admin, laundered)
    assert [gate["name"] for gate in entry["details"]["gates"]] == ["source-vulnerability-policy"]

    # Written in batches: by now the dry run's entry would be there too, had it been written.
    assert denials(admin, asked) == []
