"""The referrers API: listing manifests whose `subject` is a given digest."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from tests.support.oci import (
    OCI_EMPTY,
    OCI_INDEX,
    OCI_MANIFEST,
    Pushed,
    assert_oci_error,
    digest_of,
    encode,
    image_manifest,
    index_manifest,
    platform,
    push_blob_object,
    push_image,
    push_index,
    push_manifest,
    random_bytes,
    unknown_digest,
)

SIGNATURE = "application/vnd.example.signature.v1"
# "+" must survive the Link header's query encoding.
SBOM = "application/vnd.example.sbom.v1+json"
SBOM_CONFIG = "application/vnd.example.sbom.config.v1+json"


def list_referrers(client: httpx.Client, repo: str, digest: str, **params: Any) -> httpx.Response:
    response = client.get(f"/v2/{repo}/referrers/{digest}", params=params)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == OCI_INDEX
    document = response.json()
    assert document["schemaVersion"] == 2
    assert document["mediaType"] == OCI_INDEX
    return response


def descriptors(response: httpx.Response) -> list[dict[str, Any]]:
    manifests = response.json()["manifests"]
    assert isinstance(manifests, list)
    return manifests


def push_artifact(
    client: httpx.Client,
    repo: str,
    subject: Pushed,
    artifact_type: str | None,
    annotations: dict[str, str] | None = None,
) -> Pushed:
    """An artifact manifest (empty config, one random layer) pointing at `subject`."""
    empty = push_blob_object(client, repo, OCI_EMPTY, b"{}")
    payload = push_blob_object(client, repo, "application/vnd.example.data", random_bytes())
    document = image_manifest(
        empty, [payload], subject=subject, artifact_type=artifact_type, annotations=annotations
    )
    return push_manifest(client, repo, encode(document), OCI_MANIFEST)


def test_referrers_lists_descriptors_with_artifact_type_and_annotations(
    client: httpx.Client, repo: str
) -> None:
    subject = push_image(client, repo, "v1")
    notes = {"org.example.signer": "alice", "org.opencontainers.image.created": "2024-01-01"}
    signature = push_artifact(client, repo, subject, SIGNATURE, notes)
    # No artifactType: the listing shows the config's media type instead.
    sbom = push_image(client, repo, subject=subject, config_media_type=SBOM_CONFIG)

    listed = {d["digest"]: d for d in descriptors(list_referrers(client, repo, subject.digest))}
    assert listed == {
        signature.digest: {
            "mediaType": OCI_MANIFEST,
            "digest": signature.digest,
            "size": signature.size,
            "artifactType": SIGNATURE,
            "annotations": notes,
        },
        sbom.digest: {
            "mediaType": OCI_MANIFEST,
            "digest": sbom.digest,
            "size": sbom.size,
            "artifactType": SBOM_CONFIG,
        },
    }


def test_index_referrer_without_artifact_type_omits_it(client: httpx.Client, repo: str) -> None:
    subject = push_image(client, repo, "v1")
    child = push_image(client, repo)
    typed = push_index(client, repo, [(child, platform())], subject=subject, artifact_type=SBOM)
    untyped_document = index_manifest([child.descriptor()], subject=subject)
    untyped = push_manifest(client, repo, encode(untyped_document), OCI_INDEX)

    listed = {d["digest"]: d for d in descriptors(list_referrers(client, repo, subject.digest))}
    assert listed[untyped.digest] == {
        "mediaType": OCI_INDEX,
        "digest": untyped.digest,
        "size": untyped.size,
    }
    assert listed[typed.digest]["artifactType"] == SBOM


def test_artifact_type_filter_returns_only_matches(client: httpx.Client, repo: str) -> None:
    subject = push_image(client, repo, "v1")
    signatures = {push_artifact(client, repo, subject, SIGNATURE).digest for _ in range(2)}
    push_artifact(client, repo, subject, SBOM)

    response = list_referrers(client, repo, subject.digest, artifactType=SIGNATURE)
    assert response.headers["OCI-Filters-Applied"] == "artifactType"
    listed = descriptors(response)
    assert {d["digest"] for d in listed} == signatures
    assert all(d["artifactType"] == SIGNATURE for d in listed)

    response = list_referrers(client, repo, subject.digest, artifactType="application/x-none")
    assert response.headers["OCI-Filters-Applied"] == "artifactType"
    assert descriptors(response) == []


def test_unfiltered_listing_does_not_claim_a_filter(client: httpx.Client, repo: str) -> None:
    subject = push_image(client, repo, "v1")
    push_artifact(client, repo, subject, SIGNATURE)
    assert "OCI-Filters-Applied" not in list_referrers(client, repo, subject.digest).headers


def test_no_referrers_is_an_empty_index(client: httpx.Client, repo: str) -> None:
    subject = push_image(client, repo, "v1")
    for digest in (subject.digest, unknown_digest()):
        response = list_referrers(client, repo, digest)
        assert response.json() == {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    # Even a repository that does not exist answers 200 with an empty list.
    assert descriptors(list_referrers(client, f"{repo}/none", subject.digest)) == []


def test_referrers_of_a_subject_that_does_not_exist(client: httpx.Client, repo: str) -> None:
    absent = Pushed(OCI_MANIFEST, unknown_digest(), b"")
    artifact = push_artifact(client, repo, absent, SIGNATURE)
    listed = descriptors(list_referrers(client, repo, absent.digest))
    assert [d["digest"] for d in listed] == [artifact.digest]


def test_referrers_are_scoped_to_the_repository(client: httpx.Client, repo: str) -> None:
    subject = push_image(client, f"{repo}/one", "v1")
    push_artifact(client, f"{repo}/one", subject, SIGNATURE)
    push_image(client, f"{repo}/two", "v1")
    assert descriptors(list_referrers(client, f"{repo}/two", subject.digest)) == []


def test_deleted_referrer_leaves_the_listing(client: httpx.Client, repo: str) -> None:
    subject = push_image(client, repo, "v1")
    kept = push_artifact(client, repo, subject, SIGNATURE)
    dropped = push_artifact(client, repo, subject, SIGNATURE)
    assert client.delete(f"/v2/{repo}/manifests/{dropped.digest}").status_code == 202
    listed = descriptors(list_referrers(client, repo, subject.digest))
    assert [d["digest"] for d in listed] == [kept.digest]


def test_invalid_digest_is_400(client: httpx.Client, repo: str) -> None:
    push_image(client, repo, "v1")
    for digest in ("sha256:abc", "not-a-digest", "sha256:" + "A" * 64, "md5:" + "0" * 32):
        response = client.get(f"/v2/{repo}/referrers/{digest}")
        assert_oci_error(response, 400, "DIGEST_INVALID")


def test_referrers_pages_with_link_header(client: httpx.Client, repo: str) -> None:
    subject = push_image(client, repo, "v1")
    expected = {push_artifact(client, repo, subject, SIGNATURE).digest for _ in range(5)}

    seen: list[str] = []
    path: str | None = f"/v2/{repo}/referrers/{subject.digest}?n=2"
    pages = 0
    while path is not None:
        response = list_referrers(client, repo, subject.digest, **_query(path))
        page = descriptors(response)
        assert 0 < len(page) <= 2
        seen.extend(d["digest"] for d in page)
        link = response.headers.get("Link")
        pages += 1
        if link is None:
            path = None
        else:
            assert link.endswith('>; rel="next"')
            path = link[1 : link.index(">")]
            assert urlsplit(path).path == f"/v2/{repo}/referrers/{subject.digest}"
    assert pages == 3
    assert len(seen) == len(set(seen)) == 5
    assert set(seen) == expected


def test_filtered_referrers_pages_keep_the_filter(client: httpx.Client, repo: str) -> None:
    subject = push_image(client, repo, "v1")
    wanted = {push_artifact(client, repo, subject, SBOM).digest for _ in range(3)}
    for _ in range(3):
        push_artifact(client, repo, subject, SIGNATURE)
    first = list_referrers(client, repo, subject.digest, n=2, artifactType=SBOM)
    link = first.headers["Link"]
    query = _query(link[1 : link.index(">")])
    assert query["artifactType"] == SBOM
    second = list_referrers(client, repo, subject.digest, **query)
    assert "Link" not in second.headers
    found = {d["digest"] for d in descriptors(first) + descriptors(second)}
    assert found == wanted


def test_referrers_tag_schema_works_as_an_ordinary_tag(client: httpx.Client, repo: str) -> None:
    subject = push_image(client, repo, "v1")
    artifact = push_artifact(client, repo, subject, SIGNATURE)
    tag = "sha256-" + subject.digest.split(":", 1)[1]
    fallback = index_manifest([artifact.descriptor(artifactType=SIGNATURE)])
    pushed = push_manifest(client, repo, encode(fallback), OCI_INDEX, tag)

    response = client.get(f"/v2/{repo}/manifests/{tag}")
    assert response.status_code == 200
    assert response.content == pushed.body
    assert response.headers["Docker-Content-Digest"] == digest_of(pushed.body)
    assert tag in client.get(f"/v2/{repo}/tags/list").json()["tags"]
    # Updating the fallback index moves the tag like any other.
    fallback["manifests"] = []
    updated = push_manifest(client, repo, encode(fallback), OCI_INDEX, tag)
    assert client.get(f"/v2/{repo}/manifests/{tag}").content == updated.body


def _query(path: str) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(urlsplit(path).query).items()}
