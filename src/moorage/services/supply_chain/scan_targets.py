"""Which manifests are scanned: container images and indexes of them, nothing else.

An image manifest is scanned when its config is an image config (OCI or Docker) and every layer
is a filesystem layer (a tar, possibly compressed), whatever `artifactType` or tag it carries
(`moorage.domain.content`). That leaves out signatures (cosign's simple-signing layers, notation
envelopes), SBOMs, attestations (in-toto layers, also BuildKit's attestation manifests inside an
index), Helm charts and other artifacts. An index is scanned through every image it reaches,
nested indexes included.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from moorage.domain.content import ManifestKind, classify_document, document_of

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


def classify(body: bytes, media_type: str) -> ImageTarget | IndexTarget:
    """What scanning this manifest means; NotScannableError says why it is not scanned.

    The kind comes from the manifest's content (`moorage.domain.content`): a runnable image is
    scanned whatever `artifactType` or tag it carries, and an index is scanned through what it
    reaches whatever it declares.
    """
    document = document_of(body)
    if document is None:
        raise NotScannableError("its manifest is not a JSON object")
    found = classify_document(media_type, document)
    if found.kind is ManifestKind.ARTIFACT:
        raise NotScannableError(found.reason)
    if found.kind is ManifestKind.INDEX:
        if not found.children:
            raise NotScannableError("the index lists no manifests")
        if len(found.children) > MAX_INDEX_CHILDREN:
            raise NotScannableError(f"the index lists more than {MAX_INDEX_CHILDREN} manifests")
        return IndexTarget(found.children)
    config = document.get("config")
    assert isinstance(config, dict)  # an image has an image config
    layers = tuple(
        (str(layer.get("mediaType")), str(layer.get("digest")))
        for layer in _list(document.get("layers"))
        if isinstance(layer, dict)
    )
    return ImageTarget(str(config.get("digest")), layers)


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
