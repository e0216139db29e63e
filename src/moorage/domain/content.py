"""What a stored manifest is, decided by its own content: an image, an index, or an artifact.

This is the one definition every gate uses (the pull checks, scanning, and what a promotion
judges and carries):

- an **image** is a manifest a container runtime can run: an OCI or Docker image manifest whose
  config is an image configuration and whose every layer is a filesystem layer (a tar,
  compressed or not, distributable or not);
- an **index** is judged by its descendants: it is as bad as the worst manifest it reaches;
- everything else is an **artifact** (signatures, attestations, SBOMs, Helm charts, unknown
  types): no runtime runs it.

Only the manifest's own config and layer media types count. An `artifactType` (on the manifest
or on the descriptor a parent index lists it by), a `subject`, a tag name such as
`sha256-<hex>.sig`: anyone who may push can write those on a runnable image to slip it past a
gate, so they decide nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from moorage.domain import mediatypes as mt

IMAGE_CONFIG_TYPES: Final = frozenset(
    {"application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json"}
)
# Filesystem layers (tar, compressed or not, distributable or not) of OCI and Docker images.
IMAGE_LAYER_PREFIXES: Final = (
    "application/vnd.oci.image.layer.",
    "application/vnd.docker.image.rootfs.",
)


class ManifestKind(StrEnum):
    IMAGE = "image"
    INDEX = "index"
    ARTIFACT = "artifact"


@dataclass(frozen=True, slots=True)
class Classified:
    """A manifest's kind, why (for an artifact), and the child digests of an index."""

    kind: ManifestKind
    reason: str = ""
    children: tuple[str, ...] = ()


def document_of(body: bytes) -> dict[str, object] | None:
    """The manifest's JSON object, or None when it is not one."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return document if isinstance(document, dict) else None


def media_type_of(document: Mapping[str, object], stored: str | None = None) -> str:
    """The stored media type, else the declared one, else what the shape says."""
    if stored:
        return stored
    declared = document.get("mediaType")
    if isinstance(declared, str) and declared:
        return declared
    return mt.OCI_INDEX if isinstance(document.get("manifests"), list) else mt.OCI_MANIFEST


def classify_document(media_type: str, document: Mapping[str, object]) -> Classified:
    """What the manifest is, from its media type and its own config and layers."""
    if media_type in mt.INDEXES:
        return Classified(ManifestKind.INDEX, children=child_digests(document))
    if media_type not in mt.IMAGE_MANIFESTS:
        return Classified(ManifestKind.ARTIFACT, f"{media_type[:128]} is not an image manifest")
    config = document.get("config")
    config_type = config.get("mediaType") if isinstance(config, Mapping) else None
    if config_type not in IMAGE_CONFIG_TYPES:
        return Classified(
            ManifestKind.ARTIFACT,
            f"its config is {str(config_type)[:128]}, not an image config: an artifact",
        )
    layers = document.get("layers")
    if not isinstance(layers, list):
        return Classified(ManifestKind.ARTIFACT, "it lists no layers")
    for layer in layers:
        if not isinstance(layer, Mapping):
            return Classified(ManifestKind.ARTIFACT, "a layer descriptor is not an object")
        layer_type = layer.get("mediaType")
        if not isinstance(layer_type, str) or not layer_type.startswith(IMAGE_LAYER_PREFIXES):
            return Classified(
                ManifestKind.ARTIFACT,
                f"it has a {str(layer_type)[:128]} layer: an artifact, not a container image",
            )
    return Classified(ManifestKind.IMAGE)


def classify_body(body: bytes, media_type: str | None = None) -> Classified:
    document = document_of(body)
    if document is None:
        return Classified(ManifestKind.ARTIFACT, "its manifest is not a JSON object")
    return classify_document(media_type_of(document, media_type), document)


def child_digests(document: Mapping[str, object]) -> tuple[str, ...]:
    """The digests an index lists, in order, once each (whatever their descriptors claim)."""
    entries = document.get("manifests")
    if not isinstance(entries, list):
        return ()
    found = (
        entry["digest"]
        for entry in entries
        if isinstance(entry, Mapping) and isinstance(entry.get("digest"), str)
    )
    return tuple(dict.fromkeys(found))


def is_runnable(media_type: str, document: Mapping[str, object]) -> bool:
    """Whether a manifest may be something a runtime runs: an image, or an index (which is
    judged through its descendants: its own `artifactType` decides nothing)."""
    return classify_document(media_type, document).kind is not ManifestKind.ARTIFACT
