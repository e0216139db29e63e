"""Signatures made in the tests, in the exact formats cosign and notation write, and pushed as
those clients push them.

- cosign legacy: an image manifest tagged `sha256-<hex>.sig` whose simple-signing layers carry
  the base64 signature in `dev.cosignproject.cosign/signature` (what `cosign sign --key` does).
- cosign bundles: a referrer with `artifactType application/vnd.dev.sigstore.bundle.v0.3+json`,
  the empty config and the bundle JSON as its layer (`cosign sign --new-bundle-format`).
- Notation: a referrer with `artifactType application/vnd.cncf.notary.signature` (or that value
  as the config media type, as older notation releases and oras push it) whose layer is a JWS.

Keys and certificates come from `cryptography`: a root CA → intermediate → leaf chain with the
codeSigning EKU, with knobs for the broken variants.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.images import Blob, push_blob, push_manifest

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
COSIGN_SIGNATURE = "dev.cosignproject.cosign/signature"
BUNDLE_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
NOTARY_TYPE = "application/vnd.cncf.notary.signature"
JWS_TYPE = "application/jose+json"
NOTARY_PAYLOAD = "application/vnd.cncf.notary.payload.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
EMPTY_CONFIG = Blob(OCI_EMPTY, b"{}")
COSIGN_PREDICATE = "https://sigstore.dev/cosign/sign/v1"

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def _json(document: Any) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# -- keys


def ec_key(curve: ec.EllipticCurve | None = None) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(curve or ec.SECP256R1())


def rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def ed25519_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def public_pem(key: PrivateKey) -> str:
    """What `cosign generate-key-pair` writes to cosign.pub."""
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def private_pem(key: PrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def cosign_sign(key: PrivateKey, data: bytes, *, pss: bool = False) -> bytes:
    """A signature as cosign makes it: ECDSA (DER) or RSA PKCS#1 v1.5 (or PSS) over SHA-256;
    Ed25519 over the data itself."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(hashes.SHA256()))
    if isinstance(key, rsa.RSAPrivateKey):
        scheme: padding.AsymmetricPadding = (
            padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
            if pss
            else padding.PKCS1v15()
        )
        return key.sign(data, scheme, hashes.SHA256())
    return key.sign(data)


# -- cosign legacy (.sig tag)


def simple_signing_payload(image_digest: str, reference: str) -> bytes:
    return _json(
        {
            "critical": {
                "identity": {"docker-reference": reference},
                "image": {"docker-manifest-digest": image_digest},
                "type": "cosign container image signature",
            },
            "optional": {"creator": "moorage tests"},
        }
    )


@dataclass(frozen=True)
class LegacySignature:
    """One layer of a `.sig` manifest: a payload and the base64 signature annotated on it."""

    payload: bytes
    signature: str
    certificate: str | None = None

    @property
    def blob(self) -> Blob:
        return Blob(SIMPLE_SIGNING, self.payload)


def legacy_signature(
    key: PrivateKey, image_digest: str, reference: str, *, pss: bool = False
) -> LegacySignature:
    payload = simple_signing_payload(image_digest, reference)
    return LegacySignature(payload, b64(cosign_sign(key, payload, pss=pss)))


def legacy_signature_manifest(signatures: Sequence[LegacySignature]) -> tuple[Blob, Blob]:
    """(config, manifest) exactly as cosign builds a `.sig` image."""
    config = Blob(
        OCI_CONFIG,
        _json(
            {
                "architecture": "",
                "config": {},
                "created": "0001-01-01T00:00:00Z",
                "history": [{"created": "0001-01-01T00:00:00Z"}],
                "os": "",
                "rootfs": {
                    "type": "layers",
                    "diff_ids": [signature.blob.digest for signature in signatures],
                },
            }
        ),
    )
    layers = []
    for signature in signatures:
        annotations = {COSIGN_SIGNATURE: signature.signature}
        if signature.certificate is not None:
            annotations["dev.sigstore.cosign/certificate"] = signature.certificate
        layers.append(signature.blob.descriptor(annotations=annotations))
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.descriptor(),
        "layers": layers,
    }
    return config, Blob(OCI_MANIFEST, _json(manifest))


