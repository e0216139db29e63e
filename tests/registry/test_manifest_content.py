"""The one definition of what a manifest is: decided by its own config and layers only."""

from __future__ import annotations

import json
from typing import Any

import pytest

from moorage.domain import mediatypes as mt
from moorage.domain.content import ManifestKind, child_digests, classify_body, classify_document

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
TAR_GZ = "application/vnd.oci.image.layer.v1.tar+gzip"
DIGEST = "sha256:" + "a" * 64
OTHER = "sha256:" + "b" * 64
SUBJECT = {"mediaType": mt.OCI_MANIFEST, "digest": OTHER, "size": 9}


def manifest(config: str, *layers: str, **extra: Any) -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": config, "digest": DIGEST, "size": 2},
        "layers": [{"mediaType": layer, "digest": OTHER, "size": 3} for layer in layers],
        **extra,
    }


@pytest.mark.parametrize(
    ("media_type", "document", "kind"),
    [
        (mt.OCI_MANIFEST, manifest(OCI_CONFIG, TAR_GZ), ManifestKind.IMAGE),
        (mt.OCI_MANIFEST, manifest(OCI_CONFIG), ManifestKind.IMAGE),
        (
            mt.DOCKER_MANIFEST,
            manifest(DOCKER_CONFIG, "application/vnd.docker.image.rootfs.diff.tar.gzip"),
            ManifestKind.IMAGE,
        ),
        # What anyone who may push can write on a runnable image changes nothing.
        (
            mt.OCI_MANIFEST,
            manifest(OCI_CONFIG, TAR_GZ, artifactType="application/spdx+json", subject=SUBJECT),
            ManifestKind.IMAGE,
        ),
        (
            mt.OCI_MANIFEST,
            manifest(OCI_CONFIG, "application/vnd.dev.cosign.simplesigning.v1+json"),
            ManifestKind.ARTIFACT,
        ),
        (mt.OCI_MANIFEST, manifest(OCI_CONFIG, TAR_GZ, "text/spdx+json"), ManifestKind.ARTIFACT),
        (mt.OCI_MANIFEST, manifest(mt.OCI_EMPTY, TAR_GZ), ManifestKind.ARTIFACT),
        (
            mt.OCI_MANIFEST,
            manifest("application/vnd.cncf.helm.config.v1+json", TAR_GZ),
            ManifestKind.ARTIFACT,
        ),
        (mt.OCI_MANIFEST, manifest(OCI_CONFIG, TAR_GZ) | {"layers": "x"}, ManifestKind.ARTIFACT),
        ("application/vnd.unknown+json", manifest(OCI_CONFIG, TAR_GZ), ManifestKind.ARTIFACT),
        (
            mt.OCI_INDEX,
            {"manifests": [], "artifactType": "application/vnd.example"},
            ManifestKind.INDEX,
        ),
        (mt.DOCKER_MANIFEST_LIST, {"manifests": []}, ManifestKind.INDEX),
    ],
)
def test_the_kind_comes_from_the_manifests_own_content(
    media_type: str, document: dict[str, Any], kind: ManifestKind
) -> None:
    assert classify_document(media_type, document).kind is kind
    assert classify_body(json.dumps(document).encode(), media_type).kind is kind


def test_an_index_lists_each_child_once_whatever_its_descriptor_claims() -> None:
    children = [
        {"mediaType": mt.OCI_MANIFEST, "digest": DIGEST, "artifactType": "application/x"},
        {"mediaType": mt.OCI_INDEX, "digest": OTHER},
        {"mediaType": mt.OCI_MANIFEST, "digest": DIGEST},
        {"digest": 7},
        "nonsense",
    ]
    assert child_digests({"manifests": children}) == (DIGEST, OTHER)
    found = classify_body(json.dumps({"mediaType": mt.OCI_INDEX, "manifests": children}).encode())
    assert (found.kind, found.children) == (ManifestKind.INDEX, (DIGEST, OTHER))


def test_the_declared_media_type_or_the_shape_stands_in_for_a_missing_stored_one() -> None:
    image = json.dumps(manifest(OCI_CONFIG, TAR_GZ)).encode()
    assert classify_body(image).kind is ManifestKind.IMAGE
    bare = json.dumps({"manifests": [{"digest": DIGEST}]}).encode()
    assert classify_body(bare).kind is ManifestKind.INDEX
    assert classify_body(b"[1]").kind is ManifestKind.ARTIFACT
