"""Pull: manifests by tag and digest, content negotiation, blobs and byte ranges."""

from __future__ import annotations

import httpx
import pytest

from tests.support.oci import (
    ALL_MANIFEST_TYPES,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    Pushed,
    assert_oci_error,
    digest_of,
    platform,
    push_any,
    push_blob,
    push_blob_chunked,
    push_blob_object,
    push_image,
    push_index,
    push_manifest,
    push_multi_platform,
    random_bytes,
    unknown_digest,
)

AMD64, ARM64 = platform("linux", "amd64"), platform("linux", "arm64")


def assert_manifest_response(response: httpx.Response, pushed: Pushed, *, head: bool) -> None:
    assert response.status_code == 200, response.text
    assert response.headers["Docker-Content-Digest"] == pushed.digest
    assert response.headers["Content-Type"] == pushed.media_type
    assert response.headers["Content-Length"] == str(pushed.size)
    assert response.headers["ETag"] == f'"{pushed.digest}"'
    assert response.content == (b"" if head else pushed.body)


def get_without_accept(client: httpx.Client, path: str) -> httpx.Response:
    request = client.build_request("GET", path)
    del request.headers["Accept"]
    return client.send(request)


# -- manifests


@pytest.mark.parametrize("media_type", ALL_MANIFEST_TYPES)
def test_manifest_get_and_head_by_tag_and_by_digest(
    client: httpx.Client, repo: str, media_type: str
) -> None:
    pushed = push_any(client, repo, media_type, "v1")
    for reference in ("v1", pushed.digest):
        path = f"/v2/{repo}/manifests/{reference}"
        assert_manifest_response(client.get(path), pushed, head=False)
        assert_manifest_response(client.head(path), pushed, head=True)


def test_manifest_bytes_are_returned_exactly_as_pushed(client: httpx.Client, repo: str) -> None:
    config = push_blob_object(client, repo, OCI_CONFIG, b'{"architecture":"amd64"}')
    # Odd key order, tabs, spaces before colons and trailing newlines: any re-serialisation
    # would change the digest.
    body = (
        f'{{\n\t"layers" : [ ],\n   "config":{{"size":{config.size},  "digest":"{config.digest}",'
        f'\n"mediaType":"{OCI_CONFIG}"}},"schemaVersion" :2 , "mediaType":"{OCI_MANIFEST}" ,'
        ' "annotations":{"z":"1","a":"\\u00e9"}}\n\n'
    ).encode()
    pushed = push_manifest(client, repo, body, OCI_MANIFEST, "odd")
    for reference in ("odd", digest_of(body)):
        response = client.get(f"/v2/{repo}/manifests/{reference}")
        assert response.status_code == 200
        assert response.content == body
        assert response.headers["Docker-Content-Digest"] == pushed.digest == digest_of(body)


def test_manifest_if_none_match_answers_304(client: httpx.Client, repo: str) -> None:
    pushed = push_image(client, repo, "v1")
    for reference in ("v1", pushed.digest):
        path = f"/v2/{repo}/manifests/{reference}"
        response = client.get(path, headers={"If-None-Match": f'"{pushed.digest}"'})
        assert response.status_code == 304
        assert response.content == b""
        assert response.headers["ETag"] == f'"{pushed.digest}"'
        assert response.headers["Docker-Content-Digest"] == pushed.digest


def test_manifest_if_none_match_with_another_etag_answers_200(
    client: httpx.Client, repo: str
) -> None:
    pushed = push_image(client, repo, "v1")
    response = client.get(
        f"/v2/{repo}/manifests/v1", headers={"If-None-Match": f'"{unknown_digest()}"'}
    )
    assert_manifest_response(response, pushed, head=False)


def test_unknown_manifest_is_manifest_unknown(client: httpx.Client, repo: str) -> None:
    push_image(client, repo, "v1")
    for reference in ("missing", unknown_digest()):
        assert_oci_error(client.get(f"/v2/{repo}/manifests/{reference}"), 404, "MANIFEST_UNKNOWN")
        assert client.head(f"/v2/{repo}/manifests/{reference}").status_code == 404


def test_manifest_of_unknown_repository_is_manifest_unknown(
    client: httpx.Client, repo: str
) -> None:
    response = client.get(f"/v2/{repo}/never-pushed/manifests/latest")
    assert response.status_code == 404
    assert response.json()["errors"][0]["code"] in ("MANIFEST_UNKNOWN", "NAME_UNKNOWN")


def test_manifest_of_another_repository_is_not_readable(client: httpx.Client, repo: str) -> None:
    pushed = push_image(client, f"{repo}/source", "v1")
    push_image(client, f"{repo}/other", "v1")
    response = client.get(f"/v2/{repo}/other/manifests/{pushed.digest}")
    assert_oci_error(response, 404, "MANIFEST_UNKNOWN")


# -- content negotiation


