"""Signature verification without a server: cosign legacy and bundle signatures, Notation JWS,
rule selection and requirements, each with the cases that must fail and why."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from moorage.services.supply_chain.signature_policy import is_artifact_manifest
from moorage.signing import cosign, notation
from moorage.signing.keys import (
    KeyMaterialError,
    load_ca_certificates,
    load_public_key,
)
from moorage.signing.trust import (
    CosignKeyVerifier,
    FoundSignature,
    Mode,
    NotationVerifier,
    PolicyError,
    SignatureKind,
    Subject,
    TrustMaterial,
    TrustResult,
    TrustRule,
    evaluate_rule,
    make_rule,
    select_rule,
)
from tests.support.images import tiny_image
from tests.support.signing import (
    JWS_TYPE,
    LegacySignature,
    NotationPki,
    PrivateKey,
    Signer,
    dsse_bundle,
    ec_key,
    ed25519_key,
    legacy_signature,
    legacy_signature_manifest,
    message_signature_bundle,
    notation_envelope,
    pem,
    public_pem,
    rsa_key,
    self_signed_signer,
)


@pytest.fixture
def now() -> dt.datetime:
    """The test's start: certificates and signatures are made relative to it while the test
    runs, never when the module is collected, which may be minutes earlier."""
    return dt.datetime.now(dt.UTC)


IMAGE = tiny_image("signing-verify").manifest
OTHER = tiny_image("signing-other").manifest
REPOSITORY = "team/app"
SUBJECT = Subject(REPOSITORY, IMAGE.digest, IMAGE.media_type, IMAGE.size, IMAGE.data)
COSIGN = CosignKeyVerifier("ci", ("ci-key",))


def material(key: PrivateKey | None = None, roots: str | None = None) -> TrustMaterial:
    keys = {"ci-key": load_public_key(public_pem(key))} if key is not None else {}
    stores = (
        {"acme": tuple(info.certificate for info in load_ca_certificates(roots))}
        if roots is not None
        else {}
    )
    return TrustMaterial(keys, stores)


def rule(
    *verifiers: CosignKeyVerifier | NotationVerifier,
    require: str = "any-of",
    count: int | None = None,
    mode: str = "enforce",
) -> TrustRule:
    return make_rule("**", mode, require, count, list(verifiers), 1)


def legacy_found(signatures: Sequence[LegacySignature]) -> list[FoundSignature]:
    _, manifest = legacy_signature_manifest(signatures)
    layers = cosign.legacy_layers(manifest.data)
    return [
        FoundSignature(
            SignatureKind.COSIGN_LEGACY,
            manifest.digest,
            s.payload,
            cosign.SIMPLE_SIGNING_MEDIA_TYPE,
            layer,
        )
        for s, layer in zip(signatures, layers, strict=True)
    ]


def bundle_found(bundle: bytes) -> list[FoundSignature]:
    return [FoundSignature(SignatureKind.SIGSTORE_BUNDLE, "sha256:" + "1" * 64, bundle)]


def notation_found(envelope: bytes) -> list[FoundSignature]:
    return [FoundSignature(SignatureKind.NOTATION, "sha256:" + "2" * 64, envelope, JWS_TYPE)]


def check(
    the_rule: TrustRule, signatures: Sequence[FoundSignature], trust: TrustMaterial
) -> TrustResult:
    # Verified now, after the signatures were made: the wall clock only moves forward.
    return evaluate_rule(the_rule, SUBJECT, signatures, trust, dt.datetime.now(dt.UTC), 3)


# -- cosign legacy


@pytest.mark.parametrize(
    "key",
    [ec_key(), rsa_key(2048), ed25519_key()],
    ids=["ecdsa-p256", "rsa-pkcs1v15", "ed25519"],
)
def test_a_legacy_cosign_signature_verifies_with_each_key_type(key: PrivateKey) -> None:
    found = legacy_found([legacy_signature(key, IMAGE.digest, REPOSITORY)])
    result = check(rule(COSIGN), found, material(key))
    assert result.satisfied, result.reason
    assert result.outcomes[0].signers == ("ci-key",)


def test_rsa_pss_signatures_verify_too() -> None:
    key = rsa_key(3072)
    found = legacy_found([legacy_signature(key, IMAGE.digest, REPOSITORY, pss=True)])
    assert check(rule(COSIGN), found, material(key)).satisfied


def test_one_good_layer_among_foreign_signatures_is_enough() -> None:
    key, stranger = ec_key(), ec_key()
    found = legacy_found(
        [
            legacy_signature(stranger, IMAGE.digest, REPOSITORY),
            legacy_signature(key, IMAGE.digest, REPOSITORY),
        ]
    )
    assert check(rule(COSIGN), found, material(key)).satisfied


def test_legacy_signatures_that_must_fail_say_why() -> None:
    key = ec_key()
    good = legacy_signature(key, IMAGE.digest, REPOSITORY)
    # Wrong key.
    result = check(rule(COSIGN), legacy_found([good]), material(ec_key()))
    assert not result.satisfied
    assert "does not verify with ci-key" in result.reason
    # Wrong digest: a valid signature by the trusted key, over another image.
    other = legacy_signature(key, OTHER.digest, REPOSITORY)
    result = check(rule(COSIGN), legacy_found([other]), material(key))
    assert f"signs {OTHER.digest}, not {IMAGE.digest}" in result.reason
    # Tampered payload: the bytes changed after signing (and the descriptor followed them).
    document = json.loads(good.payload)
    document["optional"] = {"creator": "mallory"}
    tampered = LegacySignature(json.dumps(document).encode(), good.signature)
    result = check(rule(COSIGN), legacy_found([tampered]), material(key))
    assert "does not verify with ci-key" in result.reason
    # A payload that is not what its layer descriptor says.
    (found,) = legacy_found([good])
    swapped = FoundSignature(
        found.kind, found.source, tampered.payload, found.media_type, found.legacy
    )
    assert "does not match its digest" in check(rule(COSIGN), [swapped], material(key)).reason
    # No signature at all.
    assert "no cosign signature found" in check(rule(COSIGN), [], material(key)).reason


def test_a_wrong_signature_type_is_refused() -> None:
    key = ec_key()
    payload = json.dumps(
        {"critical": {"image": {"docker-manifest-digest": IMAGE.digest}, "type": "other"}}
    ).encode()
    signature = LegacySignature(payload, legacy_signature(key, IMAGE.digest, "x").signature)
    result = check(rule(COSIGN), legacy_found([signature]), material(key))
    assert "type is not" in result.reason


# -- sigstore bundles


def test_message_signature_and_dsse_bundles_verify() -> None:
    key = ec_key()
    for bundle in (
        message_signature_bundle(key, IMAGE.data),
        dsse_bundle(key, IMAGE.digest, REPOSITORY),
    ):
        result = check(rule(COSIGN), bundle_found(bundle), material(key))
        assert result.satisfied, result.reason
    ed = ed25519_key()
    assert check(
        rule(COSIGN), bundle_found(message_signature_bundle(ed, IMAGE.data)), material(ed)
    ).satisfied


def test_bundles_that_must_fail_say_why() -> None:
    key = ec_key()
    cases = {
        "does not verify": (dsse_bundle(ec_key(), IMAGE.digest, REPOSITORY), key),
        "is not sha256": (dsse_bundle(key, OTHER.digest, REPOSITORY), key),
        "message signature is over": (message_signature_bundle(key, OTHER.data), key),
        "attestation": (
            dsse_bundle(
                key, IMAGE.digest, REPOSITORY, predicate_type="https://slsa.dev/provenance/v1"
            ),
            key,
        ),
        "keyless signatures are not supported": (
            dsse_bundle(key, IMAGE.digest, REPOSITORY, certificate=b"\x30\x00"),
            key,
        ),
        "not valid JSON": (b"{", key),
    }
    for expected, (bundle, trusted) in cases.items():
        result = check(rule(COSIGN), bundle_found(bundle), material(trusted))
        assert not result.satisfied
        assert expected in result.reason or (
            expected == "is not sha256" and f"subject is not {IMAGE.digest}" in result.reason
        ), (expected, result.reason)


# -- Notation


@pytest.fixture(scope="module")
def pki() -> NotationPki:
    return NotationPki()


def notation_rule(pki: NotationPki, *identities: str) -> TrustRule:
    return rule(NotationVerifier("release", ("acme",), identities or (pki.identity(),)))


def test_a_notation_signature_verifies_with_ecdsa_and_rsa_leaves(pki: NotationPki) -> None:
    for key in (ec_key(), ec_key(ec.SECP384R1()), rsa_key(2048), rsa_key(3072)):
        envelope = notation_envelope(pki.leaf(key), IMAGE)
        result = check(notation_rule(pki), notation_found(envelope), material(roots=pem(pki.root)))
        assert result.satisfied, result.reason
        assert "CN=Release Signer" in result.outcomes[0].signers[0]


def test_notation_signatures_that_must_fail_say_why(pki: NotationPki, now: dt.datetime) -> None:
    roots = material(roots=pem(pki.root))
    past = now - dt.timedelta(days=10)
    cases = {
        "is not trusted": (
            notation_envelope(pki.leaf(), IMAGE),
            material(roots=pem(NotationPki().root)),
        ),
        "codeSigning": (notation_envelope(pki.leaf(code_signing=False), IMAGE), roots),
        "not trusted now": (
            notation_envelope(
                pki.leaf(not_before=past, not_after=now - dt.timedelta(days=1)),
                IMAGE,
                signing_time=now - dt.timedelta(days=5),
            ),
            roots,
        ),
        f"not {IMAGE.digest}": (
            notation_envelope(pki.leaf(), IMAGE, target_digest=OTHER.digest),
            roots,
        ),
        "does not verify": (notation_envelope(pki.leaf(), IMAGE, tamper=True), roots),
        "is not understood": (
            notation_envelope(
                pki.leaf(), IMAGE, extra_critical=["io.cncf.notary.verificationPlugin"]
            ),
            roots,
        ),
        "does not match the signing key": (
            notation_envelope(pki.leaf(), IMAGE, alg="ES384"),
            roots,
        ),
        "expired at": (
            notation_envelope(pki.leaf(), IMAGE, expiry=now - dt.timedelta(seconds=5)),
            roots,
        ),
        "not a trusted identity": (
            notation_envelope(pki.leaf(common_name="Someone Else"), IMAGE),
            roots,
        ),
    }
    for expected, (envelope, trust) in cases.items():
        result = check(notation_rule(pki), notation_found(envelope), trust)
        assert not result.satisfied, expected
        assert expected in result.reason, (expected, result.reason)


def test_an_unexpired_signature_and_a_wildcard_identity_pass(
    pki: NotationPki, now: dt.datetime
) -> None:
    envelope = notation_envelope(
        pki.leaf(common_name="Anyone"), IMAGE, expiry=now + dt.timedelta(days=1)
    )
    result = check(notation_rule(pki, "*"), notation_found(envelope), material(roots=pem(pki.root)))
    assert result.satisfied, result.reason


def test_trusted_identities_match_on_the_named_attributes() -> None:
    pki = NotationPki(organization="Acme, Inc")
    signer = pki.leaf()
    leaf = signer.chain[0]
    assert notation.identity_matches(
        notation.parse_identity("x509.subject: O=Acme\\, Inc, CN=Release Signer"), leaf
    )
    assert not notation.identity_matches(
        notation.parse_identity("x509.subject: O=Acme, CN=Release Signer"), leaf
    )
    assert not notation.identity_matches(notation.parse_identity("x509.subject: OU=Ops"), leaf)
    for bad in (
        "CN=x",
        "x509.subject: ",
        "x509.subject: CN",
        "x509.subject: XX=1",
        "x509.subject: CN=a, CN=b",
    ):
        with pytest.raises(ValueError, match=r"identity|attribute"):
            notation.parse_identity(bad)


# -- rules and requirements


def test_the_most_specific_rule_wins() -> None:
    def r(pattern: str, rule_id: int) -> TrustRule:
        return make_rule(pattern, "audit", "any-of", None, [COSIGN], rule_id)

    rules = [
        r("**", 1),
        r("prod/**", 2),
        r("prod/api", 3),
        r("prod/a*", 4),
        r("prod/*", 5),
        r("*/api", 6),
    ]
    assert select_rule(rules, "prod/api") == rules[2]  # exact
    assert select_rule(rules, "prod/app") == rules[3]  # longest literal prefix "prod/a"
    assert select_rule(rules, "prod/web") == rules[4]  # "prod/" and one wildcard beats "prod/**"
    assert select_rule(rules, "prod/web/x") == rules[1]
    assert select_rule(rules, "dev/api") == rules[5]  # literal prefix "" ties: fewer wildcards
    assert select_rule(rules, "dev/web") == rules[0]
    assert select_rule(rules[1:], "dev/web") is None
    assert select_rule(list(reversed(rules)), "prod/app") == rules[3]


def test_any_all_and_at_least_n(pki: NotationPki) -> None:
    first, second = ec_key(), ec_key()
    trust = TrustMaterial(
        {"a": load_public_key(public_pem(first)), "b": load_public_key(public_pem(second))},
        {"acme": (pki.root,)},
    )
    one = CosignKeyVerifier("one", ("a",))
    two = CosignKeyVerifier("two", ("b",))
    release = NotationVerifier("release", ("acme",), ("*",))
    signed_by_first = legacy_found([legacy_signature(first, IMAGE.digest, REPOSITORY)])
    both = signed_by_first + bundle_found(dsse_bundle(second, IMAGE.digest, REPOSITORY))

    def satisfied(require: str, count: int | None, signatures: list[FoundSignature]) -> bool:
        the_rule = make_rule("**", "enforce", require, count, [one, two, release], 1)
        return check(the_rule, signatures, trust).satisfied

    assert satisfied("any-of", None, signed_by_first)
    assert not satisfied("all-of", None, both)
    assert satisfied("at-least", 2, both)
    assert not satisfied("at-least", 2, signed_by_first)
    everything = both + notation_found(notation_envelope(pki.leaf(), IMAGE))
    assert satisfied("all-of", None, everything)
    result = check(make_rule("**", "enforce", "at-least", 3, [one, two, release], 1), both, trust)
    assert "at-least 3 of 3 verifiers, 2 satisfied" in result.reason
    assert "notation verifier release: no Notation signature found" in result.reason


@pytest.mark.parametrize(
    ("require", "count", "verifiers", "message"),
    [
        ("at-least", None, 1, "count"),
        ("at-least", 3, 2, "count"),
        ("any-of", 1, 1, "only given"),
        ("sometimes", None, 1, "require is"),
        ("any-of", None, 0, "at least one verifier"),
        ("any-of", None, 9, "at most 8"),
    ],
)
def test_invalid_rules_are_refused(
    require: str, count: int | None, verifiers: int, message: str
) -> None:
    specs = [CosignKeyVerifier(f"v{index}", ("k",)) for index in range(verifiers)]
    with pytest.raises(PolicyError, match=message):
        make_rule("**", "enforce", require, count, specs)
    with pytest.raises(PolicyError):
        make_rule("App/*", "enforce", "any-of", None, [COSIGN])
    with pytest.raises(PolicyError, match="differ"):
        make_rule("**", "enforce", "any-of", None, [COSIGN, COSIGN])


def test_an_off_rule_needs_nothing() -> None:
    result = check(make_rule("**", "off", "any-of", None, [], 7), [], TrustMaterial())
    assert result.satisfied
    assert result.mode is Mode.OFF


# -- key material


def test_public_keys_are_validated_and_described() -> None:
    info = load_public_key(public_pem(ec_key()))
    assert info.algorithm == "ecdsa-p256"
    assert len(info.fingerprint) == 64
    assert load_public_key(public_pem(rsa_key(3072))).algorithm == "rsa-3072"
    assert load_public_key(public_pem(ed25519_key())).algorithm == "ed25519"
    from tests.support.signing import private_pem

    for bad, message in (
        (private_pem(ec_key()), "private key"),
        ("hello", "exactly one PEM block"),
        ("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "not a valid"),
        (public_pem(rsa_key(1024)), "2048"),
        (public_pem(ec_key(ec.SECP256K1())), "not accepted"),
        (public_pem(ec_key()) * 2, "exactly one"),
        ("x" * 20000, "at most"),
    ):
        with pytest.raises(KeyMaterialError, match=message):
            load_public_key(bad)


def test_trust_stores_hold_only_ca_certificates(pki: NotationPki) -> None:
    infos = load_ca_certificates(pem(pki.root, pki.intermediate))
    assert [info.subject.split(",")[0] for info in infos] == [
        "CN=Test Root",
        "CN=Test Intermediate",
    ]
    leaf = pki.leaf().chain[0]
    with pytest.raises(KeyMaterialError, match="neither a CA"):
        load_ca_certificates(pem(leaf))
    with pytest.raises(KeyMaterialError, match="twice"):
        load_ca_certificates(pem(pki.root, pki.root))
    with pytest.raises(KeyMaterialError):
        load_ca_certificates(public_pem(ec_key()))


def test_signature_tags_follow_cosign() -> None:
    assert cosign.signature_tag("sha256:" + "ab" * 32) == "sha256-" + "ab" * 32 + ".sig"


def test_artifacts_are_recognised_by_content() -> None:
    key = ec_key()
    _, legacy = legacy_signature_manifest([legacy_signature(key, IMAGE.digest, REPOSITORY)])
    assert is_artifact_manifest(legacy.data)  # image config, simple-signing layers
    referrer = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.cncf.notary.signature",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": "x", "size": 2},
        "layers": [{"mediaType": "application/jose+json", "digest": "y", "size": 9}],
        "subject": {"mediaType": IMAGE.media_type, "digest": IMAGE.digest, "size": IMAGE.size},
    }
    assert is_artifact_manifest(json.dumps(referrer).encode())
    assert not is_artifact_manifest(IMAGE.data)
    runnable_referrer = json.loads(IMAGE.data) | {"subject": referrer["subject"]}
    assert not is_artifact_manifest(json.dumps(runnable_referrer).encode())
    child = {"mediaType": IMAGE.media_type, "digest": IMAGE.digest, "size": IMAGE.size}
    images = {"schemaVersion": 2, "manifests": [child], "artifactType": "application/x"}
    assert not is_artifact_manifest(json.dumps(images).encode())
    # An index is judged through what it reaches, not by its children's descriptors.
    referrers_tag = {"schemaVersion": 2, "manifests": [child | {"artifactType": "application/x"}]}
    assert not is_artifact_manifest(json.dumps(referrers_tag).encode())
    assert not is_artifact_manifest(b"not json")


def test_a_self_signed_signing_certificate_is_its_own_trust_anchor() -> None:
    signer = self_signed_signer()
    the_rule = rule(NotationVerifier("test", ("acme",), ("x509.subject: CN=moorage.test",)))
    envelope = notation_envelope(signer, IMAGE)
    result = check(the_rule, notation_found(envelope), material(roots=pem(signer.chain[0])))
    assert result.satisfied, result.reason
    other = self_signed_signer()
    refused = check(the_rule, notation_found(envelope), material(roots=pem(other.chain[0])))
    assert "is not trusted" in refused.reason


def test_a_notation_result_holds_until_its_certificate_or_signature_expires(
    pki: NotationPki, now: dt.datetime
) -> None:
    soon = now + dt.timedelta(hours=3)
    signer = pki.leaf(not_after=soon)
    result = check(
        notation_rule(pki),
        notation_found(notation_envelope(signer, IMAGE)),
        material(roots=pem(pki.root)),
    )
    assert result.satisfied, result.reason
    assert result.valid_until == soon.replace(microsecond=0)
    sooner = now + dt.timedelta(hours=1)
    envelope = notation_envelope(pki.leaf(), IMAGE, expiry=sooner)
    result = check(notation_rule(pki), notation_found(envelope), material(roots=pem(pki.root)))
    assert result.valid_until == sooner.replace(microsecond=0)
    key = ec_key()
    cosign_result = check(
        rule(COSIGN), legacy_found([legacy_signature(key, IMAGE.digest, REPOSITORY)]), material(key)
    )
    assert cosign_result.valid_until is None  # a key does not expire


@dataclass(frozen=True)
class _Fuzzed:
    pki: NotationPki
    signer: Signer
    key: ec.EllipticCurvePrivateKey
    valid: tuple[bytes, ...]


@pytest.fixture(scope="module")
def fuzzed() -> _Fuzzed:
    """Valid signature material to mutate, made when the tests run (certificates are dated)."""
    pki = NotationPki()
    signer = pki.leaf()
    key = ec_key()
    valid = (
        notation_envelope(signer, IMAGE),
        dsse_bundle(key, IMAGE.digest, REPOSITORY),
        message_signature_bundle(key, IMAGE.data),
    )
    return _Fuzzed(pki, signer, key, valid)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_malformed_signature_material_never_breaks_evaluation(
    fuzzed: _Fuzzed, data: st.DataObject
) -> None:
    original = data.draw(st.sampled_from(fuzzed.valid))
    position = data.draw(st.integers(0, len(original) - 1))
    replacement = data.draw(st.binary(min_size=0, max_size=8))
    mutated = original[:position] + replacement + original[position + 1 :]
    found = notation_found(mutated) + bundle_found(mutated)
    trust = TrustMaterial(
        {"ci-key": load_public_key(public_pem(fuzzed.key))}, {"acme": (fuzzed.pki.root,)}
    )
    the_rule = rule(COSIGN, NotationVerifier("release", ("acme",), ("*",)), require="all-of")
    result = check(the_rule, found, trust)
    assert isinstance(result.reason, str)


def test_a_leaf_certificate_whose_key_does_not_load_is_a_reason_not_a_crash(
    fuzzed: _Fuzzed,
) -> None:
    """A certificate can parse and still carry an EC point off the curve: its key never loads."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    leaf = fuzzed.signer.chain[0]
    point = leaf.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    der = leaf.public_bytes(serialization.Encoding.DER)
    assert der.count(point) == 1
    off_curve = point[:-1] + bytes([point[-1] ^ 0x01])
    broken = x509.load_der_x509_certificate(der.replace(point, off_curve))
    with pytest.raises(ValueError, match="Invalid"):
        broken.public_key()
    envelope = notation.parse_envelope(notation_envelope(fuzzed.signer, IMAGE))
    reason = notation.check_signature(
        notation.Envelope(
            envelope.signed,
            envelope.protected,
            envelope.payload,
            envelope.signature,
            (broken, *envelope.chain[1:]),
        )
    )
    assert reason is not None
    assert "cannot be used" in reason
