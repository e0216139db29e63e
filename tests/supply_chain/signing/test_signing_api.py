"""The trust management API: keys, trust stores and rules are validated, capped, versioned,
permission-checked and audited."""

from __future__ import annotations

from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.api import (
    PASSWORD,
    api_client,
    assert_problem,
    create_project,
    create_user,
    eventually,
    set_role,
)
from tests.support.server import RegistryProcess
from tests.support.signing import (
    NotationPki,
    ec_key,
    ed25519_key,
    pem,
    private_pem,
    public_pem,
    rsa_key,
)

MAX_RULES = 32  # docs/signing.md: "32 rules of at most 8 verifiers"


def paths(project: str) -> tuple[str, str, str]:
    base = f"/projects/{project}"
    return f"{base}/trust-keys", f"{base}/trust-stores", f"{base}/trust-policies"


def version(admin: httpx.Client, project: str) -> int:
    response = admin.get(paths(project)[2])
    assert response.status_code == 200, response.text
    return int(response.json()["version"])


def test_keys_are_validated_described_and_versioned(admin_api: httpx.Client) -> None:
    project = create_project(admin_api)
    keys, _, _ = paths(project)
    assert admin_api.get(keys).json() == []
    assert version(admin_api, project) == 0

    added = {}
    for name, key, algorithm in (
        ("ci", ec_key(), "ecdsa-p256"),
        ("legacy", rsa_key(3072), "rsa-3072"),
        ("edge", ed25519_key(), "ed25519"),
    ):
        response = admin_api.post(
            keys, json={"name": name, "pem": public_pem(key), "description": "x"}
        )
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["algorithm"] == algorithm
        assert len(body["fingerprint"]) == 64
        assert body["pem"].startswith("-----BEGIN PUBLIC KEY-----")
        assert body["createdBy"] == "admin"
        added[name] = body
    assert version(admin_api, project) == 3
    assert [key["name"] for key in admin_api.get(keys).json()] == ["ci", "legacy", "edge"]
    assert admin_api.get(f"{keys}/ci").json() == added["ci"]
    assert_problem(admin_api.get(f"{keys}/nope"), 404)

    for bad in (
        {"name": "priv", "pem": private_pem(ec_key())},
        {"name": "junk", "pem": "-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----"},
        {"name": "small", "pem": public_pem(rsa_key(1024))},
        {"name": "curve", "pem": public_pem(ec_key(ec.SECP256K1()))},
        {"name": "two", "pem": public_pem(ec_key()) + public_pem(ec_key())},
    ):
        problem = assert_problem(admin_api.post(keys, json=bad), 422)
        # The submitted material is never echoed.
        assert bad["pem"].splitlines()[1] not in problem["detail"]
    for bad_shape in (
        {"name": "Upper", "pem": public_pem(ec_key())},
        {"pem": public_pem(ec_key())},
        {"name": "long", "pem": "x" * 20_000},
        {"name": "extra", "pem": public_pem(ec_key()), "private": True},
    ):
        assert_problem(admin_api.post(keys, json=bad_shape), 422)
    assert_problem(admin_api.post(keys, json={"name": "ci", "pem": public_pem(ec_key())}), 409)
    assert version(admin_api, project) == 3  # refusals change nothing

    assert admin_api.delete(f"{keys}/edge").status_code == 204
    assert_problem(admin_api.delete(f"{keys}/edge"), 404)
    assert version(admin_api, project) == 4


def test_trust_stores_hold_ca_certificates_only(admin_api: httpx.Client) -> None:
    project = create_project(admin_api)
    _, stores, _ = paths(project)
    pki, other = NotationPki(), NotationPki()
    response = admin_api.post(stores, json={"name": "acme", "certificates": pem(pki.root)})
    assert response.status_code == 201, response.text
    (certificate,) = response.json()["certificates"]
    assert certificate["subject"].startswith("CN=Test Root")
    assert len(certificate["fingerprint"]) == 64

    leaf = pki.leaf().chain[0]
    problem = assert_problem(
        admin_api.post(stores, json={"name": "leaf", "certificates": pem(leaf)}), 422
    )
    assert "neither a CA certificate" in problem["detail"]
    assert_problem(
        admin_api.post(stores, json={"name": "key", "certificates": public_pem(ec_key())}), 422
    )
    assert_problem(
        admin_api.post(stores, json={"name": "acme", "certificates": pem(other.root)}), 409
    )

    replaced = admin_api.put(f"{stores}/acme", json={"certificates": pem(pki.root, other.root)})
    assert replaced.status_code == 200, replaced.text
    assert len(replaced.json()["certificates"]) == 2
    assert len(admin_api.get(f"{stores}/acme").json()["certificates"]) == 2
    assert_problem(admin_api.put(f"{stores}/nope", json={"certificates": pem(pki.root)}), 404)
    assert admin_api.delete(f"{stores}/acme").status_code == 204
    assert admin_api.get(stores).json() == []


