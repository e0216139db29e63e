"""Content management: deleting manifests, tags and blobs, and what deletion refuses."""

from __future__ import annotations

import httpx

from tests.support.oci import (
    OCI_MANIFEST,
    assert_oci_error,
    encode,
    image_manifest,
    platform,
    push_blob,
    push_image,
    push_image_parts,
    push_manifest,
    push_multi_platform,
    put_manifest,
    random_bytes,
    unknown_digest,
)


def assert_manifest_gone(client: httpx.Client, repo: str, reference: str) -> None:
    assert_oci_error(client.get(f"/v2/{repo}/manifests/{reference}"), 404, "MANIFEST_UNKNOWN")
    assert client.head(f"/v2/{repo}/manifests/{reference}").status_code == 404


def assert_manifest_present(client: httpx.Client, repo: str, reference: str, body: bytes) -> None:
    response = client.get(f"/v2/{repo}/manifests/{reference}")
    assert response.status_code == 200, response.text
    assert response.content == body


def tags_of(client: httpx.Client, repo: str) -> list[str]:
    response = client.get(f"/v2/{repo}/tags/list")
    assert response.status_code == 200
    tags = response.json()["tags"]
    assert isinstance(tags, list)
    return tags


# -- manifests


def test_delete_manifest_by_digest_removes_it_and_every_tag(
    client: httpx.Client, repo: str
) -> None:
    image = push_image(client, repo, "v1")
    for tag in ("v1.0", "latest"):
        assert put_manifest(client, repo, tag, image.body, OCI_MANIFEST).status_code == 201
    other = push_image(client, repo, "other")

    response = client.delete(f"/v2/{repo}/manifests/{image.digest}")
    assert response.status_code == 202
    for reference in (image.digest, "v1", "v1.0", "latest"):
        assert_manifest_gone(client, repo, reference)
    assert tags_of(client, repo) == ["other"]
    assert_manifest_present(client, repo, "other", other.body)


def test_delete_manifest_by_digest_twice_is_manifest_unknown(
    client: httpx.Client, repo: str
) -> None:
    image = push_image(client, repo, "v1")
    assert client.delete(f"/v2/{repo}/manifests/{image.digest}").status_code == 202
    response = client.delete(f"/v2/{repo}/manifests/{image.digest}")
    assert_oci_error(response, 404, "MANIFEST_UNKNOWN")


def test_delete_by_tag_removes_only_that_tag(client: httpx.Client, repo: str) -> None:
    image = push_image(client, repo, "v1")
    assert put_manifest(client, repo, "latest", image.body, OCI_MANIFEST).status_code == 201

    assert client.delete(f"/v2/{repo}/manifests/v1").status_code == 202
    assert_manifest_gone(client, repo, "v1")
    assert_manifest_present(client, repo, image.digest, image.body)
    assert_manifest_present(client, repo, "latest", image.body)
    assert tags_of(client, repo) == ["latest"]


def test_deleted_manifest_can_be_pushed_again(client: httpx.Client, repo: str) -> None:
    image = push_image(client, repo, "v1")
    assert client.delete(f"/v2/{repo}/manifests/{image.digest}").status_code == 202
    assert put_manifest(client, repo, "v1", image.body, OCI_MANIFEST).status_code == 201
    assert_manifest_present(client, repo, "v1", image.body)


def test_deleting_a_manifest_in_one_repository_leaves_another(
    client: httpx.Client, repo: str
) -> None:
    config, layers = push_image_parts(client, f"{repo}/one")
    for blob in (config, *layers):
        push_blob(client, f"{repo}/two", blob.body)
    body = encode(image_manifest(config, layers))
    image = push_manifest(client, f"{repo}/one", body, OCI_MANIFEST, "v1")
    push_manifest(client, f"{repo}/two", body, OCI_MANIFEST, "v1")

    assert client.delete(f"/v2/{repo}/one/manifests/{image.digest}").status_code == 202
    assert_manifest_gone(client, f"{repo}/one", image.digest)
    assert_manifest_present(client, f"{repo}/two", image.digest, body)
    assert_manifest_present(client, f"{repo}/two", "v1", body)


def test_delete_unknown_manifest_is_manifest_unknown(client: httpx.Client, repo: str) -> None:
    push_image(client, repo, "v1")
    for reference in (unknown_digest(), "no-such-tag"):
        response = client.delete(f"/v2/{repo}/manifests/{reference}")
        assert_oci_error(response, 404, "MANIFEST_UNKNOWN")
    response = client.delete(f"/v2/{repo}/never-pushed/manifests/{unknown_digest()}")
    assert response.status_code == 404
    assert response.json()["errors"][0]["code"] in ("MANIFEST_UNKNOWN", "NAME_UNKNOWN")