def signature_tag(image_digest: str) -> str:
    return image_digest.replace(":", "-") + ".sig"


def push_legacy_signatures(
    client: httpx.Client, repository: str, image_digest: str, signatures: Sequence[LegacySignature]
) -> str:
    """Push the payloads, config and manifest, tagged `sha256-<hex>.sig`; the manifest digest."""
    config, manifest = legacy_signature_manifest(signatures)
    for signature in signatures:
        push_blob(client, repository, signature.blob)
    push_blob(client, repository, config)
    return push_manifest(client, repository, signature_tag(image_digest), manifest)


# -- sigstore bundles (cosign --new-bundle-format)


def _hint(key: PrivateKey) -> str:
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return b64(hashlib.sha256(der).digest())


def message_signature_bundle(key: PrivateKey, manifest: bytes) -> bytes:
    """A bundle whose messageSignature signs the image manifest's bytes."""
    return _json(
        {
            "mediaType": BUNDLE_TYPE,
            "verificationMaterial": {"publicKey": {"hint": _hint(key)}, "tlogEntries": []},
            "messageSignature": {
                "messageDigest": {
                    "algorithm": "SHA2_256",
                    "digest": b64(hashlib.sha256(manifest).digest()),
                },
                "signature": b64(cosign_sign(key, manifest)),
            },
        }
    )


def pae(payload_type: str, payload: bytes) -> bytes:
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def dsse_bundle(
    key: PrivateKey,
    image_digest: str,
    name: str,
    *,
    predicate_type: str = COSIGN_PREDICATE,
    certificate: bytes | None = None,
) -> bytes:
    """A cosign v3 image signature: an in-toto statement in a DSSE envelope."""
    algorithm, hex_digest = image_digest.split(":", 1)
    statement = _json(
        {
            "_type": "https://in-toto.io/Statement/v1",
            "subject": [{"name": name, "digest": {algorithm: hex_digest}}],
            "predicateType": predicate_type,
            "predicate": {},
        }
    )
    payload_type = "application/vnd.in-toto+json"
    material: dict[str, Any] = (
        {"certificate": {"rawBytes": b64(certificate)}}
        if certificate is not None
        else {"publicKey": {"hint": _hint(key)}}
    )
    return _json(
        {
            "mediaType": BUNDLE_TYPE,
            "verificationMaterial": {**material, "tlogEntries": []},
            "dsseEnvelope": {
                "payload": b64(statement),
                "payloadType": payload_type,
                "signatures": [{"sig": b64(cosign_sign(key, pae(payload_type, statement)))}],
            },
        }
    )


def push_referrer(
    client: httpx.Client,
    repository: str,
    subject: Blob,
    layer: Blob,
    artifact_type: str | None,
    *,
    config: Blob = EMPTY_CONFIG,
    annotations: dict[str, str] | None = None,
    layer_annotations: dict[str, str] | None = None,
) -> str:
    """Push a referrer manifest (by digest, as cosign and notation do); its digest."""
    push_blob(client, repository, layer)
    push_blob(client, repository, config)
    document: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.descriptor(),
        "layers": [
            layer.descriptor(**({"annotations": layer_annotations} if layer_annotations else {}))
        ],
        "subject": subject.descriptor(),
    }
    if artifact_type is not None:
        document["artifactType"] = artifact_type
    if annotations:
        document["annotations"] = annotations
    manifest = Blob(OCI_MANIFEST, _json(document))
    return push_manifest(client, repository, manifest.digest, manifest)


