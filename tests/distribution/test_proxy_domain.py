"""The pure part of proxy-cache projects: upstream URLs, name mapping, platform filters."""

from __future__ import annotations

import pytest

from moorage.domain.proxy import (
    DOCKER_HUB_URL,
    Flavor,
    Platform,
    ProxyConfigError,
    flavor_of,
    normalize_url,
    parse_platforms,
    platform_admitted,
    upstream_repository,
    validate_pem,
)
from moorage.services.distribution.proxy import SecretBox, UpstreamEndpoint

MAX_PLATFORMS = 32  # the most platforms a proxy project's filter names


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://registry.example.org/", "https://registry.example.org"),
        ("https://registry.example.org:8443/prefix/", "https://registry.example.org:8443/prefix"),
        ("https://docker.io", DOCKER_HUB_URL),
        ("https://index.docker.io/v1/", DOCKER_HUB_URL),
    ],
)
def test_upstream_urls_are_normalized(url: str, expected: str) -> None:
    assert normalize_url(url, allow_private=False) == expected


@pytest.mark.parametrize(
    "url",
    [
        "ftp://registry.example.org",
        "https://user:pw@registry.example.org",
        "https://registry.example.org/?q=1",
        "http://127.0.0.1:5000",
        "http://169.254.169.254",
        "http://[::ffff:10.0.0.1]",
        "https://" + "a" * 2100 + ".org",
    ],
)
def test_unusable_upstream_urls_are_refused(url: str) -> None:
    with pytest.raises(ProxyConfigError):
        normalize_url(url, allow_private=False)


def test_private_upstreams_need_the_explicit_setting() -> None:
    assert normalize_url("http://127.0.0.1:5000", allow_private=True) == "http://127.0.0.1:5000"


def test_docker_hub_maps_single_segment_names_to_library() -> None:
    assert flavor_of(DOCKER_HUB_URL, None) is Flavor.DOCKER_HUB
    assert flavor_of("https://ghcr.io", None) is Flavor.OCI
    assert upstream_repository("hub", "hub/alpine", Flavor.DOCKER_HUB) == "library/alpine"
    assert upstream_repository("hub", "hub/bitnami/redis", Flavor.DOCKER_HUB) == "bitnami/redis"
    assert upstream_repository("ghcr", "ghcr/alpine", Flavor.OCI) == "alpine"
    assert upstream_repository("hub", "hub", Flavor.DOCKER_HUB) is None
    assert upstream_repository("hub", "hubx/alpine", Flavor.DOCKER_HUB) is None
    with pytest.raises(ProxyConfigError):
        flavor_of(DOCKER_HUB_URL, "quay")


def test_platform_filters() -> None:
    filters = parse_platforms(["linux/amd64", "linux/arm/v7"])
    assert filters == (Platform("linux", "amd64"), Platform("linux", "arm", "v7"))
    assert platform_admitted(filters, {"os": "linux", "architecture": "amd64"})
    assert platform_admitted(filters, {"os": "linux", "architecture": "amd64", "variant": "v3"})
    assert platform_admitted(filters, {"os": "linux", "architecture": "arm", "variant": "v7"})
    assert not platform_admitted(filters, {"os": "linux", "architecture": "arm", "variant": "v6"})
    assert not platform_admitted(filters, {"os": "windows", "architecture": "amd64"})
    assert not platform_admitted(filters, None)
    assert platform_admitted(None, None)
    assert parse_platforms([]) is None
    for bad in (["linux"], ["Linux/AMD64"], ["linux/amd64/v1/x"]):
        with pytest.raises(ProxyConfigError):
            parse_platforms(bad)
    with pytest.raises(ProxyConfigError):
        parse_platforms(["linux/amd64"] * (MAX_PLATFORMS + 1))


def test_pem_is_checked_and_capped() -> None:
    assert validate_pem("", "ca") is None
    with pytest.raises(ProxyConfigError):
        validate_pem("not a certificate", "ca")
    with pytest.raises(ProxyConfigError):
        validate_pem("-----BEGIN CERTIFICATE-----\n" + "A" * 70_000, "ca")


def test_stored_secrets_are_sealed_per_project_and_kept_out_of_repr() -> None:
    box = SecretBox(lambda: b"k" * 32)
    sealed = box.seal(7, "s3cret-value")
    assert b"s3cret-value" not in sealed
    assert box.open(7, sealed) == "s3cret-value"
    assert box.open(8, sealed) is None  # bound to its project
    endpoint = UpstreamEndpoint(
        project="hub",
        url=DOCKER_HUB_URL,
        flavor=Flavor.DOCKER_HUB,
        username="me",
        password="s3cret-value",
        token=None,
        ca_bundle=None,
        client_cert=None,
        client_key="-----BEGIN PRIVATE KEY-----",
        allow_private_network=False,
        timeout_seconds=30,
        version="1",
    )
    assert "s3cret-value" not in repr(endpoint)
    assert "PRIVATE KEY" not in repr(endpoint)