def test_index_child_cannot_be_deleted_while_the_index_exists(
    client: httpx.Client, repo: str
) -> None:
    index, children = push_multi_platform(
        client, repo, [platform("linux", "amd64"), platform("linux", "arm64")], "multi"
    )
    response = client.delete(f"/v2/{repo}/manifests/{children[0].digest}")
    error = assert_oci_error(response, 409, "DENIED")
    assert index.digest in error["message"]
    assert_manifest_present(client, repo, children[0].digest, children[0].body)

    # Deleting the index first releases its children.
    assert client.delete(f"/v2/{repo}/manifests/{index.digest}").status_code == 202
    assert client.delete(f"/v2/{repo}/manifests/{children[0].digest}").status_code == 202
    assert_manifest_gone(client, repo, children[0].digest)
    assert_manifest_present(client, repo, children[1].digest, children[1].body)


def test_delete_by_tag_of_an_index_child_is_allowed(client: httpx.Client, repo: str) -> None:
    _, children = push_multi_platform(client, repo, [platform()], "multi")
    assert put_manifest(client, repo, "child", children[0].body, OCI_MANIFEST).status_code == 201
    # Only the tag goes; the index keeps its child.
    assert client.delete(f"/v2/{repo}/manifests/child").status_code == 202
    assert_manifest_present(client, repo, children[0].digest, children[0].body)


# -- blobs


def test_delete_blob_then_it_is_unknown(client: httpx.Client, repo: str) -> None:
    data = random_bytes()
    digest = push_blob(client, repo, data)
    response = client.delete(f"/v2/{repo}/blobs/{digest}")
    assert response.status_code == 202
    assert_oci_error(client.get(f"/v2/{repo}/blobs/{digest}"), 404, "BLOB_UNKNOWN")
    assert client.head(f"/v2/{repo}/blobs/{digest}").status_code == 404
    assert_oci_error(client.delete(f"/v2/{repo}/blobs/{digest}"), 404, "BLOB_UNKNOWN")


def test_deleting_a_blob_leaves_other_repositories_alone(client: httpx.Client, repo: str) -> None:
    data = random_bytes()
    digest = push_blob(client, f"{repo}/one", data)
    push_blob(client, f"{repo}/two", data)
    assert client.delete(f"/v2/{repo}/one/blobs/{digest}").status_code == 202
    assert client.get(f"/v2/{repo}/two/blobs/{digest}").content == data
    # And the content can come back through a new upload.
    push_blob(client, f"{repo}/one", data)
    assert client.get(f"/v2/{repo}/one/blobs/{digest}").content == data


def test_blob_referenced_by_a_manifest_cannot_be_deleted(client: httpx.Client, repo: str) -> None:
    config, layers = push_image_parts(client, repo)
    digest = push_manifest(
        client, repo, encode(image_manifest(config, layers)), OCI_MANIFEST, "v1"
    ).digest

    for blob in (config, layers[0]):
        error = assert_oci_error(client.delete(f"/v2/{repo}/blobs/{blob.digest}"), 409, "DENIED")
        assert digest in error["message"]
        assert client.get(f"/v2/{repo}/blobs/{blob.digest}").content == blob.body

    # Deleting only the tag keeps the manifest, so the blob stays protected.
    assert client.delete(f"/v2/{repo}/manifests/v1").status_code == 202
    assert client.delete(f"/v2/{repo}/blobs/{config.digest}").status_code == 409
    # Once the manifest is gone the blobs may go too.
    assert client.delete(f"/v2/{repo}/manifests/{digest}").status_code == 202
    for blob in (config, layers[0]):
        assert client.delete(f"/v2/{repo}/blobs/{blob.digest}").status_code == 202


def test_delete_unknown_blob_is_blob_unknown(client: httpx.Client, repo: str) -> None:
    push_blob(client, repo, random_bytes())
    for name in (repo, f"{repo}/never-pushed"):
        response = client.delete(f"/v2/{name}/blobs/{unknown_digest()}")
        assert_oci_error(response, 404, "BLOB_UNKNOWN")


def test_delete_with_invalid_digest_is_digest_invalid(client: httpx.Client, repo: str) -> None:
    push_image(client, repo, "v1")
    for path in ("blobs/sha256:1234", "manifests/sha256:XYZ", "blobs/md5:abcd"):
        assert_oci_error(client.delete(f"/v2/{repo}/{path}"), 400, "DIGEST_INVALID")