@pytest.mark.parametrize("media_type", ALL_MANIFEST_TYPES)
def test_accept_listing_the_stored_type_serves_it(
    client: httpx.Client, repo: str, media_type: str
) -> None:
    pushed = push_any(client, repo, media_type, "v1")
    others = [t for t in ALL_MANIFEST_TYPES if t != media_type]
    accept = ", ".join([others[0], f"{media_type};q=0.5", others[1]])
    response = client.get(f"/v2/{repo}/manifests/v1", headers={"Accept": accept})
    assert_manifest_response(response, pushed, head=False)
    # The same types given as repeated header lines.
    lines = [("Accept", others[0]), ("Accept", media_type)]
    response = client.get(f"/v2/{repo}/manifests/v1", headers=httpx.Headers(lines))
    assert_manifest_response(response, pushed, head=False)


@pytest.mark.parametrize("media_type", ALL_MANIFEST_TYPES)
def test_wildcard_or_missing_accept_serves_any_type(
    client: httpx.Client, repo: str, media_type: str
) -> None:
    pushed = push_any(client, repo, media_type, "v1")
    path = f"/v2/{repo}/manifests/v1"
    for accept in ("*/*", f"{DOCKER_MANIFEST}, */*;q=0.1"):
        response = client.get(path, headers={"Accept": accept})
        assert_manifest_response(response, pushed, head=False)
    assert_manifest_response(get_without_accept(client, path), pushed, head=False)


@pytest.mark.parametrize("media_type", [DOCKER_MANIFEST_LIST, OCI_INDEX])
def test_index_for_a_schema2_only_client_serves_the_linux_amd64_child(
    client: httpx.Client, repo: str, media_type: str
) -> None:
    # The children of an OCI index are Docker manifests here, as a mixed index may have.
    children = [push_image(client, repo, media_type=DOCKER_MANIFEST) for _ in range(2)]
    index = push_index(
        client, repo, [(children[0], ARM64), (children[1], AMD64)], "multi", media_type=media_type
    )
    for reference in ("multi", index.digest):
        path = f"/v2/{repo}/manifests/{reference}"
        response = client.get(path, headers={"Accept": DOCKER_MANIFEST})
        assert_manifest_response(response, children[1], head=False)
        response = client.head(path, headers={"Accept": DOCKER_MANIFEST})
        assert_manifest_response(response, children[1], head=True)


def test_index_without_a_linux_amd64_child_is_unknown_to_a_schema2_only_client(
    client: httpx.Client, repo: str
) -> None:
    push_multi_platform(client, repo, [ARM64], "arm-only", media_type=DOCKER_MANIFEST_LIST)
    response = client.get(f"/v2/{repo}/manifests/arm-only", headers={"Accept": DOCKER_MANIFEST})
    assert_oci_error(response, 404, "MANIFEST_UNKNOWN")


def test_index_whose_amd64_child_the_client_cannot_read_is_unknown(
    client: httpx.Client, repo: str
) -> None:
    # An OCI index of OCI manifests offers nothing a schema2-only client can read.
    push_multi_platform(client, repo, [AMD64], "oci", media_type=OCI_INDEX)
    response = client.get(f"/v2/{repo}/manifests/oci", headers={"Accept": DOCKER_MANIFEST})
    assert_oci_error(response, 404, "MANIFEST_UNKNOWN")


def test_oci_manifest_for_a_docker_only_client_is_unknown(client: httpx.Client, repo: str) -> None:
    pushed = push_image(client, repo, "v1")
    accept = f"{DOCKER_MANIFEST}, {DOCKER_MANIFEST_LIST}"
    for reference in ("v1", pushed.digest):
        response = client.get(f"/v2/{repo}/manifests/{reference}", headers={"Accept": accept})
        assert_oci_error(response, 404, "MANIFEST_UNKNOWN")


def test_accept_parameters_and_case_are_ignored(client: httpx.Client, repo: str) -> None:
    pushed = push_image(client, repo, "v1")
    accept = OCI_MANIFEST.upper() + "; charset=utf-8"
    response = client.get(f"/v2/{repo}/manifests/v1", headers={"Accept": accept})
    assert_manifest_response(response, pushed, head=False)


# -- blobs


def test_blob_get_returns_the_bytes_with_length_and_digest(client: httpx.Client, repo: str) -> None:
    data = random_bytes(4096)
    digest = push_blob(client, repo, data)
    response = client.get(f"/v2/{repo}/blobs/{digest}")
    assert response.status_code == 200
    assert response.content == data
    assert response.headers["Content-Length"] == str(len(data))
    assert response.headers["Docker-Content-Digest"] == digest
    assert response.headers["ETag"] == f'"{digest}"'


def test_blob_head_has_length_and_no_body(client: httpx.Client, repo: str) -> None:
    data = random_bytes(1000)
    digest = push_blob(client, repo, data)
    response = client.head(f"/v2/{repo}/blobs/{digest}")
    assert response.status_code == 200
    assert response.headers["Content-Length"] == "1000"
    assert response.headers["Docker-Content-Digest"] == digest
    assert response.content == b""


