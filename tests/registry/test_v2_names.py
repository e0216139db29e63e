"""Repository names, tags and digests in paths: what the grammar admits and what it refuses."""

from __future__ import annotations

import httpx
import pytest

from tests.support.oci import (
    OCI_MANIFEST,
    RawResponse,
    assert_oci_error,
    digest_of,
    push_blob,
    push_image,
    put_manifest,
    random_bytes,
    raw_oci_error,
    raw_request,
    unknown_digest,
)
from tests.support.server import RegistryProcess

VALID_DIGEST = "sha256:" + "0" * 64


def endpoints(name: str) -> list[tuple[str, str]]:
    """One request of each kind that names a repository."""
    return [
        ("GET", f"/v2/{name}/tags/list"),
        ("GET", f"/v2/{name}/manifests/latest"),
        ("HEAD", f"/v2/{name}/manifests/latest"),
        ("PUT", f"/v2/{name}/manifests/latest"),
        ("DELETE", f"/v2/{name}/manifests/latest"),
        ("GET", f"/v2/{name}/blobs/{VALID_DIGEST}"),
        ("DELETE", f"/v2/{name}/blobs/{VALID_DIGEST}"),
        ("POST", f"/v2/{name}/blobs/uploads/"),
        ("GET", f"/v2/{name}/blobs/uploads/some-session"),
        ("GET", f"/v2/{name}/referrers/{VALID_DIGEST}"),
    ]


def assert_name_invalid(response: RawResponse, method: str) -> None:
    assert response.status == 400, (response.status, response.body)
    if method != "HEAD":
        raw_oci_error(response, 400, "NAME_INVALID")


# -- accepted names


@pytest.mark.parametrize(
    "suffix", ["a/b/c/d", "x.y", "x_y", "x__y", "x-y", "x---y", "0/1/2", "a1/b2.c3/d_4/e--5"]
)
def test_valid_names_work_end_to_end(client: httpx.Client, repo: str, suffix: str) -> None:
    name = f"{repo}/{suffix}"
    image = push_image(client, name, "v1")
    response = client.get(f"/v2/{name}/manifests/v1")
    assert response.status_code == 200
    assert response.content == image.body
    assert client.get(f"/v2/{name}/tags/list").json() == {"name": name, "tags": ["v1"]}


def test_a_255_character_name_is_accepted(client: httpx.Client, repo: str) -> None:
    name = f"{repo}/" + "/".join(["n" * 49] * 5)
    name = name[:255].rstrip("/")
    name += "z" * (255 - len(name))
    assert len(name) == 255
    data = random_bytes()
    digest = push_blob(client, name, data)
    assert client.get(f"/v2/{name}/blobs/{digest}").content == data
    image = push_image(client, name, "v1")
    assert client.get(f"/v2/{name}/manifests/v1").content == image.body
    assert client.get(f"/v2/{name}/tags/list").json()["name"] == name


@pytest.mark.parametrize("length", [256, 300, 1000])
def test_names_longer_than_255_are_name_invalid(
    registry: RegistryProcess, repo: str, length: int
) -> None:
    name = (f"{repo}/" + "x" * length)[:length]
    for method, path in endpoints(name):
        assert_name_invalid(raw_request(registry.port, method, path), method)


# -- refused names


@pytest.mark.parametrize(
    "name",
    [
        "Upper/case",
        "upper/Case",
        "/leading",
        "a//b",
        "trailing/",
        "-dash",
        "dash-/x",
        ".dot",
        "_under",
        "a___b",
        "a..b",
        "a._b",
        "a%20b",
        "a%2Fb/%00",
        "caf%C3%A9",
        "a:b",
        "a@b",
        "a+b",
    ],
)
def test_invalid_names_are_name_invalid(registry: RegistryProcess, name: str) -> None:
    for method, path in endpoints(name):
        assert_name_invalid(raw_request(registry.port, method, path), method)


@pytest.mark.parametrize("name", ["../x", "a/..", "a/../b", "./a", "a/.", "%2e%2e/x", "a/%2e%2e"])
def test_dot_segments_are_refused(registry: RegistryProcess, name: str) -> None:
    """Dot segments sent verbatim never reach a repository; they are refused by name."""
    for method, path in endpoints(name):
        assert_name_invalid(raw_request(registry.port, method, path), method)


@pytest.mark.parametrize("name", ["../x", "a/..", "x/../../etc"])
def test_dot_segments_normalised_by_the_client_get_an_oci_error(
    client: httpx.Client, name: str
) -> None:
    # httpx resolves dot segments itself, so the path may land outside any repository route.
    response = client.get(f"/v2/{name}/tags/list")
    assert 400 <= response.status_code < 500
    assert response.json()["errors"][0]["code"] in ("NAME_INVALID", "NAME_UNKNOWN")


