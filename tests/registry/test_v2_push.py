"""Pushing manifests: by tag and by digest, verification, subjects and indexes."""

from __future__ import annotations

import httpx
import pytest

from tests.support.oci import (
    ALL_MANIFEST_TYPES,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_MANIFEST,
    Pushed,
    assert_oci_error,
    digest_of,
    encode,
    image_manifest,
    platform,
    push_any,
    push_blob_object,
    push_image,
    push_image_parts,
    push_index,
    put_manifest,
    random_bytes,
    unknown_digest,
)

ARTIFACT = "application/vnd.example.signature.v1"


def assert_manifest_created(response: httpx.Response, repo: str, digest: str) -> None:
    assert response.status_code == 201, response.text
    assert response.headers["Location"] == f"/v2/{repo}/manifests/{digest}"
    assert response.headers["Docker-Content-Digest"] == digest


def image_body(client: httpx.Client, repo: str, media_type: str = OCI_MANIFEST) -> bytes:
    config, layers = push_image_parts(client, repo, media_type=media_type)
    return encode(image_manifest(config, layers, media_type=media_type))


def assert_manifest_served(client: httpx.Client, repo: str, reference: str, body: bytes) -> None:
    response = client.get(f"/v2/{repo}/manifests/{reference}")
    assert response.status_code == 200, response.text
    assert response.content == body


@pytest.mark.parametrize("media_type", [OCI_MANIFEST, DOCKER_MANIFEST])
def test_put_manifest_by_tag(client: httpx.Client, repo: str, media_type: str) -> None:
    body = image_body(client, repo, media_type)
    response = put_manifest(client, repo, "v1.0", body, media_type)
    assert_manifest_created(response, repo, digest_of(body))
    assert_manifest_served(client, repo, "v1.0", body)
    assert_manifest_served(client, repo, digest_of(body), body)


def test_put_manifest_by_digest(client: httpx.Client, repo: str) -> None:
    body = image_body(client, repo)
    response = put_manifest(client, repo, digest_of(body), body, OCI_MANIFEST)
    assert_manifest_created(response, repo, digest_of(body))
    assert_manifest_served(client, repo, digest_of(body), body)
    # Pushing by digest creates no tag.
    assert client.get(f"/v2/{repo}/tags/list").json()["tags"] == []


def test_put_manifest_by_sha512_digest(client: httpx.Client, repo: str) -> None:
    body = image_body(client, repo)
    digest = digest_of(body, "sha512")
    response = put_manifest(client, repo, digest, body, OCI_MANIFEST)
    assert_manifest_created(response, repo, digest)
    assert_manifest_served(client, repo, digest, body)


def test_put_manifest_by_mismatching_digest_stores_nothing(client: httpx.Client, repo: str) -> None:
    body = image_body(client, repo)
    claimed = unknown_digest()
    response = put_manifest(client, repo, claimed, body, OCI_MANIFEST)
    assert_oci_error(response, 400, "DIGEST_INVALID")
    for reference in (claimed, digest_of(body)):
        assert_oci_error(client.get(f"/v2/{repo}/manifests/{reference}"), 404, "MANIFEST_UNKNOWN")


def test_pushing_the_same_manifest_again_is_idempotent(client: httpx.Client, repo: str) -> None:
    body = image_body(client, repo)
    for _ in range(2):
        assert_manifest_created(
            put_manifest(client, repo, "v1", body, OCI_MANIFEST), repo, digest_of(body)
        )
    assert_manifest_served(client, repo, "v1", body)


def test_pushing_a_tag_again_moves_it(client: httpx.Client, repo: str) -> None:
    first, second = image_body(client, repo), image_body(client, repo)
    assert put_manifest(client, repo, "latest", first, OCI_MANIFEST).status_code == 201
    assert put_manifest(client, repo, "latest", second, OCI_MANIFEST).status_code == 201
    assert_manifest_served(client, repo, "latest", second)
    # The manifest the tag left is still there by digest.
    assert_manifest_served(client, repo, digest_of(first), first)


def test_one_manifest_may_carry_many_tags(client: httpx.Client, repo: str) -> None:
    body = image_body(client, repo)
    for tag in ("a", "b", "c"):
        assert put_manifest(client, repo, tag, body, OCI_MANIFEST).status_code == 201
    for tag in ("a", "b", "c"):
        assert_manifest_served(client, repo, tag, body)


def test_content_type_parameters_are_ignored(client: httpx.Client, repo: str) -> None:
    body = image_body(client, repo)
    response = put_manifest(client, repo, "v1", body, f"{OCI_MANIFEST}; charset=utf-8")
    assert_manifest_created(response, repo, digest_of(body))
    assert client.get(f"/v2/{repo}/manifests/v1").headers["Content-Type"] == OCI_MANIFEST


