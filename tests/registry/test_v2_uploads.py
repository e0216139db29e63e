"""Blob uploads: sessions, monolithic and chunked pushes, verification, cancellation, mounts."""

from __future__ import annotations

import httpx
import pytest

from tests.support.oci import (
    EMPTY_SHA256,
    assert_oci_error,
    bearer,
    blob_chunks,
    digest_of,
    fetch_token,
    patch_chunk,
    push_blob,
    push_blob_chunked,
    push_blob_in_one_post,
    random_bytes,
    start_upload,
    unknown_digest,
    with_digest,
)
from tests.support.server import RegistryProcess


def assert_blob_readable(client: httpx.Client, repo: str, digest: str, data: bytes) -> None:
    response = client.get(f"/v2/{repo}/blobs/{digest}")
    assert response.status_code == 200, response.text
    assert response.content == data
    assert response.headers["Docker-Content-Digest"] == digest


def assert_blob_absent(client: httpx.Client, repo: str, digest: str) -> None:
    assert_oci_error(client.get(f"/v2/{repo}/blobs/{digest}"), 404, "BLOB_UNKNOWN")


def assert_created(response: httpx.Response, repo: str, digest: str) -> None:
    assert response.status_code == 201, response.text
    assert response.headers["Location"] == f"/v2/{repo}/blobs/{digest}"
    assert response.headers["Docker-Content-Digest"] == digest


def assert_session_gone(client: httpx.Client, location: str) -> None:
    assert_oci_error(client.get(location), 404, "BLOB_UPLOAD_UNKNOWN")


# -- opening a session


def test_post_opens_a_session_with_a_relative_location(client: httpx.Client, repo: str) -> None:
    response = client.post(f"/v2/{repo}/blobs/uploads/")
    assert response.status_code == 202
    location = response.headers["Location"]
    assert location.startswith(f"/v2/{repo}/blobs/uploads/")
    upload_id = location.rsplit("/", 1)[1]
    assert upload_id
    assert response.headers["Docker-Upload-UUID"] == upload_id
    assert response.headers["Range"] == "0-0"
    assert response.content == b""


def test_each_post_opens_a_different_session(client: httpx.Client, repo: str) -> None:
    assert start_upload(client, repo) != start_upload(client, repo)


def test_upload_status_answers_204_with_location_and_range(client: httpx.Client, repo: str) -> None:
    location = start_upload(client, repo)
    response = client.get(location)
    assert response.status_code == 204
    assert response.headers["Location"] == location
    assert response.headers["Range"] == "0-0"
    assert patch_chunk(client, location, b"0123456789", 0).status_code == 202
    response = client.get(location)
    assert response.status_code == 204
    assert response.headers["Location"] == location
    assert response.headers["Range"] == "0-9"


# -- monolithic


def test_monolithic_put_stores_the_blob(client: httpx.Client, repo: str) -> None:
    data = random_bytes(2000)
    digest = digest_of(data)
    location = start_upload(client, repo)
    response = client.put(with_digest(location, digest), content=data)
    assert_created(response, repo, digest)
    assert_blob_readable(client, repo, digest, data)
    assert_session_gone(client, location)


def test_single_post_with_digest_stores_the_blob(client: httpx.Client, repo: str) -> None:
    data = random_bytes(2000)
    response = push_blob_in_one_post(client, repo, data)
    assert_created(response, repo, digest_of(data))
    assert_blob_readable(client, repo, digest_of(data), data)


def test_single_post_with_wrong_digest_stores_nothing(client: httpx.Client, repo: str) -> None:
    data = random_bytes()
    claimed = unknown_digest()
    response = client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": claimed}, content=data)
    assert_oci_error(response, 400, "DIGEST_INVALID")
    assert_blob_absent(client, repo, claimed)
    assert_blob_absent(client, repo, digest_of(data))


