"""Small typed helpers for protocol tests: digests, blob uploads, manifests, OCI error bodies.

Everything goes over HTTP to a real server. Content is random by default so that tests sharing
one server never depend on each other's blobs.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from tests.support.auth import ADMIN_PASSWORD, ADMIN_USER

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
API_VERSION_HEADER = ("Docker-Distribution-API-Version", "registry/2.0")

# The config/layer types that go with each image manifest type.
_PARTS = {OCI_MANIFEST: (OCI_CONFIG, OCI_LAYER), DOCKER_MANIFEST: (DOCKER_CONFIG, DOCKER_LAYER)}
_CHILD_TYPE = {OCI_INDEX: OCI_MANIFEST, DOCKER_MANIFEST_LIST: DOCKER_MANIFEST}


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


EMPTY_SHA256 = digest_of(b"")


def random_bytes(size: int = 64) -> bytes:
    return os.urandom(size)


def unknown_digest() -> str:
    """A well-formed digest of content nobody has pushed."""
    return digest_of(random_bytes(32))


def encode(document: Any) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Pushed:
    """Something stored in the registry, with what a descriptor of it needs."""

    media_type: str
    digest: str
    body: bytes

    @property
    def size(self) -> int:
        return len(self.body)

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size, **extra}


# -- registry tokens


def fetch_token(
    base_url: str,
    scopes: list[str],
    credentials: tuple[str, str] | None = (ADMIN_USER, ADMIN_PASSWORD),
    *,
    transport: httpx.BaseTransport | None = None,
) -> str:
    """A registry token from /service/token (anonymous when `credentials` is None)."""
    params: list[tuple[str, str | int | float | bool | None]] = [("service", "moorage")]
    params.extend(("scope", scope) for scope in scopes)
    with httpx.Client(base_url=base_url, timeout=30, transport=transport) as http:
        response = http.get("/service/token", params=params, auth=credentials)
    assert response.status_code == 200, response.text
    return str(response.json()["token"])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def token_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT, read without verification (the registry verifies; tests inspect)."""
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert isinstance(claims, dict), claims
    return claims


# -- errors


def oci_errors(response: httpx.Response) -> list[dict[str, Any]]:
    """The `errors` array of an OCI error body (asserting that it is one)."""
    assert response.headers["Content-Type"].startswith("application/json"), response.text
    document = response.json()
    assert isinstance(document, dict), document
    errors = document["errors"]
    assert isinstance(errors, list), document
    assert errors, document
    for error in errors:
        assert isinstance(error["code"], str), error
        assert isinstance(error["message"], str), error
    return errors


def assert_oci_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """Assert the status and that the body is an OCI error with `code`; that error."""
    assert response.status_code == status, (response.status_code, response.text)
    errors = oci_errors(response)
    matching = [error for error in errors if error["code"] == code]
    assert matching, errors
    return matching[0]


# -- blobs


def start_upload(client: httpx.Client, repo: str) -> str:
    """Open an upload session; its Location."""
    response = client.post(f"/v2/{repo}/blobs/uploads/")
    assert response.status_code == 202, response.text
    return response.headers["Location"]


def with_digest(location: str, digest: str) -> str:
    separator = "&" if "?" in location else "?"
    return f"{location}{separator}digest={digest}"


