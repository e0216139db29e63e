"""Notary Project (Notation) signatures: JWS envelopes with an x509 certificate chain.

`notation sign` pushes a referrer manifest (`artifactType application/vnd.cncf.notary.signature`,
or that value as the config media type in older releases) whose one layer, of media type
`application/jose+json`, is a JWS in flattened JSON serialization:

    {"payload": b64url, "protected": b64url, "header": {"x5c": [b64 DER...], ...},
     "signature": b64url}

The protected header carries `alg` (ES256/384/512, PS256/384/512), `cty`
(`application/vnd.cncf.notary.payload.v1+json`), `crit` (at least
`io.cncf.notary.signingScheme`), the signing scheme, `io.cncf.notary.signingTime` (or
`io.cncf.notary.authenticSigningTime` for `notary.x509.signingAuthority`) and optionally
`io.cncf.notary.expiry`. The payload is `{"targetArtifact": {mediaType, digest, size}}`.

A signature holds when every critical header is understood, `alg` matches the leaf key (no
algorithm substitution), the signature over `protected.payload` verifies with the leaf key, the
target artifact is the image (digest, size and media type), the signature has not expired, and
the chain leads to a root of the verifier's trust stores with the leaf carrying the codeSigning
EKU, valid now and at signing time (at the authentic signing time for the signing-authority
scheme), and its subject matching a trusted identity. COSE envelopes and timestamp
countersignatures are not verified (reported as unsupported).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    Policy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from moorage.signing.encoding import FormatError, b64decode, b64url_decode, field, json_object

ARTIFACT_TYPE: Final = "application/vnd.cncf.notary.signature"
JWS_MEDIA_TYPE: Final = "application/jose+json"
COSE_MEDIA_TYPE: Final = "application/cose"
PAYLOAD_CONTENT_TYPE: Final = "application/vnd.cncf.notary.payload.v1+json"
SIGNING_SCHEME: Final = "io.cncf.notary.signingScheme"
SIGNING_TIME: Final = "io.cncf.notary.signingTime"
AUTHENTIC_SIGNING_TIME: Final = "io.cncf.notary.authenticSigningTime"
EXPIRY: Final = "io.cncf.notary.expiry"
SCHEME_X509: Final = "notary.x509"
SCHEME_SIGNING_AUTHORITY: Final = "notary.x509.signingAuthority"
UNDERSTOOD_CRITICAL: Final = frozenset({SIGNING_SCHEME, EXPIRY, AUTHENTIC_SIGNING_TIME})
MAX_ENVELOPE_BYTES: Final = 256 * 1024
MAX_CHAIN: Final = 8
MAX_IDENTITY_LENGTH: Final = 1024

# alg → (key type, curve or RSA size, hash); the Notary Project pins each key to one alg.
_ECDSA_ALGS: Final[dict[str, tuple[str, type[hashes.HashAlgorithm]]]] = {
    "ES256": ("secp256r1", hashes.SHA256),
    "ES384": ("secp384r1", hashes.SHA384),
    "ES512": ("secp521r1", hashes.SHA512),
}
_RSA_ALGS: Final[dict[str, tuple[int, type[hashes.HashAlgorithm]]]] = {
    "PS256": (2048, hashes.SHA256),
    "PS384": (3072, hashes.SHA384),
    "PS512": (4096, hashes.SHA512),
}


@dataclass(frozen=True, slots=True)
class Envelope:
    signed: bytes  # ASCII `protected.payload`, what the signature covers
    protected: dict[str, Any]
    payload: dict[str, Any]
    signature: bytes
    chain: tuple[x509.Certificate, ...]  # leaf first


def parse_envelope(data: bytes) -> Envelope:
    if len(data) > MAX_ENVELOPE_BYTES:
        raise FormatError(f"the envelope is larger than {MAX_ENVELOPE_BYTES} bytes")
    document = json_object(data, "the JWS envelope")
    protected_b64 = field(document, "protected", str, "the JWS envelope")
    payload_b64 = field(document, "payload", str, "the JWS envelope")
    protected = json_object(b64url_decode(protected_b64, "the protected header"), "the header")
    payload = json_object(b64url_decode(payload_b64, "the JWS payload"), "the JWS payload")
    header = field(document, "header", dict, "the JWS envelope")
    chain_b64 = field(header, "x5c", list, "the unprotected header")
    if not chain_b64 or len(chain_b64) > MAX_CHAIN:
        raise FormatError(f"x5c holds 1 to {MAX_CHAIN} certificates")
    chain = []
    for item in chain_b64:
        try:
            chain.append(x509.load_der_x509_certificate(b64decode(item, "an x5c certificate")))
        except ValueError:
            raise FormatError("an x5c entry is not a DER certificate") from None
    return Envelope(
        f"{protected_b64}.{payload_b64}".encode(),
        protected,
        payload,
        b64url_decode(document.get("signature"), "the JWS signature"),
        tuple(chain),
    )


def _time(value: object, what: str) -> datetime:
    if not isinstance(value, str):
        raise FormatError(f"{what} is missing")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise FormatError(f"{what} is not an RFC 3339 time") from None
    if moment.tzinfo is None:
        raise FormatError(f"{what} has no time zone")
    return moment.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class Header:
    scheme: str
    signing_time: datetime
    expiry: datetime | None


def check_header(protected: dict[str, Any]) -> Header:
    """The protected header's meaning; FormatError names what is wrong or not understood."""
    if protected.get("cty") != PAYLOAD_CONTENT_TYPE:
        raise FormatError(f"the content type is not {PAYLOAD_CONTENT_TYPE}")
    critical = protected.get("crit")
    if not isinstance(critical, list) or not all(isinstance(item, str) for item in critical):
        raise FormatError("the protected header has no 'crit' list")
    unknown = sorted(set(critical) - UNDERSTOOD_CRITICAL)
    if unknown:
        raise FormatError(f"critical header {unknown[0][:80]!r} is not understood")
    for name in critical:
        if name not in protected:
            raise FormatError(f"critical header {name!r} is missing")
    scheme = protected.get(SIGNING_SCHEME)
    if SIGNING_SCHEME not in critical or scheme not in (SCHEME_X509, SCHEME_SIGNING_AUTHORITY):
        raise FormatError("the signing scheme is missing, not critical or not understood")
    if scheme == SCHEME_SIGNING_AUTHORITY:
        if AUTHENTIC_SIGNING_TIME not in critical:
            raise FormatError("the authentic signing time must be a critical header")
        signing_time = _time(protected.get(AUTHENTIC_SIGNING_TIME), "the authentic signing time")
    else:
        signing_time = _time(protected.get(SIGNING_TIME), "the signing time")
    expiry = None
    if EXPIRY in protected:
        if EXPIRY not in critical:
            raise FormatError("the expiry must be a critical header")
        expiry = _time(protected[EXPIRY], "the expiry")
    return Header(str(scheme), signing_time, expiry)