def test_pushing_the_same_blob_twice_is_fine(client: httpx.Client, repo: str) -> None:
    data = random_bytes()
    assert push_blob(client, repo, data) == push_blob(client, repo, data)
    assert_created(push_blob_in_one_post(client, repo, data), repo, digest_of(data))
    assert_blob_readable(client, repo, digest_of(data), data)


# -- chunked


def test_chunked_upload_reports_the_range_after_each_chunk(client: httpx.Client, repo: str) -> None:
    data = random_bytes(1000)
    location = start_upload(client, repo)
    for start in range(0, 1000, 300):
        chunk = data[start : start + 300]
        response = patch_chunk(client, location, chunk, start)
        assert response.status_code == 202, response.text
        assert response.headers["Range"] == f"0-{start + len(chunk) - 1}"
        assert response.headers["Location"] == location
        assert response.headers["Docker-Upload-UUID"] == location.rsplit("/", 1)[1]
    response = client.put(with_digest(location, digest_of(data)))
    assert_created(response, repo, digest_of(data))
    assert_blob_readable(client, repo, digest_of(data), data)


def test_chunk_content_range_may_carry_a_unit_and_total(client: httpx.Client, repo: str) -> None:
    data = random_bytes(20)
    location = start_upload(client, repo)
    response = client.patch(location, content=data[:10], headers={"Content-Range": "bytes 0-9/*"})
    assert response.status_code == 202
    response = client.patch(location, content=data[10:], headers={"Content-Range": "10-19/20"})
    assert response.status_code == 202
    assert response.headers["Range"] == "0-19"
    assert client.put(with_digest(location, digest_of(data))).status_code == 201
    assert_blob_readable(client, repo, digest_of(data), data)


def test_streamed_patch_without_content_range(client: httpx.Client, repo: str) -> None:
    data = random_bytes(300_000)
    location = start_upload(client, repo)
    # Generator bodies go out with chunked transfer encoding and no Content-Length.
    response = client.patch(location, content=blob_chunks(data[:100_000], 7000))
    assert response.status_code == 202, response.text
    assert response.headers["Range"] == "0-99999"
    response = client.patch(location, content=blob_chunks(data[100_000:], 65536))
    assert response.status_code == 202
    assert response.headers["Range"] == f"0-{len(data) - 1}"
    assert client.put(with_digest(location, digest_of(data))).status_code == 201
    assert_blob_readable(client, repo, digest_of(data), data)


def test_out_of_order_chunk_is_416_with_the_current_range(client: httpx.Client, repo: str) -> None:
    data = random_bytes(30)
    location = start_upload(client, repo)
    assert patch_chunk(client, location, data[:10], 0).status_code == 202
    for wrong_start in (20, 0, 5):
        response = patch_chunk(client, location, data[10:20], wrong_start)
        assert_oci_error(response, 416, "BLOB_UPLOAD_INVALID")
        assert response.headers["Range"] == "0-9"
    # The session is unharmed: the client resumes at the offset it was told.
    assert patch_chunk(client, location, data[10:], 10).status_code == 202
    assert client.put(with_digest(location, digest_of(data))).status_code == 201
    assert_blob_readable(client, repo, digest_of(data), data)


def test_first_chunk_must_start_at_zero(client: httpx.Client, repo: str) -> None:
    location = start_upload(client, repo)
    response = patch_chunk(client, location, b"abc", 1)
    assert_oci_error(response, 416, "BLOB_UPLOAD_INVALID")
    assert response.headers["Range"] == "0-0"


def test_content_range_disagreeing_with_content_length_is_416(
    client: httpx.Client, repo: str
) -> None:
    location = start_upload(client, repo)
    for content_range in ("0-19", "0-4"):
        response = client.patch(
            location, content=random_bytes(10), headers={"Content-Range": content_range}
        )
        assert_oci_error(response, 416, "BLOB_UPLOAD_INVALID")
    assert client.get(location).headers["Range"] == "0-0"


