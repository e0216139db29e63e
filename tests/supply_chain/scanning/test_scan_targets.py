"""What is scanned, and how an index's report follows from its platform images' reports."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from moorage.metadata.supply_chain.scan_store import ReportRecord
from moorage.services.supply_chain.scan_reports import aggregate_index, findings_json
from moorage.services.supply_chain.scan_targets import (
    ImageTarget,
    IndexTarget,
    NotScannableError,
    classify,
)
from moorage.vulnerability.findings import Finding
from moorage.vulnerability.severity import Severity

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DIGEST = "sha256:" + "a" * 64
OTHER = "sha256:" + "b" * 64


def manifest(config_type: str, *layer_types: str, **extra: Any) -> bytes:
    document = {
        "schemaVersion": 2,
        "config": {"mediaType": config_type, "digest": DIGEST, "size": 2},
        "layers": [{"mediaType": kind, "digest": OTHER, "size": 3} for kind in layer_types],
        **extra,
    }
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    ("body", "media_type"),
    [
        (
            manifest(
                "application/vnd.oci.image.config.v1+json",
                "application/vnd.oci.image.layer.v1.tar+gzip",
                "application/vnd.oci.image.layer.v1.tar+zstd",
            ),
            OCI_MANIFEST,
        ),
        (
            manifest(
                "application/vnd.docker.container.image.v1+json",
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
            ),
            DOCKER_MANIFEST,
        ),
        (manifest("application/vnd.oci.image.config.v1+json"), OCI_MANIFEST),  # no layers
    ],
)
def test_container_images_are_scanned(body: bytes, media_type: str) -> None:
    target = classify(body, media_type)
    assert isinstance(target, ImageTarget)
    assert target.config_digest == DIGEST


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (  # cosign's legacy signature: an image config, but a simple-signing layer
            manifest(
                "application/vnd.oci.image.config.v1+json",
                "application/vnd.dev.cosign.simplesigning.v1+json",
            ),
            "simplesigning",
        ),
        (  # BuildKit's attestation manifest inside an index
            manifest("application/vnd.oci.image.config.v1+json", "application/vnd.in-toto+json"),
            "in-toto",
        ),
        (  # an SBOM pushed by oras
            manifest(
                "application/vnd.oci.empty.v1+json",
                "application/spdx+json",
                artifactType="application/spdx+json",
            ),
            "not an image config",
        ),
        (  # a Helm chart
            manifest(
                "application/vnd.cncf.helm.config.v1+json",
                "application/vnd.cncf.helm.chart.content.v1.tar+gzip",
            ),
            "not an image config",
        ),
        (b"[1, 2]", "not a JSON object"),
    ],
)
def test_artifacts_are_not_scanned(body: bytes, reason: str) -> None:
    with pytest.raises(NotScannableError) as raised:
        classify(body, OCI_MANIFEST)
    assert reason in raised.value.reason


def test_content_decides_whatever_the_artifact_type_or_tag_claims() -> None:
    image = manifest(
        "application/vnd.oci.image.config.v1+json",
        "application/vnd.oci.image.layer.v1.tar",
        artifactType="application/spdx+json",
    )
    # A runnable image is scanned even when it declares itself an artifact.
    assert isinstance(classify(image, OCI_MANIFEST), ImageTarget)
    child = {"mediaType": OCI_MANIFEST, "digest": DIGEST, "size": 1, "artifactType": "x/y"}
    index = {"schemaVersion": 2, "manifests": [child], "artifactType": "application/x"}
    assert classify(json.dumps(index).encode(), OCI_INDEX) == IndexTarget((DIGEST,))


def test_an_index_lists_its_children_and_no_more_than_the_cap() -> None:
    children = [{"mediaType": OCI_MANIFEST, "digest": DIGEST, "size": 1}]
    index = json.dumps({"schemaVersion": 2, "manifests": children}).encode()
    assert classify(index, OCI_INDEX) == IndexTarget((DIGEST,))
    with pytest.raises(NotScannableError, match="lists no manifests"):
        classify(json.dumps({"schemaVersion": 2, "manifests": []}).encode(), OCI_INDEX)
    distinct = [
        {"mediaType": OCI_MANIFEST, "digest": f"sha256:{n:064x}", "size": 1} for n in range(257)
    ]
    assert classify(json.dumps({"manifests": children * 3}).encode(), OCI_INDEX) == IndexTarget(
        (DIGEST,)
    )
    many = json.dumps({"schemaVersion": 2, "manifests": distinct}).encode()
    with pytest.raises(NotScannableError, match="more than 256"):
        classify(many, OCI_INDEX)


def finding(vulnerability: str, package: str, severity: Severity) -> Finding:
    return Finding(vulnerability, (), package, "Debian:12", "1.0", None, severity)


def child(
    digest: str,
    status: str,
    findings: tuple[Finding, ...] = (),
    generation: str | None = "g1",
    error: str | None = None,
) -> ReportRecord:
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    return ReportRecord(
        digest, "p/r", OCI_MANIFEST, status, "moorage", generation, findings_json(findings),
        error, (), (), moment, moment, moment, moment, 0,
    )  # fmt: skip


def test_an_index_is_pending_or_running_until_every_child_is_done() -> None:
    assert aggregate_index([child(DIGEST, "Pending"), None]).status == "Pending"
    running = aggregate_index([child(DIGEST, "Success"), child(OTHER, "Pending")])
    assert (running.status, running.findings, running.generation) == ("Running", "[]", None)
    failed_early = aggregate_index([child(DIGEST, "Error", error="bad"), child(OTHER, "Running")])
    assert failed_early.status == "Running"


def test_an_index_is_the_worst_of_its_children_with_the_union_of_their_findings() -> None:
    shared = finding("CVE-1", "libssl3", Severity.HIGH)
    done = aggregate_index(
        [
            child(DIGEST, "Success", (shared, finding("CVE-2", "zlib1g", Severity.LOW))),
            child(OTHER, "Success", (shared,)),
        ]
    )
    assert (done.status, done.generation, done.error) == ("Success", "g1", None)
    assert [item["id"] for item in json.loads(done.findings)] == ["CVE-1", "CVE-2"]
    failed = aggregate_index(
        [
            child(DIGEST, "Success", (shared,)),
            child(OTHER, "Error", error="a bomb", generation=None),
        ]
    )
    assert failed.status == "Error"
    assert failed.error == f"1 of 2 platform images could not be scanned; {OTHER}: a bomb"
    assert [item["id"] for item in json.loads(failed.findings)] == ["CVE-1"]
    assert failed.generation is None  # the children were not all matched against one generation