def push_bundle(client: httpx.Client, repository: str, subject: Blob, bundle: bytes) -> str:
    content = "dsse-envelope" if b'"dsseEnvelope"' in bundle else "message-signature"
    return push_referrer(
        client,
        repository,
        subject,
        Blob(BUNDLE_TYPE, bundle),
        BUNDLE_TYPE,
        annotations={
            "dev.sigstore.bundle.content": content,
            "dev.sigstore.bundle.predicateType": COSIGN_PREDICATE,
            "org.opencontainers.image.created": "2026-12-01T00:00:00Z",
        },
        layer_annotations={
            "org.opencontainers.image.title": subject.digest.replace(":", "-") + ".sigstore.json"
        },
    )


# -- Notation: PKI and JWS


def _name(common_name: str, organization: str = "Moorage Tests") -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "WA"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _certificate(
    subject: x509.Name,
    key: PrivateKey,
    issuer: x509.Name,
    issuer_key: PrivateKey,
    *,
    ca: bool,
    eku: list[x509.ObjectIdentifier] | None = None,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - dt.timedelta(days=2))
        .not_valid_after(not_after or now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(_usage(ca=ca), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def pem(*certificates: x509.Certificate) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certificates)


@dataclass
class NotationPki:
    """A root CA, an intermediate and code-signing leaves issued below it."""

    organization: str = "Moorage Tests"
    root_key: ec.EllipticCurvePrivateKey = field(default_factory=ec_key)
    intermediate_key: ec.EllipticCurvePrivateKey = field(default_factory=ec_key)

    def __post_init__(self) -> None:
        root_name = _name("Test Root", self.organization)
        self.root = _certificate(root_name, self.root_key, root_name, self.root_key, ca=True)
        self.intermediate = _certificate(
            _name("Test Intermediate", self.organization),
            self.intermediate_key,
            root_name,
            self.root_key,
            ca=True,
        )

    def leaf(
        self,
        key: PrivateKey | None = None,
        *,
        common_name: str = "Release Signer",
        code_signing: bool = True,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> Signer:
        key = key or ec_key()
        eku = [ExtendedKeyUsageOID.CODE_SIGNING] if code_signing else None
        certificate = _certificate(
            _name(common_name, self.organization),
            key,
            self.intermediate.subject,
            self.intermediate_key,
            ca=False,
            eku=eku,
            not_before=not_before,
            not_after=not_after,
        )
        return Signer(key, (certificate, self.intermediate))

    def identity(self, common_name: str = "Release Signer") -> str:
        return f"x509.subject: C=US, ST=WA, O={self.organization}, CN={common_name}"


@dataclass(frozen=True)
class Signer:
    key: PrivateKey
    chain: tuple[x509.Certificate, ...]  # leaf first, without the root


_ALGS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
_RSA_ALGS = {2048: "PS256", 3072: "PS384", 4096: "PS512"}
_JWS_HASHES: dict[str, hashes.HashAlgorithm] = {
    "ES256": hashes.SHA256(),
    "ES384": hashes.SHA384(),
    "ES512": hashes.SHA512(),
    "PS256": hashes.SHA256(),
    "PS384": hashes.SHA384(),
    "PS512": hashes.SHA512(),
}


def _jws_sign(key: PrivateKey, alg: str, data: bytes) -> bytes:
    """JWS signatures: ECDSA as raw r||s, RSA as PSS with a salt as long as the digest."""
    algorithm = _JWS_HASHES[alg]
    if isinstance(key, ec.EllipticCurvePrivateKey):
        r, s = utils.decode_dss_signature(key.sign(data, ec.ECDSA(algorithm)))
        size = (key.curve.key_size + 7) // 8
        return r.to_bytes(size) + s.to_bytes(size)
    assert isinstance(key, rsa.RSAPrivateKey)
    scheme = padding.PSS(mgf=padding.MGF1(algorithm), salt_length=algorithm.digest_size)
    return key.sign(data, scheme, algorithm)


def notation_envelope(
    signer: Signer,
    subject: Blob,
    *,
    target_digest: str | None = None,
    signing_time: dt.datetime | None = None,
    expiry: dt.datetime | None = None,
    extra_critical: Sequence[str] = (),
    alg: str | None = None,
    tamper: bool = False,
) -> bytes:
    """A Notary Project JWS envelope (flattened JSON), as `notation sign` writes it."""
    key = signer.key
    if alg is None:
        if isinstance(key, ec.EllipticCurvePrivateKey):
            alg = _ALGS[key.curve.name]
        else:
            assert isinstance(key, rsa.RSAPrivateKey)
            alg = _RSA_ALGS[key.key_size]
    moment = signing_time or dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    protected: dict[str, Any] = {
        "alg": alg,
        "crit": ["io.cncf.notary.signingScheme", *extra_critical],
        "cty": NOTARY_PAYLOAD,
        "io.cncf.notary.signingScheme": "notary.x509",
        "io.cncf.notary.signingTime": moment.isoformat(timespec="seconds"),
    }
    for name in extra_critical:
        protected.setdefault(name, "value")
    if expiry is not None:
        protected["crit"].append("io.cncf.notary.expiry")
        protected["io.cncf.notary.expiry"] = expiry.isoformat(timespec="seconds")
    payload = {
        "targetArtifact": {
            "mediaType": subject.media_type,
            "digest": target_digest or subject.digest,
            "size": subject.size,
        }
    }
    protected_b64, payload_b64 = b64url(_json(protected)), b64url(_json(payload))
    signature = _jws_sign(key, alg, f"{protected_b64}.{payload_b64}".encode())
    if tamper:
        payload["targetArtifact"]["annotations"] = {"tampered": "yes"}
        payload_b64 = b64url(_json(payload))
    return _json(
        {
            "payload": payload_b64,
            "protected": protected_b64,
            "header": {
                "x5c": [b64(c.public_bytes(serialization.Encoding.DER)) for c in signer.chain],
                "io.cncf.notary.signingAgent": "notation-go/1.3.0",
            },
            "signature": b64url(signature),
        }
    )


def _thumbprints(signer: Signer) -> str:
    return json.dumps(
        [c.fingerprint(hashes.SHA256()).hex() for c in signer.chain], separators=(",", ":")
    )


def push_notation(
    client: httpx.Client, repository: str, subject: Blob, envelope: bytes, signer: Signer
) -> str:
    """A Notation signature as notation ≥ 1.0 pushes it (artifactType, empty config)."""
    return push_referrer(
        client,
        repository,
        subject,
        Blob(JWS_TYPE, envelope),
        NOTARY_TYPE,
        annotations={
            "io.cncf.notary.x509chain.thumbprint#S256": _thumbprints(signer),
            "org.opencontainers.image.created": "2026-12-01T00:00:00Z",
        },
    )


def push_notation_with_oras(
    oras_client: Any,
    target: str,
    subject: Blob,
    envelope: bytes,
    signer: Signer,
    directory: Path,
) -> None:
    """Push a Notation signature with the oras client: the envelope as a `jose+json` layer, the
    signature type as the config media type (the older notation layout), `subject` set."""
    import oras.oci  # type: ignore[import-untyped]

    directory.mkdir(parents=True, exist_ok=True)
    envelope_file = directory / f"{os.urandom(4).hex()}.sig"
    envelope_file.write_bytes(envelope)
    config_file = directory / "config.json"
    config_file.write_bytes(b"{}")
    response = oras_client.push(
        target=target,
        files=[f"{envelope_file}:{JWS_TYPE}"],
        manifest_config=f"{config_file}:{NOTARY_TYPE}",
        manifest_annotations={"io.cncf.notary.x509chain.thumbprint#S256": _thumbprints(signer)},
        subject=oras.oci.Subject(subject.media_type, subject.digest, subject.size),
        disable_path_validation=True,
        quiet=True,
    )
    assert response.status_code == 201, response.text


def self_signed_signer(common_name: str = "moorage.test") -> Signer:
    """What `notation cert generate-test` makes: an RSA key and a self-signed code-signing
    certificate (CA:false) that is its own trust anchor."""
    key = rsa_key(2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    certificate = _certificate(
        name, key, name, key, ca=False, eku=[ExtendedKeyUsageOID.CODE_SIGNING]
    )
    return Signer(key, (certificate,))