def test_final_put_may_carry_the_last_chunk(client: httpx.Client, repo: str) -> None:
    data = random_bytes(500)
    location = start_upload(client, repo)
    assert patch_chunk(client, location, data[:200], 0).status_code == 202
    response = client.put(
        with_digest(location, digest_of(data)),
        content=data[200:],
        headers={"Content-Range": "200-499"},
    )
    assert_created(response, repo, digest_of(data))
    assert_blob_readable(client, repo, digest_of(data), data)


def test_final_put_may_carry_the_last_chunk_without_content_range(
    client: httpx.Client, repo: str
) -> None:
    data = random_bytes(500)
    location = start_upload(client, repo)
    assert patch_chunk(client, location, data[:250], 0).status_code == 202
    response = client.put(with_digest(location, digest_of(data)), content=data[250:])
    assert_created(response, repo, digest_of(data))
    assert_blob_readable(client, repo, digest_of(data), data)


def test_final_put_with_a_mispositioned_last_chunk_is_416(client: httpx.Client, repo: str) -> None:
    data = random_bytes(50)
    location = start_upload(client, repo)
    assert patch_chunk(client, location, data[:20], 0).status_code == 202
    response = client.put(
        with_digest(location, digest_of(data)),
        content=data[20:],
        headers={"Content-Range": "25-54"},
    )
    assert_oci_error(response, 416, "BLOB_UPLOAD_INVALID")
    assert response.headers["Range"] == "0-19"
    assert_blob_absent(client, repo, digest_of(data))


def test_wrong_digest_on_final_put_discards_the_session(client: httpx.Client, repo: str) -> None:
    data = random_bytes(100)
    claimed = unknown_digest()
    location = start_upload(client, repo)
    assert patch_chunk(client, location, data, 0).status_code == 202
    assert_oci_error(client.put(with_digest(location, claimed)), 400, "DIGEST_INVALID")
    assert_session_gone(client, location)
    assert_oci_error(patch_chunk(client, location, data, 100), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_blob_absent(client, repo, claimed)
    assert_blob_absent(client, repo, digest_of(data))


def test_wrong_digest_on_monolithic_put_stores_nothing(client: httpx.Client, repo: str) -> None:
    data = random_bytes(100)
    location = start_upload(client, repo)
    response = client.put(with_digest(location, digest_of(data + b"x")), content=data)
    assert_oci_error(response, 400, "DIGEST_INVALID")
    assert_session_gone(client, location)
    assert_blob_absent(client, repo, digest_of(data))


def test_final_put_without_digest_is_digest_invalid(client: httpx.Client, repo: str) -> None:
    location = start_upload(client, repo)
    assert_oci_error(client.put(location, content=b"abc"), 400, "DIGEST_INVALID")
    assert_oci_error(client.put(f"{location}?digest=sha256:nope"), 400, "DIGEST_INVALID")


# -- empty blobs and other algorithms


def test_empty_blob_monolithic(client: httpx.Client, repo: str) -> None:
    location = start_upload(client, repo)
    assert_created(client.put(with_digest(location, EMPTY_SHA256)), repo, EMPTY_SHA256)
    assert_blob_readable(client, repo, EMPTY_SHA256, b"")
    assert client.head(f"/v2/{repo}/blobs/{EMPTY_SHA256}").headers["Content-Length"] == "0"


def test_empty_blob_in_one_post(client: httpx.Client, repo: str) -> None:
    assert_created(push_blob_in_one_post(client, repo, b""), repo, EMPTY_SHA256)
    assert_blob_readable(client, repo, EMPTY_SHA256, b"")


def test_empty_blob_chunked(client: httpx.Client, repo: str) -> None:
    location = start_upload(client, repo)
    response = client.patch(location, content=b"")
    assert response.status_code == 202
    assert response.headers["Range"] == "0-0"
    assert_created(client.put(with_digest(location, EMPTY_SHA256)), repo, EMPTY_SHA256)
    assert_blob_readable(client, repo, EMPTY_SHA256, b"")


def test_sha512_blobs_in_every_upload_style(client: httpx.Client, repo: str) -> None:
    monolithic, chunked, single = random_bytes(300), random_bytes(300), random_bytes(300)
    assert push_blob(client, repo, monolithic, "sha512") == digest_of(monolithic, "sha512")
    assert push_blob_chunked(client, repo, chunked, 128, "sha512") == digest_of(chunked, "sha512")
    digest = digest_of(single, "sha512")
    response = client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest}, content=single)
    assert_created(response, repo, digest)
    for data in (monolithic, chunked, single):
        assert_blob_readable(client, repo, digest_of(data, "sha512"), data)
        assert_blob_absent(client, repo, digest_of(data, "sha256"))