def check_target(payload: dict[str, Any], digest: str, media_type: str, size: int) -> str | None:
    """Why the payload does not target this manifest, or None when it does."""
    target = payload.get("targetArtifact")
    if not isinstance(target, dict):
        return "the payload names no targetArtifact"
    if target.get("digest") != digest:
        return f"the signature is for {str(target.get('digest'))[:80]}, not {digest}"
    if target.get("size") != size:
        return "the signed size differs from the manifest's"
    if target.get("mediaType") != media_type:
        return "the signed media type differs from the manifest's"
    return None


def check_signature(envelope: Envelope) -> str | None:
    """Why the signature does not verify with the leaf's key under `alg`, or None."""
    alg = envelope.protected.get("alg")
    try:
        # A certificate can parse and still carry a key that does not load (an invalid point).
        key = envelope.chain[0].public_key()
    except (ValueError, TypeError) as error:
        return f"the signing certificate's key cannot be used: {error}"
    try:
        if isinstance(key, ec.EllipticCurvePublicKey) and alg in _ECDSA_ALGS:
            curve, algorithm = _ECDSA_ALGS[str(alg)]
            if key.curve.name != curve:
                return f"alg {alg} does not match the signing key"
            half = (key.curve.key_size + 7) // 8
            if len(envelope.signature) != 2 * half:
                return "the ECDSA signature has the wrong length"
            r = int.from_bytes(envelope.signature[:half])
            s = int.from_bytes(envelope.signature[half:])
            key.verify(utils.encode_dss_signature(r, s), envelope.signed, ec.ECDSA(algorithm()))
            return None
        if isinstance(key, rsa.RSAPublicKey) and alg in _RSA_ALGS:
            bits, rsa_algorithm = _RSA_ALGS[str(alg)]
            if key.key_size != bits:
                return f"alg {alg} does not match the signing key"
            scheme = padding.PSS(
                mgf=padding.MGF1(rsa_algorithm()), salt_length=padding.PSS.DIGEST_LENGTH
            )
            key.verify(envelope.signature, envelope.signed, scheme, rsa_algorithm())
            return None
    except InvalidSignature:
        return "the signature does not verify with the signing certificate's key"
    return f"alg {str(alg)[:20]!r} does not match the signing key"


def _require_code_signing(_policy: Policy, _cert: x509.Certificate, eku: Any) -> None:
    if ExtendedKeyUsageOID.CODE_SIGNING not in eku:
        raise ValueError("the signing certificate lacks the codeSigning extended key usage")


def _require_end_entity(_policy: Policy, _cert: x509.Certificate, value: Any) -> None:
    if value.ca:
        raise ValueError("the signing certificate is a CA certificate")


def _require_digital_signature(_policy: Policy, _cert: x509.Certificate, value: Any) -> None:
    if not value.digital_signature:
        raise ValueError("the signing certificate's key usage lacks digitalSignature")


