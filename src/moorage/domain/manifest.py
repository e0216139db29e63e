"""Parse and validate manifests; extract what the registry indexes from them.

The registry keeps the exact bytes it was given; this module only reads them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Final

from moorage.domain import mediatypes as mt
from moorage.domain.digest import Digest
from moorage.domain.errors import ErrorCode, RegistryError

_GENERIC_CONTENT_TYPES: Final = frozenset({"", "application/json", "application/octet-stream"})


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: Digest
    size: int
    artifact_type: str | None = None
    annotations: dict[str, str] | None = None
    platform: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ParsedManifest:
    """What the registry needs to know about a manifest to store and index it."""

    media_type: str
    digest: Digest
    size: int
    config: Descriptor | None
    layers: tuple[Descriptor, ...]
    children: tuple[Descriptor, ...]
    subject: Descriptor | None
    artifact_type: str | None
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def is_index(self) -> bool:
        return self.media_type in mt.INDEXES

    def required_blobs(self) -> list[Digest]:
        """Blobs that must already be in the repository before this manifest is accepted."""
        blobs = [self.config.digest] if self.config is not None else []
        blobs.extend(
            layer.digest for layer in self.layers if not mt.is_non_distributable(layer.media_type)
        )
        return blobs

    def referenced_blobs(self) -> list[Digest]:
        """Every blob this manifest keeps alive (for garbage collection)."""
        blobs = [self.config.digest] if self.config is not None else []
        blobs.extend(layer.digest for layer in self.layers)
        return list(dict.fromkeys(blobs))

    def referrer_artifact_type(self) -> str | None:
        """The `artifactType` a referrers listing shows for this manifest (spec rules)."""
        if self.artifact_type:
            return self.artifact_type
        if self.config is not None and not self.is_index:
            return self.config.media_type
        return None


class DuplicateKeyError(ValueError):
    """A JSON object names one key twice."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise DuplicateKeyError(key)
        document[key] = value
    return document


def load_json_strictly(body: bytes) -> Any:
    """JSON whose objects never repeat a key, at any depth: with a repeated key, parsers
    disagree on the value (the first or the last wins), so a registry, a scanner and a runtime
    could each see a different manifest behind one digest."""
    return json.loads(body, object_pairs_hook=_unique_keys)


def parse_manifest(body: bytes, content_type: str, digest: Digest) -> ParsedManifest:
    """Validate `body` as a manifest of a supported media type, or raise MANIFEST_INVALID."""
    try:
        document = load_json_strictly(body)
    except DuplicateKeyError as exc:
        raise _invalid(
            f"manifest has the key {str(exc)[:100]!r} twice in one object; each key may appear once"
        ) from None
    except (ValueError, RecursionError) as exc:
        raise _invalid(f"manifest is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise _invalid("manifest must be a JSON object")

    media_type = _resolve_media_type(document, mt.strip_parameters(content_type))
    if document.get("schemaVersion") != 2:
        raise _invalid("schemaVersion must be 2")

    subject = _optional_descriptor(document, "subject")
    artifact_type = _optional_media_type(document, "artifactType")
    annotations = _annotations(document.get("annotations"), "annotations")

    if media_type in mt.INDEXES:
        children = tuple(
            _descriptor(item, f"manifests[{i}]")
            for i, item in enumerate(_list(document, "manifests"))
        )
        if "config" in document or "layers" in document:
            raise _invalid("an index must not have config or layers")
        return ParsedManifest(
            media_type, digest, len(body), None, (), children, subject, artifact_type, annotations
        )

    config_value = document.get("config")
    if config_value is None:
        raise _invalid("an image manifest requires a config descriptor")
    config = _descriptor(config_value, "config")
    layers = tuple(
        _descriptor(item, f"layers[{i}]") for i, item in enumerate(_list(document, "layers"))
    )
    if "manifests" in document:
        raise _invalid("an image manifest must not have manifests")
    if media_type == mt.DOCKER_MANIFEST and (subject is not None or artifact_type is not None):
        raise _invalid("Docker schema2 manifests cannot carry subject or artifactType")
    return ParsedManifest(
        media_type, digest, len(body), config, layers, (), subject, artifact_type, annotations
    )


def _resolve_media_type(document: dict[str, Any], content_type: str) -> str:
    declared = document.get("mediaType")
    if declared is not None and not isinstance(declared, str):
        raise _invalid("mediaType must be a string")
    if content_type in (mt.DOCKER_SCHEMA1, mt.DOCKER_SCHEMA1_SIGNED) or declared in (
        mt.DOCKER_SCHEMA1,
        mt.DOCKER_SCHEMA1_SIGNED,
    ):
        raise _invalid("Docker schema1 manifests are not supported; push schema2 or OCI")
    if content_type not in _GENERIC_CONTENT_TYPES:
        if content_type not in mt.MANIFEST_TYPES:
            raise _invalid(f"unsupported manifest media type {content_type[:128]!r}")
        if declared is not None and declared != content_type:
            raise _invalid(
                f"Content-Type {content_type!r} does not match the manifest's mediaType"
                f" {declared[:128]!r}"
            )
        return content_type
    if declared is not None:
        if declared not in mt.MANIFEST_TYPES:
            raise _invalid(f"unsupported manifest media type {declared[:128]!r}")
        return declared
    # No media type anywhere: an OCI document is recognised by its shape.
    if "manifests" in document:
        return mt.OCI_INDEX
    if "config" in document:
        return mt.OCI_MANIFEST
    raise _invalid("cannot determine the manifest's media type")


def _descriptor(value: Any, where: str) -> Descriptor:
    if not isinstance(value, dict):
        raise _invalid(f"{where} must be a descriptor object")
    media_type = value.get("mediaType")
    if not isinstance(media_type, str) or not mt.is_valid_media_type(media_type):
        raise _invalid(f"{where}.mediaType is missing or malformed")
    raw_digest = value.get("digest")
    if not isinstance(raw_digest, str):
        raise _invalid(f"{where}.digest is missing")
    try:
        digest = Digest.parse(raw_digest)
    except RegistryError:
        raise _invalid(f"{where}.digest {raw_digest[:200]!r} is invalid") from None
    size = value.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise _invalid(f"{where}.size must be a non-negative integer")
    artifact_type = _optional_media_type(value, "artifactType", where)
    annotations = _annotations(value.get("annotations"), f"{where}.annotations")
    platform = value.get("platform")
    if platform is not None and not isinstance(platform, dict):
        raise _invalid(f"{where}.platform must be an object")
    urls = value.get("urls")
    if urls is not None and not (isinstance(urls, list) and all(isinstance(u, str) for u in urls)):
        raise _invalid(f"{where}.urls must be a list of strings")
    return Descriptor(media_type, digest, size, artifact_type, annotations or None, platform)


def _optional_descriptor(document: dict[str, Any], key: str) -> Descriptor | None:
    value = document.get(key)
    return None if value is None else _descriptor(value, key)


def _optional_media_type(document: dict[str, Any], key: str, where: str = "") -> str | None:
    value = document.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not mt.is_valid_media_type(value):
        raise _invalid(f"{where + '.' if where else ''}{key} must be a media type")
    return value


def _annotations(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise _invalid(f"{where} must map strings to strings")
    return value


def _list(document: dict[str, Any], key: str) -> list[Any]:
    value = document.get(key)
    if not isinstance(value, list):
        raise _invalid(f"{key} must be a list")
    return value


def _invalid(message: str) -> RegistryError:
    return RegistryError(ErrorCode.MANIFEST_INVALID, message)
