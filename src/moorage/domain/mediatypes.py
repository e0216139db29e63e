"""Media types the registry understands."""

from __future__ import annotations

import re
from typing import Final

OCI_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX: Final = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST: Final = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST: Final = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1: Final = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED: Final = "application/vnd.docker.distribution.manifest.v1+prettyjws"
OCI_EMPTY: Final = "application/vnd.oci.empty.v1+json"

IMAGE_MANIFESTS: Final = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEXES: Final = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
MANIFEST_TYPES: Final = IMAGE_MANIFESTS | INDEXES

# Layers that may live outside the registry (their `urls` point elsewhere): a manifest
# may reference them without the registry holding the blob.
_NON_DISTRIBUTABLE_PREFIXES: Final = (
    "application/vnd.oci.image.layer.nondistributable.",
    "application/vnd.docker.image.rootfs.foreign.",
)

# RFC 6838 type/subtype, restricted-name characters.
_MEDIA_TYPE_RE: Final = re.compile(
    r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}$"
)


def is_valid_media_type(value: str) -> bool:
    return _MEDIA_TYPE_RE.fullmatch(value) is not None


def is_non_distributable(media_type: str) -> bool:
    return media_type.startswith(_NON_DISTRIBUTABLE_PREFIXES)


def strip_parameters(content_type: str) -> str:
    """`type/subtype; charset=x` -> `type/subtype` (the spec says to ignore parameters)."""
    return content_type.split(";", 1)[0].strip().lower()