def test_refused_name_opens_no_upload_session(registry: RegistryProcess) -> None:
    response = raw_request(registry.port, "POST", "/v2/Bad/blobs/uploads/")
    raw_oci_error(response, 400, "NAME_INVALID")
    assert "location" not in response.headers
    assert "docker-upload-uuid" not in response.headers


# -- tags


@pytest.mark.parametrize(
    "tag",
    ["-lead", ".lead", "t" * 129, "tag%20space", "tag+plus", "tag%21", "caf%C3%A9", "a@b"],
)
def test_invalid_tags_are_manifest_invalid(client: httpx.Client, repo: str, tag: str) -> None:
    image = push_image(client, repo, "v1")
    response = put_manifest(client, repo, tag, image.body, OCI_MANIFEST)
    assert_oci_error(response, 400, "MANIFEST_INVALID")
    assert_oci_error(client.get(f"/v2/{repo}/manifests/{tag}"), 400, "MANIFEST_INVALID")
    assert_oci_error(client.delete(f"/v2/{repo}/manifests/{tag}"), 400, "MANIFEST_INVALID")
    assert client.get(f"/v2/{repo}/tags/list").json()["tags"] == ["v1"]


@pytest.mark.parametrize("tag", ["t" * 128, "_under", "A.b-C_d", "0", "v1.2.3-rc.1", "UPPER"])
def test_valid_tags_are_accepted(client: httpx.Client, repo: str, tag: str) -> None:
    image = push_image(client, repo, tag)
    assert client.get(f"/v2/{repo}/manifests/{tag}").content == image.body
    assert client.get(f"/v2/{repo}/tags/list").json()["tags"] == [tag]


# -- digests

INVALID_DIGESTS = [
    "sha256:abc",
    "sha256:" + "0" * 63,
    "sha256:" + "0" * 65,
    "sha256:" + "A" * 64,
    "sha256:" + "g" * 64,
    "sha256:",
    ":" + "0" * 64,
    "SHA256:" + "0" * 64,
    "md5:" + "0" * 32,
    "sha512:" + "0" * 64,
    "sha256:" + "0" * 32 + "%20" + "0" * 31,
]


@pytest.mark.parametrize("digest", INVALID_DIGESTS)
def test_invalid_digests_are_digest_invalid(client: httpx.Client, repo: str, digest: str) -> None:
    data = random_bytes(16)
    push_blob(client, repo, data)
    for method, path in (
        ("GET", f"/v2/{repo}/blobs/{digest}"),
        ("DELETE", f"/v2/{repo}/blobs/{digest}"),
        ("GET", f"/v2/{repo}/manifests/{digest}"),
        ("DELETE", f"/v2/{repo}/manifests/{digest}"),
        ("GET", f"/v2/{repo}/referrers/{digest}"),
    ):
        assert_oci_error(client.request(method, path), 400, "DIGEST_INVALID")
    assert client.head(f"/v2/{repo}/blobs/{digest}").status_code == 400
    response = client.post(f"/v2/{repo}/blobs/uploads/?digest={digest}", content=data)
    assert_oci_error(response, 400, "DIGEST_INVALID")
    image = push_image(client, repo)
    response = put_manifest(client, repo, digest, image.body, OCI_MANIFEST)
    assert_oci_error(response, 400, "DIGEST_INVALID")


def test_invalid_digest_on_final_put_keeps_the_session(client: httpx.Client, repo: str) -> None:
    data = random_bytes(16)
    location = client.post(f"/v2/{repo}/blobs/uploads/").headers["Location"]
    for digest in INVALID_DIGESTS[:4]:
        response = client.put(f"{location}?digest={digest}", content=data)
        assert_oci_error(response, 400, "DIGEST_INVALID")
    # A malformed request does not cost the client its session.
    assert client.get(location).status_code == 204
    response = client.put(f"{location}?digest={digest_of(data)}", content=data)
    assert response.status_code == 201


def test_unknown_but_valid_digest_is_not_invalid(client: httpx.Client, repo: str) -> None:
    push_blob(client, repo, random_bytes())
    assert_oci_error(client.get(f"/v2/{repo}/blobs/{unknown_digest()}"), 404, "BLOB_UNKNOWN")
    sha512 = digest_of(random_bytes(), "sha512")
    assert_oci_error(client.get(f"/v2/{repo}/blobs/{sha512}"), 404, "BLOB_UNKNOWN")