def test_sha512_mismatch_is_digest_invalid(client: httpx.Client, repo: str) -> None:
    data = random_bytes(64)
    location = start_upload(client, repo)
    response = client.put(with_digest(location, digest_of(data + b"!", "sha512")), content=data)
    assert_oci_error(response, 400, "DIGEST_INVALID")
    assert_blob_absent(client, repo, digest_of(data, "sha512"))


# -- cancelling and scoping sessions


def test_cancelled_session_is_unknown_afterwards(client: httpx.Client, repo: str) -> None:
    location = start_upload(client, repo)
    assert patch_chunk(client, location, b"partial", 0).status_code == 202
    response = client.delete(location)
    assert response.status_code == 204
    assert_session_gone(client, location)
    assert_oci_error(patch_chunk(client, location, b"more", 7), 404, "BLOB_UPLOAD_UNKNOWN")
    response = client.put(with_digest(location, digest_of(b"partial")))
    assert_oci_error(response, 404, "BLOB_UPLOAD_UNKNOWN")
    assert_oci_error(client.delete(location), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_blob_absent(client, repo, digest_of(b"partial"))


def test_unknown_session_id_is_blob_upload_unknown(client: httpx.Client, repo: str) -> None:
    location = f"/v2/{repo}/blobs/uploads/no-such-session"
    assert_oci_error(client.get(location), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_oci_error(patch_chunk(client, location, b"x", 0), 404, "BLOB_UPLOAD_UNKNOWN")
    response = client.put(with_digest(location, digest_of(b"x")), content=b"x")
    assert_oci_error(response, 404, "BLOB_UPLOAD_UNKNOWN")
    assert_oci_error(client.delete(location), 404, "BLOB_UPLOAD_UNKNOWN")


def test_session_is_bound_to_its_repository(client: httpx.Client, repo: str) -> None:
    data = random_bytes(10)
    location = start_upload(client, f"{repo}/owner")
    foreign = location.replace(f"/v2/{repo}/owner/", f"/v2/{repo}/intruder/")
    assert foreign != location
    assert_oci_error(client.get(foreign), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_oci_error(patch_chunk(client, foreign, data, 0), 404, "BLOB_UPLOAD_UNKNOWN")
    response = client.put(with_digest(foreign, digest_of(data)), content=data)
    assert_oci_error(response, 404, "BLOB_UPLOAD_UNKNOWN")
    assert_oci_error(client.delete(foreign), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_blob_absent(client, f"{repo}/intruder", digest_of(data))
    # The owner's session is untouched by all of that.
    assert client.get(location).headers["Range"] == "0-0"
    assert client.put(with_digest(location, digest_of(data)), content=data).status_code == 201
    assert_blob_readable(client, f"{repo}/owner", digest_of(data), data)


# -- cross-repository mount


def test_mount_links_a_blob_from_another_repository(client: httpx.Client, repo: str) -> None:
    data = random_bytes()
    digest = push_blob(client, f"{repo}/source", data)
    response = client.post(
        f"/v2/{repo}/target/blobs/uploads/", params={"mount": digest, "from": f"{repo}/source"}
    )
    assert_created(response, f"{repo}/target", digest)
    assert_blob_readable(client, f"{repo}/target", digest, data)
    assert_blob_readable(client, f"{repo}/source", digest, data)


@pytest.mark.parametrize(
    ("source_query", "source_scope"),
    [
        pytest.param({"from": "{repo}/source"}, True, id="source-lacks-digest"),
        pytest.param({"from": "{repo}/missing"}, True, id="source-does-not-exist"),
        # A name that is not one cannot be put into a scope: the token covers the target only.
        pytest.param({"from": "Not/Valid"}, False, id="invalid-from"),
        pytest.param({"from": "../{repo}/source"}, False, id="traversal-from"),
        pytest.param({"from": ""}, False, id="empty-from"),
        pytest.param({}, False, id="no-from"),
    ],
)
def test_unusable_mount_opens_an_ordinary_session(
    registry: RegistryProcess,
    client: httpx.Client,
    repo: str,
    source_query: dict[str, str],
    source_scope: bool,
) -> None:
    push_blob(client, f"{repo}/source", random_bytes())
    data = random_bytes()
    digest = digest_of(data)
    params = {"mount": digest, **{k: v.format(repo=repo) for k, v in source_query.items()}}
    scopes = [f"repository:{repo}/target:pull,push"]
    if source_scope:
        scopes.append(f"repository:{params['from']}:pull")
    token = fetch_token(registry.url, scopes)
    response = httpx.post(
        f"{registry.url}/v2/{repo}/target/blobs/uploads/", params=params, headers=bearer(token)
    )
    assert response.status_code == 202, response.text
    location = response.headers["Location"]
    assert location.startswith(f"/v2/{repo}/target/blobs/uploads/")
    assert response.headers["Docker-Upload-UUID"] == location.rsplit("/", 1)[1]
    assert_blob_absent(client, f"{repo}/target", digest)
    # The session it opened is a real one.
    assert_created(
        client.put(with_digest(location, digest), content=data), f"{repo}/target", digest
    )


def test_mount_needs_pull_on_the_source_in_the_same_token(
    registry: RegistryProcess, client: httpx.Client, repo: str
) -> None:
    """Without pull on the source the mount is an ordinary session: whether the blob exists
    there is not revealed, and the blob is not linked into the target."""
    data = random_bytes()
    digest = push_blob(client, f"{repo}/source", data)
    target_only = fetch_token(registry.url, [f"repository:{repo}/target:pull,push"])
    response = httpx.post(
        f"{registry.url}/v2/{repo}/target/blobs/uploads/",
        params={"mount": digest, "from": f"{repo}/source"},
        headers=bearer(target_only),
    )
    assert response.status_code == 202, response.text
    assert_blob_absent(client, f"{repo}/target", digest)
    # The same mount with pull on the source in the token links the blob.
    both = fetch_token(
        registry.url, [f"repository:{repo}/target:pull,push", f"repository:{repo}/source:pull"]
    )
    response = httpx.post(
        f"{registry.url}/v2/{repo}/target/blobs/uploads/",
        params={"mount": digest, "from": f"{repo}/source"},
        headers=bearer(both),
    )
    assert_created(response, f"{repo}/target", digest)
    assert_blob_readable(client, f"{repo}/target", digest, data)


def test_mount_without_from_does_not_find_blobs_elsewhere(client: httpx.Client, repo: str) -> None:
    digest = push_blob(client, f"{repo}/source", random_bytes())
    response = client.post(f"/v2/{repo}/target/blobs/uploads/", params={"mount": digest})
    assert response.status_code == 202
    assert_blob_absent(client, f"{repo}/target", digest)


def test_mount_with_invalid_digest_is_digest_invalid(client: httpx.Client, repo: str) -> None:
    response = client.post(
        f"/v2/{repo}/blobs/uploads/", params={"mount": "sha256:zz", "from": f"{repo}/x"}
    )
    assert_oci_error(response, 400, "DIGEST_INVALID")