def push_blob(client: httpx.Client, repo: str, data: bytes, algorithm: str = "sha256") -> str:
    """POST a session, then PUT the whole blob in one request; the digest."""
    digest = digest_of(data, algorithm)
    location = start_upload(client, repo)
    response = client.put(
        with_digest(location, digest),
        content=data,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert response.status_code == 201, response.text
    assert response.headers["Docker-Content-Digest"] == digest
    return digest


def push_blob_in_one_post(client: httpx.Client, repo: str, data: bytes) -> httpx.Response:
    """The single-request upload (`POST ?digest=`); the raw response."""
    return client.post(
        f"/v2/{repo}/blobs/uploads/",
        params={"digest": digest_of(data)},
        content=data,
        headers={"Content-Type": "application/octet-stream"},
    )


def patch_chunk(client: httpx.Client, location: str, chunk: bytes, start: int) -> httpx.Response:
    return client.patch(
        location,
        content=chunk,
        headers={
            "Content-Type": "application/octet-stream",
            "Content-Range": f"{start}-{start + len(chunk) - 1}",
        },
    )


def push_blob_chunked(
    client: httpx.Client, repo: str, data: bytes, chunk_size: int, algorithm: str = "sha256"
) -> str:
    """Upload in PATCH chunks with Content-Range, then close with an empty PUT; the digest."""
    digest = digest_of(data, algorithm)
    location = start_upload(client, repo)
    for start in range(0, len(data), chunk_size):
        response = patch_chunk(client, location, data[start : start + chunk_size], start)
        assert response.status_code == 202, response.text
        end = min(start + chunk_size, len(data)) - 1
        assert response.headers["Range"] == f"0-{end}"
        location = response.headers["Location"]
    response = client.put(with_digest(location, digest))
    assert response.status_code == 201, response.text
    return digest


def push_blob_object(client: httpx.Client, repo: str, media_type: str, data: bytes) -> Pushed:
    push_blob(client, repo, data)
    return Pushed(media_type, digest_of(data), data)


def blob_chunks(data: bytes, size: int) -> Iterator[bytes]:
    """A generator body, which httpx sends with chunked transfer encoding."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


# -- manifests


def platform(os_name: str = "linux", architecture: str = "amd64") -> dict[str, str]:
    return {"os": os_name, "architecture": architecture}


def image_manifest(
    config: Pushed,
    layers: list[Pushed],
    *,
    media_type: str = OCI_MANIFEST,
    subject: Pushed | None = None,
    artifact_type: str | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    document: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": config.descriptor(),
        "layers": [layer.descriptor() for layer in layers],
    }
    if subject is not None:
        document["subject"] = subject.descriptor()
    if artifact_type is not None:
        document["artifactType"] = artifact_type
    if annotations is not None:
        document["annotations"] = annotations
    return document


def index_manifest(
    children: list[dict[str, Any]],
    *,
    media_type: str = OCI_INDEX,
    subject: Pushed | None = None,
    artifact_type: str | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    document: dict[str, Any] = {"schemaVersion": 2, "mediaType": media_type, "manifests": children}
    if subject is not None:
        document["subject"] = subject.descriptor()
    if artifact_type is not None:
        document["artifactType"] = artifact_type
    if annotations is not None:
        document["annotations"] = annotations
    return document


def put_manifest(
    client: httpx.Client, repo: str, reference: str, body: bytes, media_type: str
) -> httpx.Response:
    return client.put(
        f"/v2/{repo}/manifests/{reference}", content=body, headers={"Content-Type": media_type}
    )


def push_manifest(
    client: httpx.Client, repo: str, body: bytes, media_type: str, tag: str | None = None
) -> Pushed:
    """PUT a manifest by tag (or by its digest) and check the 201; what was stored."""
    digest = digest_of(body)
    response = put_manifest(client, repo, tag or digest, body, media_type)
    assert response.status_code == 201, response.text
    assert response.headers["Docker-Content-Digest"] == digest
    return Pushed(media_type, digest, body)


def push_image_parts(
    client: httpx.Client,
    repo: str,
    *,
    media_type: str = OCI_MANIFEST,
    layer_count: int = 1,
    config_media_type: str | None = None,
) -> tuple[Pushed, list[Pushed]]:
    """Push a random config and random layers; (config, layers)."""
    default_config, layer_type = _PARTS[media_type]
    config = push_blob_object(
        client, repo, config_media_type or default_config, encode({"nonce": random_bytes(8).hex()})
    )
    layers = [
        push_blob_object(client, repo, layer_type, random_bytes(128)) for _ in range(layer_count)
    ]
    return config, layers


def push_image(
    client: httpx.Client,
    repo: str,
    tag: str | None = None,
    *,
    media_type: str = OCI_MANIFEST,
    layer_count: int = 1,
    config_media_type: str | None = None,
    subject: Pushed | None = None,
    artifact_type: str | None = None,
    annotations: dict[str, str] | None = None,
) -> Pushed:
    """Push a config, layers and an image manifest referencing them; the manifest."""
    config, layers = push_image_parts(
        client,
        repo,
        media_type=media_type,
        layer_count=layer_count,
        config_media_type=config_media_type,
    )
    document = image_manifest(
        config,
        layers,
        media_type=media_type,
        subject=subject,
        artifact_type=artifact_type,
        annotations=annotations,
    )
    return push_manifest(client, repo, encode(document), media_type, tag)


def push_index(
    client: httpx.Client,
    repo: str,
    children: list[tuple[Pushed, dict[str, str]]],
    tag: str | None = None,
    *,
    media_type: str = OCI_INDEX,
    subject: Pushed | None = None,
    artifact_type: str | None = None,
    annotations: dict[str, str] | None = None,
) -> Pushed:
    """Push an index over already pushed (manifest, platform) pairs; the index."""
    descriptors = [child.descriptor(platform=where) for child, where in children]
    document = index_manifest(
        descriptors,
        media_type=media_type,
        subject=subject,
        artifact_type=artifact_type,
        annotations=annotations,
    )
    return push_manifest(client, repo, encode(document), media_type, tag)


def push_multi_platform(
    client: httpx.Client,
    repo: str,
    platforms: list[dict[str, str]],
    tag: str | None = None,
    *,
    media_type: str = OCI_INDEX,
) -> tuple[Pushed, list[Pushed]]:
    """An index with one freshly pushed image per platform; (index, children)."""
    child_type = _CHILD_TYPE[media_type]
    children = [push_image(client, repo, media_type=child_type) for _ in platforms]
    index = push_index(
        client, repo, list(zip(children, platforms, strict=True)), tag, media_type=media_type
    )
    return index, children


# -- raw HTTP, for requests httpx would normalise or refuse to send


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def raw_request(
    port: int,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
) -> RawResponse:
    """Send `path` exactly as given (no dot-segment or slash normalisation)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        for name, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
            connection.putheader(name, value)
        connection.endheaders(body or None)
        return _read_response(connection.getresponse())
    finally:
        connection.close()


def raw_exchange(port: int, request: bytes) -> RawResponse:
    """Write `request` bytes verbatim (e.g. a body shorter than its Content-Length) and read
    one response without waiting for the connection to close."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        response = http.client.HTTPResponse(sock, method=request.split(b" ", 1)[0].decode())
        response.begin()
        return _read_response(response)


def _read_response(response: http.client.HTTPResponse) -> RawResponse:
    headers = {name.lower(): value for name, value in response.getheaders()}
    return RawResponse(response.status, headers, response.read())


def raw_oci_error(response: RawResponse, status: int, code: str) -> dict[str, Any]:
    assert response.status == status, (response.status, response.body)
    assert response.headers["content-type"].startswith("application/json"), response.headers
    errors = response.json()["errors"]
    matching = [error for error in errors if error["code"] == code]
    assert matching, errors
    return dict(matching[0])


def push_any(client: httpx.Client, repo: str, media_type: str, tag: str | None = None) -> Pushed:
    """Push a manifest of any of the four supported types (an index gets one linux/amd64
    child); the manifest."""
    if media_type in _CHILD_TYPE:
        index, _ = push_multi_platform(client, repo, [platform()], tag, media_type=media_type)
        return index
    return push_image(client, repo, tag, media_type=media_type)


ALL_MANIFEST_TYPES = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST)