def test_rules_are_validated_capped_and_name_what_exists(admin_api: httpx.Client) -> None:
    project = create_project(admin_api)
    keys, stores, policies = paths(project)
    admin_api.post(keys, json={"name": "ci", "pem": public_pem(ec_key())})
    admin_api.post(stores, json={"name": "acme", "certificates": pem(NotationPki().root)})
    cosign = {"name": "ci", "type": "cosign-key", "keys": ["ci"]}
    notation = {
        "name": "release",
        "type": "notation",
        "trustStores": ["acme"],
        "trustedIdentities": ["x509.subject: O=Acme, CN=Release"],
    }
    created = admin_api.post(
        policies,
        json={"repositories": "prod/**", "verifiers": [cosign, notation], "require": "all-of"},
    )
    assert created.status_code == 201, created.text
    rule = created.json()
    assert rule["verifiers"] == [cosign, notation]
    assert admin_api.get(f"{policies}/{rule['id']}").json() == rule

    for bad, status in (
        ({"verifiers": [{**cosign, "keys": ["missing"]}]}, 422),
        ({"verifiers": [{**notation, "trustStores": ["missing"]}]}, 422),
        ({"verifiers": [{**notation, "trustedIdentities": ["CN=Release"]}]}, 422),
        ({"verifiers": [cosign], "require": "at-least", "count": 2}, 422),
        ({"verifiers": [cosign], "require": "at-least"}, 422),
        ({"verifiers": [cosign], "count": 1}, 422),
        ({"verifiers": [cosign], "mode": "block"}, 422),
        ({"verifiers": []}, 422),
        ({"verifiers": [cosign, cosign]}, 422),
        ({"verifiers": [{**cosign, "type": "cosign-keyless"}]}, 422),
        ({"verifiers": [cosign], "repositories": "Prod/*"}, 422),
        ({"repositories": "prod/**", "verifiers": [cosign]}, 409),
    ):
        assert_problem(admin_api.post(policies, json=bad), status)

    # A key or store a rule names cannot be removed.
    assert "trust rule" in assert_problem(admin_api.delete(f"{keys}/ci"), 409)["detail"]
    assert_problem(admin_api.delete(f"{stores}/acme"), 409)

    many = [
        {"repositories": f"r{index}/**", "verifiers": [cosign]} for index in range(MAX_RULES + 1)
    ]
    assert_problem(admin_api.put(policies, json={"rules": many}), 422)
    before = version(admin_api, project)
    replaced = admin_api.put(policies, json={"rules": many[:MAX_RULES]})
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["version"] == before + 1
    assert len(replaced.json()["rules"]) == MAX_RULES
    assert (
        "at most"
        in assert_problem(admin_api.post(policies, json={"verifiers": [cosign]}), 400)["detail"]
    )
    repeated = {"rules": [{"verifiers": [cosign]}, {"verifiers": [cosign]}]}
    assert_problem(admin_api.put(policies, json=repeated), 422)

    assert admin_api.put(policies, json={"rules": []}).json()["rules"] == []
    assert admin_api.delete(f"{keys}/ci").status_code == 204
    assert_problem(admin_api.delete(f"{policies}/{rule['id']}"), 404)
    assert_problem(admin_api.get(paths("no-such-project")[2]), 404)


def test_only_those_who_manage_policies_change_trust(
    api_registry: RegistryProcess, admin_api: httpx.Client
) -> None:
    project = create_project(admin_api)
    keys, stores, policies = paths(project)
    admin_api.post(keys, json={"name": "ci", "pem": public_pem(ec_key())})
    developer, maintainer, outsider = (create_user(admin_api) for _ in range(3))
    set_role(admin_api, project, developer, "developer")
    set_role(admin_api, project, maintainer, "maintainer")
    key = {"name": "more", "pem": public_pem(ec_key())}
    with api_client(api_registry, developer, PASSWORD) as client:
        assert [k["name"] for k in client.get(keys).json()] == ["ci"]
        assert client.get(policies).status_code == 200
        assert client.get(stores).status_code == 200
        assert_problem(client.post(keys, json=key), 403)
        assert_problem(client.delete(f"{keys}/ci"), 403)
        assert_problem(client.put(policies, json={"rules": []}), 403)
    with api_client(api_registry, outsider, PASSWORD) as client:
        assert_problem(client.get(keys), 403)
        assert_problem(client.get(policies), 403)
    with api_client(api_registry, maintainer, PASSWORD) as client:
        assert client.post(keys, json=key).status_code == 201
        assert client.delete(f"{keys}/more").status_code == 204


