"""The API version check and the headers and error format every /v2 response carries."""

from __future__ import annotations

import httpx

from tests.support.oci import (
    API_VERSION_HEADER,
    assert_oci_error,
    oci_errors,
    unknown_digest,
)

HEADER, VALUE = API_VERSION_HEADER


def test_api_version_check_answers_200_with_an_empty_json_object(client: httpx.Client) -> None:
    response = client.get("/v2/")
    assert response.status_code == 200
    assert response.headers[HEADER] == VALUE
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json() == {}


def test_api_version_check_answers_head(client: httpx.Client) -> None:
    response = client.head("/v2/")
    assert response.status_code == 200
    assert response.headers[HEADER] == VALUE
    assert response.content == b""


def test_api_version_header_is_on_not_found_errors(client: httpx.Client, repo: str) -> None:
    response = client.get(f"/v2/{repo}/manifests/latest")
    assert_oci_error(response, 404, "MANIFEST_UNKNOWN")
    assert response.headers[HEADER] == VALUE


def test_api_version_header_is_on_bad_request_errors(client: httpx.Client) -> None:
    response = client.get("/v2/NotLowerCase/tags/list")
    assert_oci_error(response, 400, "NAME_INVALID")
    assert response.headers[HEADER] == VALUE


def test_api_version_header_is_on_blob_errors(client: httpx.Client, repo: str) -> None:
    response = client.get(f"/v2/{repo}/blobs/{unknown_digest()}")
    assert_oci_error(response, 404, "BLOB_UNKNOWN")
    assert response.headers[HEADER] == VALUE


def test_unknown_v2_endpoint_is_an_oci_not_found(client: httpx.Client, repo: str) -> None:
    for path in ("/v2/nothing-here", f"/v2/{repo}/unknown/endpoint", "/v2/_catalog/extra"):
        response = client.get(path)
        assert_oci_error(response, 404, "NAME_UNKNOWN")
        assert response.headers[HEADER] == VALUE


def test_method_not_allowed_is_an_oci_unsupported_error(client: httpx.Client, repo: str) -> None:
    for method, path in (
        ("POST", "/v2/"),
        ("DELETE", "/v2/_catalog"),
        ("PUT", f"/v2/{repo}/tags/list"),
        ("POST", f"/v2/{repo}/manifests/latest"),
        ("PATCH", f"/v2/{repo}/blobs/{unknown_digest()}"),
    ):
        response = client.request(method, path)
        assert_oci_error(response, 405, "UNSUPPORTED")
        assert response.headers[HEADER] == VALUE


def test_error_bodies_have_code_and_message(client: httpx.Client, repo: str) -> None:
    errors = oci_errors(client.get(f"/v2/{repo}/manifests/{unknown_digest()}"))
    assert [error["code"] for error in errors] == ["MANIFEST_UNKNOWN"]
    assert errors[0]["message"]


def test_server_banner_does_not_reveal_a_version(client: httpx.Client) -> None:
    assert client.get("/v2/").headers["Server"] == "moorage"