def _extension_policies() -> tuple[ExtensionPolicy, ExtensionPolicy]:
    # CAs: the Web PKI rules, except that an EKU on an intermediate is allowed (code-signing
    # CAs often carry one). Leaf: codeSigning EKU, digitalSignature, not a CA.
    ca = ExtensionPolicy.webpki_defaults_ca().may_be_present(
        x509.ExtendedKeyUsage, Criticality.AGNOSTIC, None
    )
    leaf = (
        ExtensionPolicy.permit_all()
        .require_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC, _require_code_signing)
        .require_present(x509.KeyUsage, Criticality.AGNOSTIC, _require_digital_signature)
        .may_be_present(
            x509.BasicConstraints,
            Criticality.AGNOSTIC,
            lambda policy, cert, value: (
                None if value is None else _require_end_entity(policy, cert, value)
            ),
        )
    )
    return ca, leaf


def check_chain(
    envelope: Envelope, roots: Sequence[x509.Certificate], header: Header, now: datetime
) -> str | None:
    """Why the chain is not trusted, or None: to a root, codeSigning, valid now and then."""
    if not roots:
        return "the verifier's trust stores hold no certificates"
    leaf, intermediates = envelope.chain[0], list(envelope.chain[1:])
    # Said plainly up front; the chain policy below enforces it too.
    try:
        usage = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except (x509.ExtensionNotFound, ValueError):
        usage = None
    if usage is None or ExtendedKeyUsageOID.CODE_SIGNING not in usage:
        return "the signing certificate lacks the codeSigning extended key usage"
    ca_policy, leaf_policy = _extension_policies()
    moments = [now]
    if header.signing_time != now:
        moments.append(header.signing_time)
    for moment in moments:
        verifier = (
            PolicyBuilder()
            .store(Store(list(roots)))
            .time(moment)
            .max_chain_depth(MAX_CHAIN)
            .extension_policies(ca_policy=ca_policy, ee_policy=leaf_policy)
            .build_client_verifier()
        )
        try:
            verifier.verify(leaf, intermediates)
        except VerificationError as error:
            when = "now" if moment is now else f"at signing time {moment.isoformat()}"
            return f"the certificate chain is not trusted {when}: {_short(error)}"
    return None


def _short(error: Exception) -> str:
    text = str(error).split(" (encountered processing", 1)[0]
    return text.removeprefix("validation failed: ")[:300]


# -- trusted identities

_ATTRIBUTE_NAMES: Final[dict[str, x509.ObjectIdentifier]] = {
    "C": NameOID.COUNTRY_NAME,
    "ST": NameOID.STATE_OR_PROVINCE_NAME,
    "L": NameOID.LOCALITY_NAME,
    "O": NameOID.ORGANIZATION_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "CN": NameOID.COMMON_NAME,
    "SERIALNUMBER": NameOID.SERIAL_NUMBER,
    "EMAILADDRESS": NameOID.EMAIL_ADDRESS,
}
IDENTITY_PREFIX: Final = "x509.subject:"
_SPLIT: Final = re.compile(r"(?<!\\),")


def parse_identity(identity: str) -> tuple[tuple[str, str], ...] | None:
    """`*` → None (any identity); `x509.subject: C=US, O=Acme, CN=Release` → its attributes.

    Raises ValueError for anything else. Values may escape a comma as `\\,`.
    """
    text = identity.strip()
    if text == "*":
        return None
    if len(text) > MAX_IDENTITY_LENGTH or not text.startswith(IDENTITY_PREFIX):
        raise ValueError("a trusted identity is '*' or 'x509.subject: <DN>'")
    attributes: list[tuple[str, str]] = []
    for part in _SPLIT.split(text[len(IDENTITY_PREFIX) :]):
        name, equals, value = part.strip().partition("=")
        key = name.strip().upper()
        if not equals or key not in _ATTRIBUTE_NAMES or not value.strip():
            raise ValueError(
                f"{part.strip()[:40]!r} is not an attribute of "
                f"{', '.join(_ATTRIBUTE_NAMES)} with a value"
            )
        attributes.append((key, value.strip().replace("\\,", ",")))
    keys = [key for key, _ in attributes]
    if len(set(keys)) != len(keys):
        raise ValueError("a trusted identity names each attribute once")
    return tuple(attributes)


def identity_matches(identity: tuple[tuple[str, str], ...] | None, leaf: x509.Certificate) -> bool:
    """Whether the leaf's subject holds every attribute of the identity (Notation's rule)."""
    if identity is None:
        return True
    for key, value in identity:
        found = leaf.subject.get_attributes_for_oid(_ATTRIBUTE_NAMES[key])
        if len(found) != 1 or found[0].value != value:
            return False
    return True


def leaf_subject(envelope: Envelope) -> str:
    return envelope.chain[0].subject.rfc4514_string()