def test_large_blob_round_trips_byte_for_byte(client: httpx.Client, repo: str) -> None:
    data = random_bytes(3 * 1024 * 1024 + 17)
    digest = push_blob_chunked(client, repo, data, 1024 * 1024)
    response = client.get(f"/v2/{repo}/blobs/{digest}")
    assert response.status_code == 200
    assert digest_of(response.content) == digest
    assert response.content == data


def test_blob_if_none_match_answers_304(client: httpx.Client, repo: str) -> None:
    digest = push_blob(client, repo, random_bytes())
    response = client.get(f"/v2/{repo}/blobs/{digest}", headers={"If-None-Match": f'"{digest}"'})
    assert response.status_code == 304
    assert response.content == b""


@pytest.fixture
def hundred_bytes(client: httpx.Client, repo: str) -> tuple[str, bytes]:
    """The path of a 100-byte blob and its content."""
    data = random_bytes(100)
    return f"/v2/{repo}/blobs/{push_blob(client, repo, data)}", data


@pytest.mark.parametrize(
    ("range_header", "start", "end"),
    [
        ("bytes=10-19", 10, 19),
        ("bytes=0-0", 0, 0),
        ("bytes=90-", 90, 99),  # open-ended
        ("bytes=-5", 95, 99),  # suffix
        ("bytes=-500", 0, 99),  # suffix longer than the blob
        ("bytes=50-1000", 50, 99),  # end past the blob is clamped
        ("bytes=99-99", 99, 99),
    ],
)
def test_blob_range_answers_206_with_content_range(
    client: httpx.Client, hundred_bytes: tuple[str, bytes], range_header: str, start: int, end: int
) -> None:
    path, data = hundred_bytes
    response = client.get(path, headers={"Range": range_header})
    assert response.status_code == 206
    assert response.headers["Content-Range"] == f"bytes {start}-{end}/100"
    assert response.headers["Content-Length"] == str(end - start + 1)
    assert response.content == data[start : end + 1]


@pytest.mark.parametrize("range_header", ["bytes=100-", "bytes=100-200", "bytes=5000-", "bytes=-0"])
def test_unsatisfiable_range_answers_416(
    client: httpx.Client, hundred_bytes: tuple[str, bytes], range_header: str
) -> None:
    path, _ = hundred_bytes
    response = client.get(path, headers={"Range": range_header})
    assert response.status_code == 416
    assert response.headers["Content-Range"] == "bytes */100"
    assert response.json()["errors"]


@pytest.mark.parametrize("range_header", ["bytes=0-1,5-6", "items=0-5", "bytes=x-y", "bytes=-"])
def test_unusable_range_header_is_ignored(
    client: httpx.Client, hundred_bytes: tuple[str, bytes], range_header: str
) -> None:
    path, data = hundred_bytes
    response = client.get(path, headers={"Range": range_header})
    assert response.status_code == 200
    assert response.content == data


def test_if_range_mismatch_sends_the_whole_blob(
    client: httpx.Client, hundred_bytes: tuple[str, bytes]
) -> None:
    path, data = hundred_bytes
    stale = f'"{unknown_digest()}"'
    response = client.get(path, headers={"Range": "bytes=10-19", "If-Range": stale})
    assert response.status_code == 200
    assert "Content-Range" not in response.headers
    assert response.content == data


def test_if_range_match_sends_the_range(
    client: httpx.Client, hundred_bytes: tuple[str, bytes]
) -> None:
    path, data = hundred_bytes
    etag = client.head(path).headers["ETag"]
    response = client.get(path, headers={"Range": "bytes=10-19", "If-Range": etag})
    assert response.status_code == 206
    assert response.content == data[10:20]


def test_unknown_blob_is_blob_unknown(client: httpx.Client, repo: str) -> None:
    push_blob(client, repo, random_bytes())
    path = f"/v2/{repo}/blobs/{unknown_digest()}"
    assert_oci_error(client.get(path), 404, "BLOB_UNKNOWN")
    response = client.head(path)
    assert response.status_code == 404
    assert response.content == b""


def test_blob_of_another_repository_is_not_readable(client: httpx.Client, repo: str) -> None:
    data = random_bytes()
    digest = push_blob(client, f"{repo}/owner", data)
    push_blob(client, f"{repo}/neighbour", random_bytes())
    for name in (f"{repo}/neighbour", f"{repo}/never-pushed"):
        assert_oci_error(client.get(f"/v2/{name}/blobs/{digest}"), 404, "BLOB_UNKNOWN")
        assert client.head(f"/v2/{name}/blobs/{digest}").status_code == 404
    assert client.get(f"/v2/{repo}/owner/blobs/{digest}").content == data


def test_empty_blob_is_served_with_zero_length(client: httpx.Client, repo: str) -> None:
    digest = push_blob(client, repo, b"")
    response = client.get(f"/v2/{repo}/blobs/{digest}")
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["Content-Length"] == "0"
    response = client.get(f"/v2/{repo}/blobs/{digest}", headers={"Range": "bytes=0-"})
    assert response.status_code == 416
    assert response.headers["Content-Range"] == "bytes */0"
