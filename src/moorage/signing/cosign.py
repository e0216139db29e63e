"""cosign's legacy signatures: the `sha256-<hex>.sig` tag and the simple-signing payload.

`cosign sign --key` (before `--new-bundle-format`) tags an image manifest
`sha256-<hex of the signed digest>.sig` in the signed image's repository. Each signature is one
layer of media type `application/vnd.dev.cosign.simplesigning.v1+json` whose blob is the payload

    {"critical": {"identity": {"docker-reference": "..."},
                  "image": {"docker-manifest-digest": "sha256:..."},
                  "type": "cosign container image signature"},
     "optional": {...} | null}

and whose annotation `dev.cosignproject.cosign/signature` is the base64 signature over the
payload's exact bytes. A signature holds for an image when the payload is the layer's blob (its
digest), the signature verifies with a trusted key, the type is right and
`docker-manifest-digest` is the image's digest. `docker-reference` is not compared (as cosign
does not by default): the same image may be copied between repositories and stay signed.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Final

from moorage.signing.encoding import FormatError, b64decode, json_object
from moorage.signing.keys import PublicKey, verify_with_key

SIMPLE_SIGNING_MEDIA_TYPE: Final = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION: Final = "dev.cosignproject.cosign/signature"
CERTIFICATE_ANNOTATION: Final = "dev.sigstore.cosign/certificate"
SIGNATURE_TYPE: Final = "cosign container image signature"
MAX_LAYERS: Final = 16  # signatures read from one signature manifest
MAX_PAYLOAD_BYTES: Final = 64 * 1024
MAX_SIGNATURE_CHARS: Final = 8 * 1024  # base64 of an RSA-8192 signature is about 1.4 KiB

_DIGEST: Final = re.compile(r"^sha256:([0-9a-f]{64})$")


def signature_tag(digest: str) -> str:
    """The tag cosign gives the signatures of `digest` (`sha256:ab…` → `sha256-ab….sig`)."""
    return digest.replace(":", "-", 1) + ".sig"


@dataclass(frozen=True, slots=True)
class LegacyLayer:
    """One signature of a `.sig` manifest: where its payload is and what signs it."""

    digest: str  # the payload blob's digest
    size: int
    signature: str | None  # base64, from the annotation
    has_certificate: bool  # keyless signatures carry a Fulcio certificate


def legacy_layers(manifest: bytes) -> list[LegacyLayer]:
    """The simple-signing layers of a signature manifest (at most `MAX_LAYERS` are read)."""
    document = json_object(manifest, "the signature manifest")
    layers = document.get("layers")
    if not isinstance(layers, list):
        raise FormatError("the signature manifest has no layers")
    found: list[LegacyLayer] = []
    for layer in layers[:MAX_LAYERS]:
        if not isinstance(layer, dict) or layer.get("mediaType") != SIMPLE_SIGNING_MEDIA_TYPE:
            continue
        digest, size = layer.get("digest"), layer.get("size")
        if not isinstance(digest, str) or _DIGEST.fullmatch(digest) is None:
            continue
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            continue
        annotations = layer.get("annotations")
        annotations = annotations if isinstance(annotations, dict) else {}
        signature = annotations.get(SIGNATURE_ANNOTATION)
        found.append(
            LegacyLayer(
                digest,
                size,
                signature if isinstance(signature, str) else None,
                isinstance(annotations.get(CERTIFICATE_ANNOTATION), str),
            )
        )
    return found


def signed_digest(payload: bytes) -> str:
    """The image digest a simple-signing payload names (FormatError when it is malformed)."""
    document = json_object(payload, "the simple-signing payload")
    critical: Any = document.get("critical")
    if not isinstance(critical, dict):
        raise FormatError("the simple-signing payload has no 'critical' section")
    if critical.get("type") != SIGNATURE_TYPE:
        raise FormatError(f"the simple-signing payload's type is not {SIGNATURE_TYPE!r}")
    image = critical.get("image")
    digest = image.get("docker-manifest-digest") if isinstance(image, dict) else None
    if not isinstance(digest, str):
        raise FormatError("the simple-signing payload names no docker-manifest-digest")
    return digest


def check_payload(layer: LegacyLayer, payload: bytes, image_digest: str) -> str | None:
    """Why the payload does not sign `image_digest`, or None when it does (no key involved)."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        return f"payload {layer.digest} is larger than {MAX_PAYLOAD_BYTES} bytes"
    if "sha256:" + hashlib.sha256(payload).hexdigest() != layer.digest:
        return f"payload {layer.digest} does not match its digest"
    try:
        signed = signed_digest(payload)
    except FormatError as error:
        return str(error)
    if signed != image_digest:
        return f"payload {layer.digest} signs {signed[:80]}, not {image_digest}"
    return None


def check_signature(layer: LegacyLayer, payload: bytes, key: PublicKey) -> bool:
    """Whether the layer's signature over the payload verifies with `key`."""
    if layer.signature is None or len(layer.signature) > MAX_SIGNATURE_CHARS:
        return False
    try:
        signature = b64decode(layer.signature, "the signature annotation")
    except FormatError:
        return False
    return verify_with_key(key, signature, payload)


def simple_signing_payload(
    image_digest: str, reference: str, optional: dict[str, Any] | None = None
) -> bytes:
    """The payload cosign signs for `image_digest` (as `cosign sign` writes it)."""
    document = {
        "critical": {
            "identity": {"docker-reference": reference},
            "image": {"docker-manifest-digest": image_digest},
            "type": SIGNATURE_TYPE,
        },
        "optional": optional,
    }
    return json.dumps(document, separators=(",", ":")).encode()