def test_media_type_comes_from_the_body_when_content_type_is_generic(
    client: httpx.Client, repo: str
) -> None:
    body = image_body(client, repo, DOCKER_MANIFEST)
    response = put_manifest(client, repo, "v1", body, "application/json")
    assert_manifest_created(response, repo, digest_of(body))
    assert client.get(f"/v2/{repo}/manifests/v1").headers["Content-Type"] == DOCKER_MANIFEST


def test_manifest_with_subject_answers_oci_subject(client: httpx.Client, repo: str) -> None:
    subject = push_image(client, repo, "v1")
    config, layers = push_image_parts(client, repo)
    body = encode(image_manifest(config, layers, subject=subject, artifact_type=ARTIFACT))
    for reference in (digest_of(body), "signed"):
        response = put_manifest(client, repo, reference, body, OCI_MANIFEST)
        assert_manifest_created(response, repo, digest_of(body))
        assert response.headers["OCI-Subject"] == subject.digest


def test_manifest_with_a_subject_that_does_not_exist_is_accepted(
    client: httpx.Client, repo: str
) -> None:
    absent = Pushed(OCI_MANIFEST, unknown_digest(), b"{}")
    empty = push_blob_object(client, repo, OCI_EMPTY, b"{}")
    body = encode(image_manifest(empty, [], subject=absent, artifact_type=ARTIFACT))
    response = put_manifest(client, repo, digest_of(body), body, OCI_MANIFEST)
    assert_manifest_created(response, repo, digest_of(body))
    assert response.headers["OCI-Subject"] == absent.digest
    assert_manifest_served(client, repo, digest_of(body), body)


def test_manifest_without_subject_has_no_oci_subject(client: httpx.Client, repo: str) -> None:
    body = image_body(client, repo)
    response = put_manifest(client, repo, "v1", body, OCI_MANIFEST)
    assert response.status_code == 201
    assert "OCI-Subject" not in response.headers


def test_artifact_manifest_with_empty_config(client: httpx.Client, repo: str) -> None:
    empty = push_blob_object(client, repo, OCI_EMPTY, b"{}")
    payload = push_blob_object(client, repo, "application/vnd.example.data", random_bytes())
    body = encode(image_manifest(empty, [payload], artifact_type=ARTIFACT))
    response = put_manifest(client, repo, "artifact", body, OCI_MANIFEST)
    assert_manifest_created(response, repo, digest_of(body))
    assert_manifest_served(client, repo, "artifact", body)


@pytest.mark.parametrize(
    "media_type", [OCI_INDEX, "application/vnd.docker.distribution.manifest.list.v2+json"]
)
def test_index_whose_children_exist_is_accepted(
    client: httpx.Client, repo: str, media_type: str
) -> None:
    child_type = OCI_MANIFEST if media_type == OCI_INDEX else DOCKER_MANIFEST
    children = [push_image(client, repo, media_type=child_type) for _ in range(3)]
    platforms = [platform("linux", arch) for arch in ("amd64", "arm64", "s390x")]
    index = push_index(
        client, repo, list(zip(children, platforms, strict=True)), "multi", media_type=media_type
    )
    response = client.get(f"/v2/{repo}/manifests/multi")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == media_type
    assert [d["digest"] for d in response.json()["manifests"]] == [c.digest for c in children]
    assert response.headers["Docker-Content-Digest"] == index.digest


def test_index_of_indexes_is_accepted(client: httpx.Client, repo: str) -> None:
    inner = push_any(client, repo, OCI_INDEX)
    outer = push_index(client, repo, [(inner, platform())], "nested")
    assert_manifest_served(client, repo, "nested", outer.body)


def test_non_distributable_layers_need_not_be_pushed(client: httpx.Client, repo: str) -> None:
    config = push_blob_object(client, repo, OCI_CONFIG, b"{}")
    foreign = Pushed(
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", unknown_digest(), b"x"
    )
    document = image_manifest(config, [foreign])
    document["layers"][0]["urls"] = ["https://example.com/layer.tar.gz"]
    body = encode(document)
    assert_manifest_created(
        put_manifest(client, repo, "win", body, OCI_MANIFEST), repo, digest_of(body)
    )


@pytest.mark.parametrize("media_type", ALL_MANIFEST_TYPES)
def test_manifest_needs_its_content_in_the_same_repository(
    client: httpx.Client, repo: str, media_type: str
) -> None:
    pushed = push_any(client, repo, media_type, "v1")
    # The second repository lacks the blobs and children, so the same bytes are refused there.
    response = put_manifest(client, f"{repo}/copy", "v1", pushed.body, media_type)
    assert_oci_error(response, 400, "MANIFEST_BLOB_UNKNOWN")
    assert_oci_error(client.get(f"/v2/{repo}/copy/manifests/v1"), 404, "MANIFEST_UNKNOWN")