def test_every_change_is_audited_without_key_material(admin_api: httpx.Client) -> None:
    project = create_project(admin_api)
    keys, stores, policies = paths(project)
    pki = NotationPki()
    key = admin_api.post(keys, json={"name": "ci", "pem": public_pem(ec_key())}).json()
    admin_api.post(stores, json={"name": "acme", "certificates": pem(pki.root)})
    admin_api.put(f"{stores}/acme", json={"certificates": pem(pki.root, pki.intermediate)})
    cosign = {"name": "ci", "type": "cosign-key", "keys": ["ci"]}
    rule = admin_api.post(policies, json={"verifiers": [cosign], "mode": "audit"}).json()
    admin_api.put(policies, json={"rules": [{"repositories": "prod/**", "verifiers": [cosign]}]})
    added = admin_api.get(policies).json()["rules"][0]
    assert admin_api.delete(f"{policies}/{added['id']}").status_code == 204
    assert admin_api.delete(f"{stores}/acme").status_code == 204
    assert admin_api.delete(f"{keys}/ci").status_code == 204

    def entries(action: str) -> list[dict[str, Any]]:
        response = admin_api.get("/audit-logs", params={"project": project, "action": action})
        assert response.status_code == 200, response.text
        found: list[dict[str, Any]] = response.json()
        return found

    actions = (
        "trust-key:add",
        "trust-key:delete",
        "trust-store:add",
        "trust-store:update",
        "trust-store:delete",
        "trust-rule:create",
        "trust-rule:replace",
        "trust-rule:delete",
    )
    eventually(lambda: all(entries(action) for action in actions), what="audit entries")
    (add,) = entries("trust-key:add")
    assert add["actor"] == "admin"
    assert add["resource"] == f"project:{project}"
    assert add["details"] == {
        "name": "ci",
        "algorithm": "ecdsa-p256",
        "fingerprint": key["fingerprint"],
    }
    (update,) = entries("trust-store:update")
    assert len(update["details"]["certificates"]) == 2
    (create,) = entries("trust-rule:create")
    assert create["details"]["rule"]["id"] == rule["id"]
    assert create["details"]["rule"]["mode"] == "audit"
    (replace,) = entries("trust-rule:replace")
    assert [r["id"] for r in replace["details"]["removed"]] == [rule["id"]]
    assert replace["details"]["rules"][0]["repositories"] == "prod/**"
    (delete,) = entries("trust-rule:delete")
    assert delete["details"]["rule"]["id"] == added["id"]
    every = [entry for action in actions for entry in entries(action)]
    assert all("BEGIN" not in str(entry["details"]) for entry in every)


def test_the_trust_routes_are_in_the_openapi_document(api_registry: RegistryProcess) -> None:
    document = httpx.get(f"{api_registry.url}/api/v1/openapi.json").json()
    base = "/api/v1/projects/{project}"
    expected = {
        f"{base}/trust-keys": {"get": "read-project", "post": "manage-policies"},
        f"{base}/trust-keys/{{key}}": {"get": "read-project", "delete": "manage-policies"},
        f"{base}/trust-stores": {"get": "read-project", "post": "manage-policies"},
        f"{base}/trust-stores/{{store}}": {
            "get": "read-project",
            "put": "manage-policies",
            "delete": "manage-policies",
        },
        f"{base}/trust-policies": {
            "get": "read-project",
            "post": "manage-policies",
            "put": "manage-policies",
        },
        f"{base}/trust-policies/{{rule}}": {"get": "read-project", "delete": "manage-policies"},
        f"{base}/trust-evaluation": {"get": "read-project"},
    }
    for path, methods in expected.items():
        for method, action in methods.items():
            assert document["paths"][path][method]["x-permission"] == f"project:{action}"
    schemas = document["components"]["schemas"]
    assert schemas["NewTrustRule"]["properties"]["require"]["enum"] == [
        "any-of",
        "all-of",
        "at-least",
    ]
    assert schemas["TrustRuleSet"]["properties"]["rules"]["maxItems"] == MAX_RULES
