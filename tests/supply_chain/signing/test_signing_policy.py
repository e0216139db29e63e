"""Signature trust policies on a real server: signatures made in cosign's and notation's formats,
pushed as those clients push them, and pulls by skopeo and over HTTP allowed or denied."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.registry.test_clients_skopeo import Skopeo, tool_environment
from tests.support.api import api_client, assert_problem, create_project, eventually
from tests.support.auth import ADMIN_PASSWORD, ADMIN_USER, RegistryAuth
from tests.support.images import (
    OCI_INDEX,
    OCI_MANIFEST,
    Blob,
    Image,
    ImageIndex,
    Platform,
    image_index,
    push_blob,
    push_image,
    push_manifest,
    tiny_image,
    write_layout,
)
from tests.support.oci import assert_oci_error
from tests.support.server import RegistryProcess
from tests.support.signing import (
    LegacySignature,
    NotationPki,
    PrivateKey,
    dsse_bundle,
    ec_key,
    ed25519_key,
    legacy_signature,
    legacy_signature_manifest,
    message_signature_bundle,
    notation_envelope,
    pem,
    public_pem,
    push_bundle,
    push_legacy_signatures,
    push_notation,
    push_notation_with_oras,
    rsa_key,
    signature_tag,
)
from tests.support.tools import require_module, require_tool

ACCEPT = {"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"}
_labels = iter(range(1_000_000))


@pytest.fixture
def v2(api_registry: RegistryProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api_registry.url, timeout=60, auth=RegistryAuth()) as http:
        yield http


@pytest.fixture(scope="module")
def skopeo(tmp_path_factory: pytest.TempPathFactory) -> Skopeo:
    require_tool("skopeo")
    return Skopeo(tool_environment(tmp_path_factory.mktemp("signing-tools")))


@pytest.fixture(scope="module")
def pki() -> NotationPki:
    return NotationPki()


def image(repository: str, v2: httpx.Client, tag: str = "v1") -> Blob:
    """A fresh image pushed as `repository:tag`; its manifest."""
    pushed = tiny_image(f"signing-{repository}-{next(_labels)}")
    push_image(v2, repository, pushed, tag)
    return pushed.manifest


def add_key(admin: httpx.Client, project: str, name: str, key: PrivateKey) -> dict[str, Any]:
    response = admin.post(
        f"/projects/{project}/trust-keys", json={"name": name, "pem": public_pem(key)}
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def add_store(admin: httpx.Client, project: str, name: str, certificates: str) -> None:
    response = admin.post(
        f"/projects/{project}/trust-stores", json={"name": name, "certificates": certificates}
    )
    assert response.status_code == 201, response.text


def cosign_verifier(name: str = "ci", *keys: str) -> dict[str, Any]:
    return {"name": name, "type": "cosign-key", "keys": list(keys or ("ci-key",))}


def notation_verifier(identity: str, name: str = "release") -> dict[str, Any]:
    return {
        "name": name,
        "type": "notation",
        "trustStores": ["acme"],
        "trustedIdentities": [identity],
    }


def set_rules(admin: httpx.Client, project: str, *rules: dict[str, Any]) -> dict[str, Any]:
    response = admin.put(f"/projects/{project}/trust-policies", json={"rules": list(rules)})
    assert response.status_code == 200, response.text
    policy: dict[str, Any] = response.json()
    return policy


def pull(v2: httpx.Client, repository: str, reference: str) -> httpx.Response:
    return v2.get(f"/v2/{repository}/manifests/{reference}", headers=ACCEPT)


def denied(v2: httpx.Client, repository: str, reference: str) -> str:
    return str(assert_oci_error(pull(v2, repository, reference), 403, "DENIED")["message"])


def audit_entries(admin: httpx.Client, project: str, action: str) -> list[dict[str, Any]]:
    response = admin.get("/audit-logs", params={"project": project, "action": action})
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()
    return found


def skopeo_pull(skopeo: Skopeo, registry: RegistryProcess, reference: str, target: Path) -> Any:
    return skopeo.attempt(
        "copy",
        "--src-tls-verify=false",
        "--src-creds",
        f"{ADMIN_USER}:{ADMIN_PASSWORD}",
        f"docker://{registry.host}/{reference}",
        f"oci:{target}:pulled",
    )


# -- cosign


def test_a_good_cosign_signature_lets_skopeo_pull_and_none_denies(
    api_registry: RegistryProcess,
    admin_api: httpx.Client,
    v2: httpx.Client,
    skopeo: Skopeo,
    tmp_path: Path,
) -> None:
    project = create_project(admin_api)
    key = ec_key()
    add_key(admin_api, project, "ci-key", key)
    rule = set_rules(admin_api, project, {"verifiers": [cosign_verifier()]})["rules"][0]
    assert rule["mode"] == "enforce"
    assert rule["require"] == "any-of"
    repository = f"{project}/app"
    manifest = image(repository, v2)

    message = denied(v2, repository, "v1")
    assert f"trust rule {rule['id']}" in message
    assert "no cosign signature found" in message
    assert denied(v2, repository, manifest.digest) == message
    refused = skopeo_pull(skopeo, api_registry, f"{repository}:v1", tmp_path / "refused")
    assert refused.returncode != 0
    assert b"denied" in refused.stderr.lower()

    push_legacy_signatures(
        v2, repository, manifest.digest, [legacy_signature(key, manifest.digest, repository)]
    )
    copied = skopeo_pull(skopeo, api_registry, f"{repository}:v1", tmp_path / "pulled")
    assert copied.returncode == 0, copied.stderr.decode()
    index = json.loads((tmp_path / "pulled" / "index.json").read_text())
    assert index["manifests"][0]["digest"] == manifest.digest


def test_a_cosign_signature_copied_with_skopeo_lets_skopeo_pull(
    api_registry: RegistryProcess,
    admin_api: httpx.Client,
    v2: httpx.Client,
    skopeo: Skopeo,
    tmp_path: Path,
) -> None:
    """`skopeo copy` of a `.sig` image, as when signatures are mirrored between registries."""
    project = create_project(admin_api)
    key = ec_key()
    add_key(admin_api, project, "ci-key", key)
    set_rules(admin_api, project, {"verifiers": [cosign_verifier()]})
    repository = f"{project}/app"
    manifest = image(repository, v2)
    assert denied(v2, repository, "v1")

    signature = legacy_signature(key, manifest.digest, repository)
    config, signature_manifest = legacy_signature_manifest([signature])
    tag = signature_tag(manifest.digest)
    layout = write_layout(
        tmp_path / "signature",
        tag,
        Image(Platform(), config, (signature.blob,), signature_manifest),
    )
    pushed = skopeo.attempt(
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        "--dest-creds",
        f"{ADMIN_USER}:{ADMIN_PASSWORD}",
        f"oci:{layout.path}:{tag}",
        f"docker://{api_registry.host}/{repository}:{tag}",
    )
    assert pushed.returncode == 0, pushed.stderr.decode()
    assert pull(v2, repository, tag).status_code == 200
    copied = skopeo_pull(skopeo, api_registry, f"{repository}:v1", tmp_path / "pulled")
    assert copied.returncode == 0, copied.stderr.decode()


@pytest.mark.parametrize("key_type", ["rsa", "ed25519", "rsa-pss"])
def test_rsa_and_ed25519_cosign_keys_verify(
    admin_api: httpx.Client, v2: httpx.Client, key_type: str
) -> None:
    project = create_project(admin_api)
    key = ed25519_key() if key_type == "ed25519" else rsa_key(2048)
    add_key(admin_api, project, "ci-key", key)
    set_rules(admin_api, project, {"verifiers": [cosign_verifier()]})
    repository = f"{project}/app"
    manifest = image(repository, v2)
    signature = legacy_signature(key, manifest.digest, repository, pss=key_type == "rsa-pss")
    push_legacy_signatures(v2, repository, manifest.digest, [signature])
    assert pull(v2, repository, "v1").status_code == 200


def _tampered(key: PrivateKey, digest: str, repository: str) -> LegacySignature:
    good = legacy_signature(key, digest, repository)
    document = json.loads(good.payload)
    document["critical"]["identity"]["docker-reference"] = "evil/elsewhere"
    return LegacySignature(json.dumps(document).encode(), good.signature)


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("tampered payload", "does not verify with ci-key"),
        ("wrong digest", "signs sha256:"),
        ("wrong key", "does not verify with ci-key"),
    ],
)
def test_bad_cosign_signatures_are_denied_with_a_reason(
    admin_api: httpx.Client, v2: httpx.Client, case: str, reason: str
) -> None:
    project = create_project(admin_api)
    key = ec_key()
    add_key(admin_api, project, "ci-key", key)
    set_rules(admin_api, project, {"verifiers": [cosign_verifier()]})
    repository = f"{project}/app"
    manifest = image(repository, v2)
    other = image(repository, v2, "other")
    signature = {
        "tampered payload": lambda: _tampered(key, manifest.digest, repository),
        "wrong digest": lambda: legacy_signature(key, other.digest, repository),
        "wrong key": lambda: legacy_signature(ec_key(), manifest.digest, repository),
    }[case]()
    sig_digest = push_legacy_signatures(v2, repository, manifest.digest, [signature])
    message = denied(v2, repository, "v1")
    assert reason in message, message
    # The signature itself stays readable, by tag and by digest, so clients can verify.
    assert pull(v2, repository, signature_tag(manifest.digest)).status_code == 200
    assert pull(v2, repository, sig_digest).status_code == 200


# -- sigstore bundles


def test_sigstore_bundle_referrers_verify_and_keyless_ones_are_reported(
    admin_api: httpx.Client, v2: httpx.Client
) -> None:
    project = create_project(admin_api)
    key = ec_key()
    add_key(admin_api, project, "ci-key", key)
    set_rules(admin_api, project, {"verifiers": [cosign_verifier()]})
    repository = f"{project}/app"

    by_message = image(repository, v2, "message")
    push_bundle(v2, repository, by_message, message_signature_bundle(key, by_message.data))
    assert pull(v2, repository, "message").status_code == 200

    by_dsse = image(repository, v2, "dsse")
    push_bundle(v2, repository, by_dsse, dsse_bundle(key, by_dsse.digest, repository))
    assert pull(v2, repository, "dsse").status_code == 200

    keyless = image(repository, v2, "keyless")
    referrer = push_bundle(
        v2,
        repository,
        keyless,
        dsse_bundle(key, keyless.digest, repository, certificate=b"\x30\x00"),
    )
    assert "unsupported verification material" in denied(v2, repository, "keyless")
    # The bundle and the referrers listing stay readable.
    assert pull(v2, repository, referrer).status_code == 200
    listing = v2.get(f"/v2/{repository}/referrers/{keyless.digest}")
    assert [d["digest"] for d in listing.json()["manifests"]] == [referrer]


# -- Notation


def test_a_notation_signature_pushed_with_oras_lets_skopeo_pull(
    api_registry: RegistryProcess,
    admin_api: httpx.Client,
    v2: httpx.Client,
    skopeo: Skopeo,
    pki: NotationPki,
    tmp_path: Path,
) -> None:
    oras_client = require_module("oras.client")
    from tests.support.images import push_token

    project = create_project(admin_api)
    add_store(admin_api, project, "acme", pem(pki.root))
    set_rules(admin_api, project, {"verifiers": [notation_verifier(pki.identity())]})
    repository = f"{project}/app"
    manifest = image(repository, v2)
    assert "no Notation signature found" in denied(v2, repository, "v1")

    client = oras_client.OrasClient(hostname=api_registry.host, insecure=True)
    client.auth.set_token_auth(push_token(api_registry.url, repository))
    signer = pki.leaf(rsa_key(3072))
    push_notation_with_oras(
        client,
        f"{api_registry.host}/{repository}:notation-signature",
        manifest,
        notation_envelope(signer, manifest),
        signer,
        tmp_path / "oras",
    )
    copied = skopeo_pull(skopeo, api_registry, f"{repository}:v1", tmp_path / "pulled")
    assert copied.returncode == 0, copied.stderr.decode()
    # The signature's own tag is an artifact, never gated.
    assert pull(v2, repository, "notation-signature").status_code == 200


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("untrusted CA", "is not trusted"),
        ("missing EKU", "lacks the codeSigning extended key usage"),
        ("expired certificate", "not trusted now"),
        ("wrong digest", "the signature is for sha256:"),
        ("tampered payload", "does not verify"),
        ("other identity", "is not a trusted identity"),
    ],
)
def test_bad_notation_signatures_are_denied_with_a_reason(
    admin_api: httpx.Client, v2: httpx.Client, pki: NotationPki, case: str, reason: str
) -> None:
    project = create_project(admin_api)
    add_store(admin_api, project, "acme", pem(pki.root))
    set_rules(admin_api, project, {"verifiers": [notation_verifier(pki.identity())]})
    repository = f"{project}/app"
    manifest = image(repository, v2)
    other = image(repository, v2, "other")
    now = dt.datetime.now(dt.UTC)
    signer = {
        "untrusted CA": lambda: NotationPki().leaf(),
        "missing EKU": lambda: pki.leaf(code_signing=False),
        "expired certificate": lambda: pki.leaf(
            not_before=now - dt.timedelta(days=20), not_after=now - dt.timedelta(days=1)
        ),
        "other identity": lambda: pki.leaf(common_name="Intern"),
    }.get(case, pki.leaf)()
    envelope = notation_envelope(
        signer,
        manifest,
        target_digest=other.digest if case == "wrong digest" else None,
        signing_time=now - dt.timedelta(days=5) if case == "expired certificate" else None,
        tamper=case == "tampered payload",
    )
    referrer = push_notation(v2, repository, manifest, envelope, signer)
    message = denied(v2, repository, "v1")
    assert reason in message, message
    assert pull(v2, repository, referrer).status_code == 200


# -- modes, requirements, rule choice, caching


def test_audit_mode_allows_and_records_and_off_allows_silently(
    admin_api: httpx.Client, v2: httpx.Client
) -> None:
    project = create_project(admin_api)
    add_key(admin_api, project, "ci-key", ec_key())
    rule = set_rules(admin_api, project, {"mode": "audit", "verifiers": [cosign_verifier()]})[
        "rules"
    ][0]
    repository = f"{project}/app"
    manifest = image(repository, v2)
    assert pull(v2, repository, "v1").status_code == 200
    eventually(
        lambda: bool(audit_entries(admin_api, project, "signature:unverified")), what="audit"
    )
    (entry,) = audit_entries(admin_api, project, "signature:unverified")
    assert entry["result"] == "failure"
    assert entry["resource"] == f"{repository}@{manifest.digest}"
    assert entry["details"]["rule"] == rule["id"]
    assert entry["details"]["mode"] == "audit"
    assert "no cosign signature found" in entry["details"]["reason"]
    assert not audit_entries(admin_api, project, "policy:denied")

    set_rules(admin_api, project, {"mode": "off", "verifiers": []})
    assert pull(v2, repository, "v1").status_code == 200
    assert pull(v2, repository, "v1").status_code == 200
    assert len(audit_entries(admin_api, project, "signature:unverified")) == 1


def test_enforced_denials_are_audited_once_as_policy_denials(
    admin_api: httpx.Client, v2: httpx.Client
) -> None:
    project = create_project(admin_api)
    add_key(admin_api, project, "ci-key", ec_key())
    set_rules(admin_api, project, {"verifiers": [cosign_verifier()]})
    repository = f"{project}/app"
    image(repository, v2)
    denied(v2, repository, "v1")
    eventually(lambda: bool(audit_entries(admin_api, project, "policy:denied")), what="audit")
    (entry,) = audit_entries(admin_api, project, "policy:denied")
    assert entry["details"]["policy"] == "signature-trust"
    assert entry["details"]["point"] == "pull:manifest"


def test_any_of_all_of_and_at_least_n(
    admin_api: httpx.Client, v2: httpx.Client, pki: NotationPki
) -> None:
    project = create_project(admin_api)
    first, second = ec_key(), ec_key()
    add_key(admin_api, project, "first", first)
    add_key(admin_api, project, "second", second)
    add_store(admin_api, project, "acme", pem(pki.root))
    verifiers = [
        cosign_verifier("one", "first"),
        cosign_verifier("two", "second"),
        notation_verifier(pki.identity()),
    ]
    repository = f"{project}/app"
    manifest = image(repository, v2)
    push_legacy_signatures(
        v2, repository, manifest.digest, [legacy_signature(first, manifest.digest, repository)]
    )
    push_bundle(v2, repository, manifest, dsse_bundle(second, manifest.digest, repository))

    outcomes = {}
    for require, count in (("any-of", None), ("at-least", 2), ("at-least", 3), ("all-of", None)):
        set_rules(admin_api, project, {"require": require, "count": count, "verifiers": verifiers})
        outcomes[(require, count)] = pull(v2, repository, "v1").status_code
    assert outcomes == {
        ("any-of", None): 200,
        ("at-least", 2): 200,
        ("at-least", 3): 403,
        ("all-of", None): 403,
    }
    assert "2 satisfied" in denied(v2, repository, "v1")
    signer = pki.leaf()
    push_notation(v2, repository, manifest, notation_envelope(signer, manifest), signer)
    assert pull(v2, repository, "v1").status_code == 200


def test_the_most_specific_rule_wins(admin_api: httpx.Client, v2: httpx.Client) -> None:
    project = create_project(admin_api)
    key = ec_key()
    add_key(admin_api, project, "ci-key", key)
    policy = set_rules(
        admin_api,
        project,
        {"repositories": "**", "verifiers": [cosign_verifier()]},
        {"repositories": "dev/**", "mode": "off", "verifiers": []},
        {"repositories": "dev/release", "verifiers": [cosign_verifier()]},
    )
    ids = {rule["repositories"]: rule["id"] for rule in policy["rules"]}
    for name in ("app", "dev/tool", "dev/release"):
        image(f"{project}/{name}", v2)
    assert f"trust rule {ids['**']}" in denied(v2, f"{project}/app", "v1")
    assert pull(v2, f"{project}/dev/tool", "v1").status_code == 200
    assert f"trust rule {ids['dev/release']}" in denied(v2, f"{project}/dev/release", "v1")


def test_a_policy_change_is_seen_at_once(admin_api: httpx.Client, v2: httpx.Client) -> None:
    project = create_project(admin_api)
    signing, other = ec_key(), ec_key()
    add_key(admin_api, project, "signing", signing)
    add_key(admin_api, project, "other", other)
    first = set_rules(admin_api, project, {"verifiers": [cosign_verifier("v", "other")]})
    repository = f"{project}/app"
    manifest = image(repository, v2)
    push_legacy_signatures(
        v2, repository, manifest.digest, [legacy_signature(signing, manifest.digest, repository)]
    )
    assert "does not verify with other" in denied(v2, repository, "v1")
    assert "does not verify with other" in denied(v2, repository, "v1")  # cached: same answer

    second = set_rules(admin_api, project, {"verifiers": [cosign_verifier("v", "signing")]})
    assert second["version"] > first["version"]
    assert pull(v2, repository, "v1").status_code == 200

    # Removing the trusted signature (a new set of signature manifests) is seen at once too.
    assert (
        v2.delete(f"/v2/{repository}/manifests/{signature_tag(manifest.digest)}").status_code == 202
    )
    assert "no cosign signature found" in denied(v2, repository, "v1")


def test_a_signed_index_covers_its_children(
    api_registry: RegistryProcess,
    admin_api: httpx.Client,
    v2: httpx.Client,
    skopeo: Skopeo,
    tmp_path: Path,
) -> None:
    project = create_project(admin_api)
    key = ec_key()
    add_key(admin_api, project, "ci-key", key)
    set_rules(admin_api, project, {"verifiers": [cosign_verifier()]})
    repository = f"{project}/multi"
    label = next(_labels)
    index: ImageIndex = image_index(tiny_image(f"child-{label}-{arch}") for arch in ("a", "b"))
    for child in index.images:
        for blob in child.blobs:
            push_blob(v2, repository, blob)
        push_manifest(v2, repository, child.manifest.digest, child.manifest)
    push_manifest(v2, repository, "v1", index.index)
    child_digest = index.images[0].manifest.digest
    assert "no cosign signature found" in denied(v2, repository, child_digest)

    push_legacy_signatures(
        v2, repository, index.index.digest, [legacy_signature(key, index.index.digest, repository)]
    )
    assert pull(v2, repository, "v1").status_code == 200
    assert pull(v2, repository, child_digest).status_code == 200
    evaluation = admin_api.get(
        f"/projects/{project}/trust-evaluation",
        params={"repository": repository, "digest": child_digest},
    ).json()
    assert evaluation["satisfied"] is True
    assert evaluation["signedThrough"] == index.index.digest
    copied = skopeo.attempt(
        "copy",
        "--all",
        "--src-tls-verify=false",
        "--src-creds",
        f"{ADMIN_USER}:{ADMIN_PASSWORD}",
        f"docker://{api_registry.host}/{repository}:v1",
        f"oci:{tmp_path / 'all'}:pulled",
    )
    assert copied.returncode == 0, copied.stderr.decode()


def test_the_evaluation_endpoint_explains_the_decision(
    admin_api: httpx.Client, v2: httpx.Client
) -> None:
    project = create_project(admin_api)
    key = ec_key()
    add_key(admin_api, project, "ci-key", key)
    policy = set_rules(admin_api, project, {"verifiers": [cosign_verifier()]})
    repository = f"{project}/app"
    manifest = image(repository, v2)
    path = f"/projects/{project}/trust-evaluation"
    params = {"repository": repository, "digest": manifest.digest}
    before = admin_api.get(path, params=params)
    assert before.status_code == 200, before.text
    body = before.json()
    assert body["policyVersion"] == policy["version"]
    assert body["rule"] == policy["rules"][0]["id"]
    assert (body["satisfied"], body["allowed"], body["mode"]) == (False, False, "enforce")
    assert body["verifiers"][0]["name"] == "ci"
    push_legacy_signatures(
        v2, repository, manifest.digest, [legacy_signature(key, manifest.digest, repository)]
    )
    after = admin_api.get(path, params=params).json()
    assert after["satisfied"] is True
    assert after["verifiers"][0]["signers"] == ["ci-key"]
    assert_problem(
        admin_api.get(path, params={"repository": "elsewhere/app", "digest": manifest.digest}), 400
    )
    missing = {"repository": repository, "digest": "sha256:" + "0" * 64}
    assert_problem(admin_api.get(path, params=missing), 404)


def test_an_image_dressed_as_a_signature_is_still_gated(
    admin_api: httpx.Client, v2: httpx.Client
) -> None:
    project = create_project(admin_api)
    key = ec_key()
    add_key(admin_api, project, "ci-key", key)
    set_rules(admin_api, project, {"verifiers": [cosign_verifier()]})
    repository = f"{project}/app"
    signed = image(repository, v2)
    push_legacy_signatures(
        v2, repository, signed.digest, [legacy_signature(key, signed.digest, repository)]
    )
    assert pull(v2, repository, "v1").status_code == 200

    # An unsigned runnable image under cosign's tag name ...
    disguised_tag = signature_tag("sha256:" + "ab" * 32)
    image(repository, v2, disguised_tag)
    assert "no cosign signature found" in denied(v2, repository, disguised_tag)
    # ... or pushed as a referrer of the signed image: both are images, both are checked.
    unsigned = tiny_image(f"signing-referrer-{next(_labels)}")
    for blob in unsigned.blobs:
        push_blob(v2, repository, blob)
    document = json.loads(unsigned.manifest.data)
    document["subject"] = signed.descriptor()
    referrer = Blob(OCI_MANIFEST, json.dumps(document).encode())
    push_manifest(v2, repository, referrer.digest, referrer)
    assert "no cosign signature found" in denied(v2, repository, referrer.digest)


def test_every_worker_follows_a_policy_change(
    start_registry: Callable[..., RegistryProcess],
) -> None:
    server = start_registry(workers=2)
    with (
        api_client(server) as admin,
        httpx.Client(base_url=server.url, timeout=60, auth=RegistryAuth()) as client,
    ):
        project = create_project(admin)
        key = ec_key()
        add_key(admin, project, "ci-key", key)
        repository = f"{project}/app"
        manifest = image(repository, client)
        push_legacy_signatures(
            client,
            repository,
            manifest.digest,
            [legacy_signature(key, manifest.digest, repository)],
        )
        add_key(admin, project, "other", ec_key())
        set_rules(admin, project, {"verifiers": [cosign_verifier("v", "other")]})

        def statuses() -> set[int]:
            return {pull(client, repository, "v1").status_code for _ in range(6)}

        eventually(lambda: statuses() == {403}, what="every worker denies")
        set_rules(admin, project, {"verifiers": [cosign_verifier("v", "ci-key")]})
        eventually(lambda: statuses() == {200}, what="every worker allows")
