"""Public keys and CA certificates: parsing what administrators upload, and checking signatures.

Only public material is ever handled here. Accepted keys are ECDSA P-256/P-384/P-521, RSA of
2048 to 8192 bits and Ed25519, as PEM `PUBLIC KEY` (SPKI, what `cosign generate-key-pair`
writes as `cosign.pub`). A key's fingerprint is the SHA-256 of its DER SPKI, in hex.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils

MAX_PEM_LENGTH: Final = 16 * 1024  # one public key (an 8192-bit RSA key is about 1.5 KiB)
MAX_BUNDLE_LENGTH: Final = 48 * 1024  # a bundle of CA certificates
MAX_CERTIFICATES: Final = 16  # per trust store
MIN_RSA_BITS: Final = 2048
MAX_RSA_BITS: Final = 8192

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey

_CURVES: Final[dict[str, str]] = {
    "secp256r1": "ecdsa-p256",
    "secp384r1": "ecdsa-p384",
    "secp521r1": "ecdsa-p521",
}
_PEM_PUBLIC_KEY: Final = "-----BEGIN PUBLIC KEY-----"
_PEM_CERTIFICATE: Final = "-----BEGIN CERTIFICATE-----"


class KeyMaterialError(ValueError):
    """Key or certificate material that cannot be accepted (the message says why)."""


@dataclass(frozen=True, slots=True)
class KeyInfo:
    key: PublicKey
    algorithm: str  # ecdsa-p256 | ecdsa-p384 | ecdsa-p521 | rsa-<bits> | ed25519
    fingerprint: str  # sha256 of the DER SPKI, hex


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    certificate: x509.Certificate
    subject: str  # RFC 4514
    fingerprint: str  # sha256 of the DER certificate, hex
    not_before: datetime
    not_after: datetime


def key_algorithm(key: PublicKey) -> str:
    if isinstance(key, ec.EllipticCurvePublicKey):
        return _CURVES[key.curve.name]
    if isinstance(key, rsa.RSAPublicKey):
        return f"rsa-{key.key_size}"
    return "ed25519"


def _accepted(key: object) -> PublicKey:
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in _CURVES:
            raise KeyMaterialError(
                f"elliptic curve {key.curve.name} is not accepted (P-256, P-384, P-521)"
            )
        return key
    if isinstance(key, rsa.RSAPublicKey):
        if not MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS:
            raise KeyMaterialError(f"RSA keys must have {MIN_RSA_BITS} to {MAX_RSA_BITS} bits")
        return key
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    raise KeyMaterialError("only ECDSA, RSA and Ed25519 public keys are accepted")


def fingerprint(key: PublicKey) -> str:
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def load_public_key(pem: str) -> KeyInfo:
    """A PEM `PUBLIC KEY`, validated; never a private key (refused without being parsed)."""
    if len(pem) > MAX_PEM_LENGTH:
        raise KeyMaterialError(f"a public key PEM is at most {MAX_PEM_LENGTH} characters")
    text = pem.strip()
    if "PRIVATE KEY" in text:
        raise KeyMaterialError("this is a private key: upload only the public key (cosign.pub)")
    if not text.startswith(_PEM_PUBLIC_KEY) or text.count("-----BEGIN") != 1:
        raise KeyMaterialError("expected exactly one PEM block '-----BEGIN PUBLIC KEY-----'")
    try:
        key = serialization.load_pem_public_key(text.encode())
    except (ValueError, UnsupportedAlgorithm):
        raise KeyMaterialError("the PEM block is not a valid public key") from None
    accepted = _accepted(key)
    return KeyInfo(accepted, key_algorithm(accepted), fingerprint(accepted))


def canonical_pem(key: PublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def certificate_info(certificate: x509.Certificate) -> CertificateInfo:
    return CertificateInfo(
        certificate,
        certificate.subject.rfc4514_string(),
        certificate.fingerprint(hashes.SHA256()).hex(),
        certificate.not_valid_before_utc,
        certificate.not_valid_after_utc,
    )


def load_ca_certificates(pem: str) -> list[CertificateInfo]:
    """A bundle of 1 to `MAX_CERTIFICATES` trust anchors: CA certificates (basicConstraints
    CA:true) or self-signed signing certificates."""
    if len(pem) > MAX_BUNDLE_LENGTH:
        raise KeyMaterialError(f"a certificate bundle is at most {MAX_BUNDLE_LENGTH} characters")
    text = pem.strip()
    if "PRIVATE KEY" in text:
        raise KeyMaterialError("the bundle contains a private key: upload only certificates")
    count = text.count(_PEM_CERTIFICATE)
    if count == 0 or count != text.count("-----BEGIN"):
        raise KeyMaterialError("expected PEM blocks '-----BEGIN CERTIFICATE-----' and nothing else")
    if count > MAX_CERTIFICATES:
        raise KeyMaterialError(f"a trust store holds at most {MAX_CERTIFICATES} certificates")
    try:
        certificates = x509.load_pem_x509_certificates(text.encode())
    except ValueError:
        raise KeyMaterialError("a PEM block is not a valid X.509 certificate") from None
    infos = []
    for certificate in certificates:
        try:
            constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
        except x509.ExtensionNotFound:
            constraints = None
        except ValueError:
            raise KeyMaterialError("a certificate has malformed extensions") from None
        info = certificate_info(certificate)
        # A self-signed signing certificate may be its own trust anchor: what
        # `notation cert generate-test` makes, and how Notation's trust stores accept it.
        self_signed = certificate.issuer == certificate.subject
        if not self_signed and (constraints is None or not constraints.value.ca):
            raise KeyMaterialError(
                f"{info.subject} is neither a CA certificate (basicConstraints CA:true) nor"
                " self-signed"
            )
        try:
            _accepted(certificate.public_key())
        except KeyMaterialError as error:
            raise KeyMaterialError(f"{info.subject}: {error}") from None
        infos.append(info)
    fingerprints = [info.fingerprint for info in infos]
    if len(set(fingerprints)) != len(fingerprints):
        raise KeyMaterialError("the bundle holds the same certificate twice")
    return infos


def certificates_pem(certificates: list[CertificateInfo]) -> str:
    return "".join(
        info.certificate.public_bytes(serialization.Encoding.PEM).decode() for info in certificates
    )


# -- checking signatures

_HASHES: Final[dict[str, type[hashes.HashAlgorithm]]] = {
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


def verify_with_key(
    key: PublicKey, signature: bytes, data: bytes, *, hash_name: str = "sha256"
) -> bool:
    """Whether `signature` over `data` is valid under `key`, as cosign signs.

    ECDSA: an ASN.1 DER signature; RSA: PKCS#1 v1.5, else PSS (salt as long as the digest, or
    any length); Ed25519: over the data itself.
    """
    algorithm = _HASHES[hash_name]()
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(algorithm))
            return True
        if isinstance(key, rsa.RSAPublicKey):
            return _verify_rsa(key, signature, data, algorithm)
        key.verify(signature, data)
        return True
    except InvalidSignature:
        return False


def verify_prehashed(key: PublicKey, signature: bytes, digest: bytes, hash_name: str) -> bool:
    """Like `verify_with_key`, given only the message's digest (not possible with Ed25519)."""
    algorithm = _HASHES[hash_name]()
    if len(digest) != algorithm.digest_size or isinstance(key, ed25519.Ed25519PublicKey):
        return False
    prehashed = utils.Prehashed(algorithm)
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, digest, ec.ECDSA(prehashed))
            return True
        for scheme in _rsa_paddings(algorithm):
            try:
                key.verify(signature, digest, scheme, prehashed)
                return True
            except InvalidSignature:
                continue
        return False
    except InvalidSignature:
        return False


def _rsa_paddings(algorithm: hashes.HashAlgorithm) -> list[padding.AsymmetricPadding]:
    return [
        padding.PKCS1v15(),
        padding.PSS(mgf=padding.MGF1(algorithm), salt_length=padding.PSS.DIGEST_LENGTH),
        padding.PSS(mgf=padding.MGF1(algorithm), salt_length=padding.PSS.AUTO),
    ]


def _verify_rsa(
    key: rsa.RSAPublicKey, signature: bytes, data: bytes, algorithm: hashes.HashAlgorithm
) -> bool:
    for scheme in _rsa_paddings(algorithm):
        try:
            key.verify(signature, data, scheme, algorithm)
            return True
        except InvalidSignature:
            continue
    return False


def now_utc() -> datetime:
    return datetime.now(UTC)
