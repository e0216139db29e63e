"""Which manifests are scanned: container images and indexes of them, nothing else.

An image manifest is scanned when it has no `artifactType`, its config is an image config
(OCI or Docker) and every layer is a filesystem layer (a tar, possibly compressed). That leaves
out signatures (cosign's simple-signing layers, notation envelopes), SBOMs, attestations
(in-toto layers, also BuildKit's attestation manifests inside an index), Helm charts and other
artifacts. cosign's `sha256-<hex>.sig/.att/.sbom` tags are never scanned either, whatever they
hold. An index is scanned through its image children.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from moorage.domain import mediatypes as mt

IMAGE_CONFIGS: Final = frozenset(
    {"application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json"}
)
_LAYER_PREFIXES: Final = (
    "application/vnd.oci.image.layer.",
    "application/vnd.docker.image.rootfs.",
)
_COSIGN_TAG: Final = re.compile(r"^sha256-[0-9a-f]{64}(?:\.[a-z]+)?$")
MAX_INDEX_CHILDREN: Final = 256


class NotScannableError(Exception):
    """The manifest is not a container image (or an index of them): it is never scanned."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ImageTarget:
    config_digest: str
    layers: tuple[tuple[str, str], ...]  # (media type, digest) bottom first


@dataclass(frozen=True, slots=True)
class IndexTarget:
    children: tuple[str, ...]  # every child manifest digest (each is checked on its own)


def is_cosign_tag(tag: str) -> bool:
    """cosign's signature, attestation and SBOM tags (`sha256-<hex>.sig`)."""
    return _COSIGN_TAG.fullmatch(tag) is not None


def classify(body: bytes, media_type: str, tags: Iterable[str] = ()) -> ImageTarget | IndexTarget:
    """What scanning this manifest means; NotScannableError says why it is not scanned."""
    cosign = next((tag for tag in tags if is_cosign_tag(tag)), None)
    if cosign is not None:
        raise NotScannableError(f"it is tagged {cosign}, a cosign signature or attachment")
    try:
        document = json.loads(body)
    except ValueError:
        raise NotScannableError("its manifest is not JSON") from None
    if not isinstance(document, dict):
        raise NotScannableError("its manifest is not a JSON object")
    artifact_type = document.get("artifactType")
    if artifact_type:
        raise NotScannableError(f"it is an artifact of type {str(artifact_type)[:128]}")
    if media_type in mt.INDEXES:
        children = tuple(
            str(entry["digest"])
            for entry in _list(document.get("manifests"))
            if isinstance(entry, dict) and isinstance(entry.get("digest"), str)
        )
        if not children:
            raise NotScannableError("the index lists no manifests")
        if len(children) > MAX_INDEX_CHILDREN:
            raise NotScannableError(f"the index lists more than {MAX_INDEX_CHILDREN} manifests")
        return IndexTarget(children)
    if media_type not in mt.IMAGE_MANIFESTS:
        raise NotScannableError(f"{media_type[:128]} is not an image manifest")
    config = document.get("config")
    config_type = config.get("mediaType") if isinstance(config, dict) else None
    if config_type not in IMAGE_CONFIGS or not isinstance(config, dict):
        raise NotScannableError(f"its config is {str(config_type)[:128]}, not an image config")
    layers = []
    for layer in _list(document.get("layers")):
        if not isinstance(layer, dict):
            raise NotScannableError("a layer descriptor is not an object")
        layer_type = str(layer.get("mediaType", ""))
        if not layer_type.startswith(_LAYER_PREFIXES):
            raise NotScannableError(
                f"it has a {layer_type[:128]} layer: an artifact, not a container image"
            )
        layers.append((layer_type, str(layer.get("digest"))))
    return ImageTarget(str(config.get("digest")), tuple(layers))


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
