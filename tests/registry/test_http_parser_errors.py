"""Requests the HTTP parser rejects get a JSON error body readable as OCI error JSON (on /v2)
and as problem JSON (on the API), store nothing, and leave the server serving."""

from __future__ import annotations

import http
import json
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.oci import (
    RawResponse,
    assert_oci_error,
    encode,
    fetch_token,
    push_image,
    raw_oci_error,
)
from tests.support.server import RegistryProcess


@pytest.fixture(autouse=True)
def server_still_serves(client: httpx.Client) -> Iterator[None]:
    yield
    assert client.get("/v2/").status_code == 200


def exchange_all(port: int, request: bytes) -> list[RawResponse]:
    """Every response the server writes for `request`, read until it closes the connection."""
    responses: list[RawResponse] = []
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        reader = sock.makefile("rb")
        while status_line := reader.readline():
            status = int(status_line.split()[1])
            headers: dict[str, str] = {}
            while (line := reader.readline().rstrip(b"\r\n")) != b"":
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            body = reader.read(int(headers.get("content-length", "0")))
            responses.append(RawResponse(status, headers, body))
    return responses


def assert_parse_error(response: RawResponse) -> dict[str, Any]:
    """The shape of a parser refusal: 4xx, JSON, an OCI error and the problem fields."""
    assert 400 <= response.status < 500, (response.status, response.body)
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = json.loads(response.body)
    (error,) = body["errors"]
    assert error["code"] == "UNSUPPORTED"
    assert error["message"]
    assert body["status"] == response.status
    assert body["title"]
    assert body["detail"]
    return dict(body)


def request_bytes(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [
        f"{method} {path} HTTP/1.1",
        "Host: registry",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def test_a_body_longer_than_its_content_length_is_answered_in_json(
    registry: RegistryProcess, client: httpx.Client, repo: str
) -> None:
    pushed = push_image(client, repo)
    token = fetch_token(registry.url, [f"repository:{repo}:pull,push"])
    document = pushed.body
    declared = 10  # fewer bytes than the manifest: the rest reaches the parser as a request
    request = request_bytes(
        "PUT",
        f"/v2/{repo}/manifests/short",
        {
            "Authorization": f"Bearer {token}",
            "Content-Type": pushed.media_type,
            "Content-Length": str(declared),
        },
        document,
    )
    responses = exchange_all(registry.port, request)
    assert responses, "no answer"
    # Depending on how the bytes arrive, the declared ten bytes are answered as an invalid
    # manifest first, or the parser refuses the whole read; either way every answer is JSON.
    for response in responses[:-1]:
        raw_oci_error(response, 400, "MANIFEST_INVALID")
    assert_parse_error(responses[-1])
    assert_oci_error(client.get(f"/v2/{repo}/manifests/short"), 404, "MANIFEST_UNKNOWN")
    assert client.get(f"/v2/{repo}/manifests/{pushed.digest}").content == document


@pytest.mark.parametrize(
    "request_",
    [
        pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32), id="tls-hello"),
        pytest.param(b"NOT HTTP AT ALL\r\n\r\n", id="not-http"),
        pytest.param(b"GET /v2/ HTTP/9.9\r\nHost: registry\r\n\r\n", id="bad-version"),
        pytest.param(b"GET /v2/\x00 HTTP/1.1\r\nHost: registry\r\n\r\n", id="nul-in-target"),
        pytest.param(
            b"GET /v2/ HTTP/1.1\r\nHost: registry\r\nX-Long: " + b"a" * 70_000 + b"\r\n\r\n",
            id="oversized-header",
        ),
        pytest.param(
            b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: registry\r\n\r\n",
            id="oversized-request-line",
        ),
        pytest.param(
            b"GET /v2/ HTTP/1.1\r\nHost: registry\r\nBad Header: x\r\n\r\n",
            id="space-in-header-name",
        ),
        pytest.param(
            b"PUT /v2/x/manifests/t HTTP/1.1\r\nHost: registry\r\nContent-Length: 4\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            id="length-and-chunked",
        ),
        pytest.param(
            b"PUT /v2/x/manifests/t HTTP/1.1\r\nHost: registry\r\nContent-Length: 4\r\n"
            b"Content-Length: 5\r\n\r\nabcd",
            id="two-content-lengths",
        ),
        pytest.param(
            b"PUT /v2/x/manifests/t HTTP/1.1\r\nHost: registry\r\nContent-Length: -1\r\n\r\n",
            id="negative-length",
        ),
    ],
)
def test_requests_the_parser_rejects_get_json(registry: RegistryProcess, request_: bytes) -> None:
    responses = exchange_all(registry.port, request_)
    assert responses, "no answer"
    body = assert_parse_error(responses[-1])
    # The detail names the problem without echoing raw bytes back.
    assert all(ch.isprintable() for ch in body["detail"])
    assert len(body["detail"]) < 400


def test_the_refusal_is_also_a_problem_document_on_the_api(registry: RegistryProcess) -> None:
    request = b"GET /api/v1/projects HTTP/1.1\r\nHost: registry\r\nX-Long: " + b"a" * 70_000
    (response,) = exchange_all(registry.port, request + b"\r\n\r\n")
    body = assert_parse_error(response)
    assert body["type"] == "about:blank"
    assert body["title"] == http.HTTPStatus(response.status).phrase


def test_a_malformed_chunked_body_is_a_4xx_and_stores_nothing(
    registry: RegistryProcess, client: httpx.Client, repo: str
) -> None:
    token = fetch_token(registry.url, [f"repository:{repo}:pull,push"])
    request = request_bytes(
        "PUT",
        f"/v2/{repo}/manifests/chunked",
        {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/vnd.oci.image.manifest.v1+json",
            "Transfer-Encoding": "chunked",
        },
        b"zz\r\n" + encode({"schemaVersion": 2}) + b"\r\n0\r\n\r\n",
    )
    responses = exchange_all(registry.port, request)
    assert responses
    final = responses[-1]
    assert 400 <= final.status < 500, (final.status, final.body)
    assert json.loads(final.body)["errors"]
    assert_oci_error(client.get(f"/v2/{repo}/manifests/chunked"), 404, "MANIFEST_UNKNOWN")
