"""Bad input: every malformed request gets a 4xx OCI error, stores nothing, and the server
keeps serving."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.oci import (
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    Pushed,
    assert_oci_error,
    blob_chunks,
    digest_of,
    encode,
    fetch_token,
    image_manifest,
    index_manifest,
    platform,
    push_blob_object,
    push_image,
    push_image_parts,
    push_manifest,
    put_manifest,
    random_bytes,
    raw_exchange,
    raw_oci_error,
    start_upload,
    unknown_digest,
)
from tests.support.server import RegistryProcess

MiB = 1 << 20
SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"


@pytest.fixture(autouse=True)
def server_still_serves(client: httpx.Client) -> Iterator[None]:
    yield
    response = client.get("/v2/")
    assert response.status_code == 200
    assert response.json() == {}


def assert_manifest_refused(
    client: httpx.Client,
    repo: str,
    body: bytes,
    content_type: str,
    status: int = 400,
    code: str = "MANIFEST_INVALID",
) -> dict[str, Any]:
    """PUT `body` by tag, expect the error, and check that neither tag nor digest exists."""
    error = assert_oci_error(put_manifest(client, repo, "bad", body, content_type), status, code)
    for reference in ("bad", digest_of(body)):
        assert_oci_error(client.get(f"/v2/{repo}/manifests/{reference}"), 404, "MANIFEST_UNKNOWN")
    return error


@pytest.fixture
def parts(client: httpx.Client, repo: str) -> tuple[Pushed, list[Pushed]]:
    """A pushed config and layer to build manifests from."""
    return push_image_parts(client, repo)


def valid_document(parts: tuple[Pushed, list[Pushed]]) -> dict[str, Any]:
    config, layers = parts
    return image_manifest(config, layers)


# -- manifests that are not JSON objects


@pytest.mark.parametrize(
    "body",
    [b"", b"{not json", b"[]", b"null", b'"manifest"', b"2", b"\xff\xfe\x00{", b'{"a":1}{"b":2}'],
)
def test_malformed_json_is_manifest_invalid(client: httpx.Client, repo: str, body: bytes) -> None:
    assert_manifest_refused(client, repo, body, OCI_MANIFEST)


@pytest.mark.parametrize("depth", [1000, 100_000])
def test_deeply_nested_json_is_manifest_invalid(
    client: httpx.Client, repo: str, parts: tuple[Pushed, list[Pushed]], depth: int
) -> None:
    document = valid_document(parts)
    nested = json.dumps(document)[:-1] + ', "x": ' + "[" * depth + "]" * depth + "}"
    assert_manifest_refused(client, repo, nested.encode(), OCI_MANIFEST)
    objects = '{"a":' * depth + "1" + "}" * depth
    assert_manifest_refused(client, repo, objects.encode(), OCI_MANIFEST)


def _with_duplicate(document: dict[str, Any], path: tuple[str | int, ...], key: str) -> bytes:
    """`document` as JSON with `key` written a second time, with another value, in the object
    at `path`; the text still parses with `json.loads` (the last value wins)."""
    marker = "__moorage_duplicate_marker__"
    target: Any = document
    for step in path:
        target = target[step]
    target[marker] = "other"
    text = json.dumps(document)
    return text.replace(json.dumps(marker), json.dumps(key), 1).encode()


@pytest.mark.parametrize(
    ("path", "key"),
    [
        ((), "mediaType"),
        ((), "schemaVersion"),
        ((), "layers"),
        (("config",), "digest"),
        (("layers", 0), "digest"),
        (("layers", 0), "size"),
        (("annotations",), "org.opencontainers.image.title"),
    ],
    ids=[
        "top-media-type",
        "top-schema",
        "top-layers",
        "config-digest",
        "layer-digest",
        "layer-size",
        "annotation",
    ],
)
def test_a_key_twice_in_one_object_is_manifest_invalid(
    client: httpx.Client,
    repo: str,
    parts: tuple[Pushed, list[Pushed]],
    path: tuple[str | int, ...],
    key: str,
) -> None:
    """Two parsers must never see two different manifests behind one digest."""
    document = valid_document(parts)
    document["annotations"] = {"org.opencontainers.image.title": "first"}
    body = _with_duplicate(document, path, key)
    assert json.loads(body)  # an ordinary parser takes it, the last value winning
    error = assert_manifest_refused(client, repo, body, OCI_MANIFEST)
    assert "twice" in error["message"]


def test_a_key_twice_inside_an_index_child_is_manifest_invalid(
    client: httpx.Client, repo: str, parts: tuple[Pushed, list[Pushed]]
) -> None:
    child = push_manifest(client, repo, encode(valid_document(parts)), OCI_MANIFEST, None)
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": child.digest,
                "size": child.size,
                "platform": {"architecture": "amd64", "os": "linux"},
            }
        ],
    }
    body = _with_duplicate(index, ("manifests", 0, "platform"), "architecture")
    assert_manifest_refused(client, repo, body, OCI_INDEX)


# -- manifests with a wrong shape


@pytest.mark.parametrize("schema_version", [1, 3, "2", None, True, -2])
def test_wrong_schema_version_is_manifest_invalid(
    client: httpx.Client, repo: str, parts: tuple[Pushed, list[Pushed]], schema_version: object
) -> None:
    document = valid_document(parts)
    document["schemaVersion"] = schema_version
    assert_manifest_refused(client, repo, encode(document), OCI_MANIFEST)
    del document["schemaVersion"]
    assert_manifest_refused(client, repo, encode(document), OCI_MANIFEST)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda d: d.pop("config"), id="missing-config"),
        pytest.param(lambda d: d.update(config=None), id="null-config"),
        pytest.param(lambda d: d.update(config="sha256:abc"), id="config-not-object"),
        pytest.param(lambda d: d.pop("layers"), id="missing-layers"),
        pytest.param(lambda d: d.update(layers={}), id="layers-not-list"),
        pytest.param(lambda d: d.update(manifests=[]), id="image-with-manifests"),
        pytest.param(lambda d: d.update(annotations={"a": 1}), id="annotation-not-string"),
        pytest.param(lambda d: d.update(annotations=["a"]), id="annotations-not-object"),
        pytest.param(lambda d: d.update(artifactType="not a type"), id="bad-artifact-type"),
        pytest.param(lambda d: d.update(subject={"digest": "sha256:x"}), id="bad-subject"),
        pytest.param(lambda d: d.update(mediaType=7), id="media-type-not-string"),
        pytest.param(lambda d: d.update(mediaType="application/json"), id="unknown-media-type"),
    ],
)
def test_malformed_image_manifest_is_manifest_invalid(
    client: httpx.Client, repo: str, parts: tuple[Pushed, list[Pushed]], change: Any
) -> None:
    document = valid_document(parts)
    change(document)
    assert_manifest_refused(client, repo, encode(document), OCI_MANIFEST)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("digest", "sha256:abc"),
        ("digest", "sha256:" + "Z" * 64),
        ("digest", "md5:" + "0" * 32),
        ("digest", 42),
        ("digest", None),
        ("size", -1),
        ("size", "12"),
        ("size", 1.5),
        ("size", True),
        ("size", None),
        ("mediaType", None),
        ("mediaType", "no-slash"),
        ("mediaType", "a/b c"),
        ("urls", "https://example.com"),
        ("platform", "linux/amd64"),
    ],
)
def test_malformed_descriptor_is_manifest_invalid(
    client: httpx.Client,
    repo: str,
    parts: tuple[Pushed, list[Pushed]],
    field: str,
    value: object,
) -> None:
    for where in ("config", "layer"):
        document = valid_document(parts)
        descriptor = document["config"] if where == "config" else document["layers"][0]
        descriptor[field] = value
        assert_manifest_refused(client, repo, encode(document), OCI_MANIFEST)


def test_index_with_image_fields_is_manifest_invalid(
    client: httpx.Client, repo: str, parts: tuple[Pushed, list[Pushed]]
) -> None:
    config, _ = parts
    child = push_image(client, repo)
    document = index_manifest([child.descriptor()])
    document["config"] = config.descriptor()
    assert_manifest_refused(client, repo, encode(document), OCI_INDEX)
    document = index_manifest([child.descriptor()])
    document["manifests"] = child.descriptor()
    assert_manifest_refused(client, repo, encode(document), OCI_INDEX)


def test_docker_manifest_cannot_carry_a_subject(
    client: httpx.Client, repo: str, parts: tuple[Pushed, list[Pushed]]
) -> None:
    subject = push_image(client, repo, "v1")
    config, layers = parts
    document = image_manifest(config, layers, media_type=DOCKER_MANIFEST, subject=subject)
    assert_manifest_refused(client, repo, encode(document), DOCKER_MANIFEST)


# -- media types


@pytest.mark.parametrize(
    "content_type", [DOCKER_MANIFEST, OCI_INDEX, "text/plain", "application/vnd.example+json"]
)
def test_content_type_not_matching_media_type_is_manifest_invalid(
    client: httpx.Client, repo: str, parts: tuple[Pushed, list[Pushed]], content_type: str
) -> None:
    assert_manifest_refused(client, repo, encode(valid_document(parts)), content_type)


def test_document_without_any_media_type_or_shape_is_manifest_invalid(
    client: httpx.Client, repo: str
) -> None:
    body = encode({"schemaVersion": 2, "layers": []})
    assert_manifest_refused(client, repo, body, "application/json")


@pytest.mark.parametrize("content_type", [SCHEMA1, SCHEMA1_SIGNED, "application/json"])
def test_schema1_manifest_is_manifest_invalid(
    client: httpx.Client, repo: str, content_type: str
) -> None:
    document = {
        "schemaVersion": 1,
        "mediaType": SCHEMA1 if content_type == "application/json" else content_type,
        "name": repo,
        "tag": "bad",
        "architecture": "amd64",
        "fsLayers": [{"blobSum": unknown_digest()}],
        "history": [{"v1Compatibility": "{}"}],
    }
    assert_manifest_refused(client, repo, encode(document), content_type)


# -- references that do not resolve


def test_manifest_with_missing_blobs_lists_them(client: httpx.Client, repo: str) -> None:
    config = push_blob_object(client, repo, OCI_CONFIG, random_bytes())
    missing = [Pushed(OCI_LAYER, unknown_digest(), b"") for _ in range(2)]
    body = encode(image_manifest(config, missing))
    error = assert_manifest_refused(client, repo, body, OCI_MANIFEST, 400, "MANIFEST_BLOB_UNKNOWN")
    assert sorted(error["detail"]["blobs"]) == sorted(layer.digest for layer in missing)
    assert config.digest not in json.dumps(error["detail"])


def test_manifest_with_a_missing_config_blob_is_manifest_blob_unknown(
    client: httpx.Client, repo: str
) -> None:
    config = Pushed(OCI_CONFIG, unknown_digest(), b"{}")
    layer = push_blob_object(client, repo, OCI_LAYER, random_bytes())
    body = encode(image_manifest(config, [layer]))
    error = assert_manifest_refused(client, repo, body, OCI_MANIFEST, 400, "MANIFEST_BLOB_UNKNOWN")
    assert error["detail"]["blobs"] == [config.digest]


def test_blob_of_another_repository_does_not_satisfy_a_manifest(
    client: httpx.Client, repo: str
) -> None:
    config, layers = push_image_parts(client, f"{repo}/other")
    body = encode(image_manifest(config, layers))
    error = assert_manifest_refused(client, repo, body, OCI_MANIFEST, 400, "MANIFEST_BLOB_UNKNOWN")
    assert sorted(error["detail"]["blobs"]) == sorted([config.digest, layers[0].digest])


def test_index_with_a_missing_child_lists_it(client: httpx.Client, repo: str) -> None:
    present = push_image(client, repo)
    absent = Pushed(OCI_MANIFEST, unknown_digest(), b"")
    document = index_manifest(
        [
            present.descriptor(platform=platform()),
            absent.descriptor(platform=platform("linux", "arm64")),
        ]
    )
    error = assert_manifest_refused(
        client, repo, encode(document), OCI_INDEX, 400, "MANIFEST_BLOB_UNKNOWN"
    )
    assert error["detail"]["manifests"] == [absent.digest]


def test_refused_push_leaves_no_repository_behind(client: httpx.Client, repo: str) -> None:
    # The missing-blob check runs inside the transaction that would create the repository.
    config = Pushed(OCI_CONFIG, unknown_digest(), b"{}")
    body = encode(image_manifest(config, []))
    assert_manifest_refused(client, repo, body, OCI_MANIFEST, 400, "MANIFEST_BLOB_UNKNOWN")
    assert_manifest_refused(client, repo, b"{", OCI_MANIFEST)
    location = start_upload(client, repo)
    assert client.delete(location).status_code == 204
    assert_oci_error(client.get(f"/v2/{repo}/tags/list"), 404, "NAME_UNKNOWN")
    listed = client.get("/v2/_catalog", params={"last": repo[:-1], "n": 5}).json()
    assert repo not in listed["repositories"]


# -- size limits


def padded_manifest(parts: tuple[Pushed, list[Pushed]], size: int) -> bytes:
    """A valid manifest padded with trailing whitespace to exactly `size` bytes."""
    body = encode(valid_document(parts))
    return body + b" " * (size - len(body))


def test_manifest_of_exactly_4_mib_is_accepted(
    client: httpx.Client, repo: str, parts: tuple[Pushed, list[Pushed]]
) -> None:
    body = padded_manifest(parts, 4 * MiB)
    response = put_manifest(client, repo, "big", body, OCI_MANIFEST)
    assert response.status_code == 201, response.text
    assert client.get(f"/v2/{repo}/manifests/big").content == body


def test_manifest_over_4_mib_is_413(
    client: httpx.Client, repo: str, parts: tuple[Pushed, list[Pushed]]
) -> None:
    body = padded_manifest(parts, 4 * MiB + 1)
    assert_manifest_refused(client, repo, body, OCI_MANIFEST, 413, "MANIFEST_INVALID")


def test_streamed_manifest_over_4_mib_is_413(
    client: httpx.Client, repo: str, parts: tuple[Pushed, list[Pushed]]
) -> None:
    body = padded_manifest(parts, 5 * MiB)
    # No Content-Length: the limit must hold while reading the stream.
    response = client.put(
        f"/v2/{repo}/manifests/bad",
        content=blob_chunks(body, 256 * 1024),
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert_oci_error(response, 413, "MANIFEST_INVALID")
    assert_oci_error(client.get(f"/v2/{repo}/manifests/bad"), 404, "MANIFEST_UNKNOWN")


def huge_claim(method: str, path: str, token: str | None = None, body: bytes = b"tiny") -> bytes:
    """A request whose Content-Length promises far more than it sends."""
    authorization = f"Authorization: Bearer {token}\r\n" if token is not None else ""
    return (
        f"{method} {path} HTTP/1.1\r\nHost: registry\r\nContent-Length: {1 << 62}\r\n"
        f"Content-Type: application/octet-stream\r\n{authorization}\r\n"
    ).encode() + body


def push_token(registry: RegistryProcess, repo: str) -> str:
    return fetch_token(registry.url, [f"repository:{repo}:pull,push"])


def test_huge_content_length_on_manifest_put_is_413(registry: RegistryProcess, repo: str) -> None:
    # Without a token the challenge comes first, before anything waits for the body.
    anonymous = raw_exchange(registry.port, huge_claim("PUT", f"/v2/{repo}/manifests/bad"))
    raw_oci_error(anonymous, 401, "UNAUTHORIZED")
    token = push_token(registry, repo)
    response = raw_exchange(registry.port, huge_claim("PUT", f"/v2/{repo}/manifests/bad", token))
    raw_oci_error(response, 413, "MANIFEST_INVALID")


def test_huge_content_length_on_blob_uploads_is_413(
    registry: RegistryProcess, client: httpx.Client, repo: str
) -> None:
    location = start_upload(client, repo)
    digest = unknown_digest()
    token = push_token(registry, repo)
    for method, path in (
        ("PATCH", location),
        ("PUT", f"{location}?digest={digest}"),
        ("POST", f"/v2/{repo}/blobs/uploads/?digest={digest}"),
    ):
        anonymous = raw_exchange(registry.port, huge_claim(method, path))
        raw_oci_error(anonymous, 401, "UNAUTHORIZED")
        response = raw_exchange(registry.port, huge_claim(method, path, token))
        raw_oci_error(response, 413, "SIZE_INVALID")
    # Nothing was written to the session.
    assert client.get(location).headers["Range"] == "0-0"
    assert_oci_error(client.get(f"/v2/{repo}/blobs/{digest}"), 404, "BLOB_UNKNOWN")


# -- chunk headers


@pytest.mark.parametrize(
    "content_range",
    [
        "abc",
        "",
        "-5",
        "5-",
        "9-0",
        "0-9-10",
        "0 - 9",
        "bytes=",
        "bytes */10",
        "0-99999999999999999999",
        "0x0-0x9",
        "\uff11-\uff12".encode(),  # fullwidth digits, sent as UTF-8
    ],
)
def test_garbage_content_range_is_blob_upload_invalid(
    client: httpx.Client, repo: str, content_range: str | bytes
) -> None:
    location = start_upload(client, repo)
    data = random_bytes(10)
    headers = {"Content-Range": content_range}
    response = client.patch(location, content=data, headers=headers)
    assert_oci_error(response, 400, "BLOB_UPLOAD_INVALID")
    response = client.put(f"{location}?digest={digest_of(data)}", content=data, headers=headers)
    assert_oci_error(response, 400, "BLOB_UPLOAD_INVALID")
    # The session survives a malformed request, still empty.
    assert client.get(location).headers["Range"] == "0-0"
    assert_oci_error(client.get(f"/v2/{repo}/blobs/{digest_of(data)}"), 404, "BLOB_UNKNOWN")


# -- listings and methods


def test_overlong_last_is_rejected(client: httpx.Client, repo: str) -> None:
    push_image(client, repo, "v1")
    response = client.get(f"/v2/{repo}/tags/list", params={"last": "x" * 600})
    assert_oci_error(response, 400, "UNSUPPORTED")


@pytest.mark.parametrize(
    ("method", "suffix"),
    [
        ("PATCH", "manifests/latest"),
        ("POST", "manifests/latest"),
        ("PUT", "blobs/" + "sha256:" + "0" * 64),
        ("POST", "blobs/" + "sha256:" + "0" * 64),
        ("DELETE", "tags/list"),
        ("POST", "referrers/" + "sha256:" + "0" * 64),
        ("PUT", "blobs/uploads/"),
        ("DELETE", "blobs/uploads/"),
        ("POST", "blobs/uploads/some-session"),
    ],
)
def test_method_not_allowed_is_405_unsupported(
    client: httpx.Client, repo: str, method: str, suffix: str
) -> None:
    response = client.request(method, f"/v2/{repo}/{suffix}", content=b"{}")
    assert_oci_error(response, 405, "UNSUPPORTED")
