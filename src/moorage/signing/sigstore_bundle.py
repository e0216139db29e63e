"""Sigstore bundles (v0.3) attached to an image as OCI referrers.

cosign ≥ 2.4 with `--new-bundle-format` (the default in cosign 3) pushes a manifest with
`artifactType: application/vnd.dev.sigstore.bundle.v0.3+json` and `subject` = the signed image;
its one layer is the bundle JSON. The bundle holds either

- a `messageSignature`: a signature over the image manifest's bytes plus its digest, or
- a `dsseEnvelope`: an in-toto Statement (`predicateType https://sigstore.dev/cosign/sign/v1`,
  subject digest = the image) signed over DSSE's pre-authentication encoding
  `"DSSEv1 <len(type)> <type> <len(body)> <body>"`,

and `verificationMaterial` that says how to verify it: a `publicKey` (hint only: the verifier
brings the key) or a Fulcio `certificate` / `x509CertificateChain` (keyless, with Rekor or TSA
evidence). Only key-based bundles are verified here; keyless ones are recognised and reported
as unsupported verification material, so that a keyless verifier can be added beside this one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from moorage.signing.encoding import FormatError, b64decode, field, json_object
from moorage.signing.keys import PublicKey, verify_prehashed, verify_with_key

ARTIFACT_TYPE: Final = "application/vnd.dev.sigstore.bundle.v0.3+json"
BUNDLE_MEDIA_TYPES: Final = frozenset(
    {
        "application/vnd.dev.sigstore.bundle.v0.3+json",
        "application/vnd.dev.sigstore.bundle+json;version=0.3",
        "application/vnd.dev.sigstore.bundle+json;version=0.2",
    }
)
MAX_BUNDLE_BYTES: Final = 1024 * 1024
IN_TOTO_PAYLOAD_TYPE: Final = "application/vnd.in-toto+json"
STATEMENT_TYPES: Final = frozenset(
    {"https://in-toto.io/Statement/v1", "https://in-toto.io/Statement/v0.1"}
)
COSIGN_SIGN_PREDICATE: Final = "https://sigstore.dev/cosign/sign/v1"
_MAX_DSSE_SIGNATURES: Final = 8


class Material(StrEnum):
    PUBLIC_KEY = "publicKey"
    CERTIFICATE = "certificate"
    CERTIFICATE_CHAIN = "x509CertificateChain"


@dataclass(frozen=True, slots=True)
class MessageSignature:
    digest: bytes  # of the signed message (the image manifest)
    algorithm: str  # sha256 | sha384 | sha512
    signature: bytes


@dataclass(frozen=True, slots=True)
class DsseEnvelope:
    payload_type: str
    payload: bytes
    signatures: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Bundle:
    material: Material
    key_hint: str | None
    content: MessageSignature | DsseEnvelope


_DIGEST_ALGORITHMS: Final = {"SHA2_256": "sha256", "SHA2_384": "sha384", "SHA2_512": "sha512"}


def parse_bundle(data: bytes) -> Bundle:
    if len(data) > MAX_BUNDLE_BYTES:
        raise FormatError(f"the bundle is larger than {MAX_BUNDLE_BYTES} bytes")
    document = json_object(data, "the bundle")
    if document.get("mediaType") not in BUNDLE_MEDIA_TYPES:
        raise FormatError("the bundle's mediaType is not a sigstore bundle v0.2/v0.3")
    material_doc = field(document, "verificationMaterial", dict, "the bundle")
    material, hint = _material(material_doc)
    if "messageSignature" in document:
        return Bundle(material, hint, _message_signature(document["messageSignature"]))
    if "dsseEnvelope" in document:
        return Bundle(material, hint, _envelope(document["dsseEnvelope"]))
    raise FormatError("the bundle has neither a messageSignature nor a dsseEnvelope")


def _material(document: dict[str, Any]) -> tuple[Material, str | None]:
    for material in Material:
        value = document.get(material.value)
        if isinstance(value, dict):
            hint = value.get("hint") if material is Material.PUBLIC_KEY else None
            return material, hint if isinstance(hint, str) else None
    raise FormatError("the bundle's verificationMaterial has no publicKey or certificate")


def _message_signature(value: Any) -> MessageSignature:
    if not isinstance(value, dict):
        raise FormatError("the bundle's messageSignature is not an object")
    digest_doc = field(value, "messageDigest", dict, "the messageSignature")
    algorithm = _DIGEST_ALGORITHMS.get(str(digest_doc.get("algorithm")))
    if algorithm is None:
        raise FormatError("the messageDigest algorithm is not SHA2_256, SHA2_384 or SHA2_512")
    return MessageSignature(
        b64decode(digest_doc.get("digest"), "the messageDigest"),
        algorithm,
        b64decode(value.get("signature"), "the message signature"),
    )


def _envelope(value: Any) -> DsseEnvelope:
    if not isinstance(value, dict):
        raise FormatError("the bundle's dsseEnvelope is not an object")
    signatures = field(value, "signatures", list, "the DSSE envelope")
    if not signatures or len(signatures) > _MAX_DSSE_SIGNATURES:
        raise FormatError(f"a DSSE envelope carries 1 to {_MAX_DSSE_SIGNATURES} signatures")
    return DsseEnvelope(
        field(value, "payloadType", str, "the DSSE envelope"),
        b64decode(value.get("payload"), "the DSSE payload"),
        tuple(
            b64decode(item.get("sig") if isinstance(item, dict) else None, "a DSSE signature")
            for item in signatures
        ),
    )


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what a DSSE signature signs."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def check_content(bundle: Bundle, image_digest: str) -> str | None:
    """Why the bundle does not speak of `image_digest` as an image signature, or None."""
    algorithm, _, hex_digest = image_digest.partition(":")
    content = bundle.content
    if isinstance(content, MessageSignature):
        if content.algorithm != algorithm or content.digest.hex() != hex_digest:
            return f"the message signature is over {content.algorithm}:{content.digest.hex()}"
        return None
    if content.payload_type != IN_TOTO_PAYLOAD_TYPE:
        return f"the DSSE payload type is {content.payload_type[:80]!r}, not an in-toto statement"
    try:
        statement = json_object(content.payload, "the in-toto statement")
    except FormatError as error:
        return str(error)
    if statement.get("_type") not in STATEMENT_TYPES:
        return "the DSSE payload is not an in-toto statement"
    predicate = statement.get("predicateType")
    if predicate != COSIGN_SIGN_PREDICATE:
        return f"the statement is an attestation ({str(predicate)[:80]}), not a signature"
    subjects = statement.get("subject")
    if not isinstance(subjects, list) or not any(
        isinstance(item, dict)
        and isinstance(item.get("digest"), dict)
        and item["digest"].get(algorithm) == hex_digest
        for item in subjects[:64]
    ):
        return f"the statement's subject is not {image_digest}"
    return None


def check_signature(bundle: Bundle, key: PublicKey, manifest: bytes | None) -> bool:
    """Whether the bundle's signature verifies with `key` (the content is checked apart)."""
    content = bundle.content
    if isinstance(content, MessageSignature):
        if manifest is not None and hashlib.new(content.algorithm, manifest).digest() == (
            content.digest
        ):
            return verify_with_key(key, content.signature, manifest, hash_name=content.algorithm)
        return verify_prehashed(key, content.signature, content.digest, content.algorithm)
    signed = pae(content.payload_type, content.payload)
    return any(verify_with_key(key, signature, signed) for signature in content.signatures)
