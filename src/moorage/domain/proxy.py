"""Proxy-cache projects, the pure part: upstream URLs, repository mapping, platform filters.

A proxy-cache project serves what an upstream registry has: `hub/library/alpine` in the
project `hub` is `library/alpine` upstream. Docker Hub names single-segment official images
`library/<name>`, so a Docker Hub upstream maps `hub/alpine` to `library/alpine` as well.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Final
from urllib.parse import urlsplit

from moorage.domain.outbound import OutboundURLError, check_endpoint

MAX_URL_LENGTH: Final = 2048
MAX_PLATFORMS: Final = 32
MAX_PEM_BYTES: Final = 64 * 1024
MAX_TAG_TTL_SECONDS: Final = 30 * 24 * 3600
DEFAULT_TAG_TTL_SECONDS: Final = 600
DEFAULT_TIMEOUT_SECONDS: Final = 30
MAX_TIMEOUT_SECONDS: Final = 600

DOCKER_HUB_HOSTS: Final = frozenset({"docker.io", "registry-1.docker.io", "index.docker.io"})
DOCKER_HUB_URL: Final = "https://registry-1.docker.io"

_PLATFORM: Final = re.compile(r"^[a-z0-9._-]{1,32}/[a-z0-9._-]{1,32}(/[a-z0-9._-]{1,32})?$")


class Flavor(StrEnum):
    OCI = "oci"  # any OCI distribution registry (Distribution, Harbor, Moorage, ...)
    DOCKER_HUB = "docker-hub"  # `library/` for single-segment names


class ProxyConfigError(ValueError):
    """An upstream configuration that cannot be used; the message says why."""


def normalize_url(url: str, *, allow_private: bool) -> str:
    """The upstream's base URL (scheme://host[:port][/path], no trailing slash), or
    ProxyConfigError. Docker Hub's index name is replaced by its registry endpoint.

    The host must pass the outbound guard (`moorage.domain.outbound`): one canonical spelling,
    and a literal address the endpoint may reach."""
    try:
        parsed = check_endpoint(url.strip(), allow_private=allow_private)
    except OutboundURLError as error:
        raise ProxyConfigError(str(error)) from None
    if parsed.query or parsed.fragment or url.strip().endswith(("?", "#")):
        raise ProxyConfigError("the upstream URL takes no query or fragment")
    if parsed.host in DOCKER_HUB_HOSTS:
        return DOCKER_HUB_URL
    return f"{parsed.scheme}://{parsed.netloc}{parsed.path.rstrip('/')}"


def flavor_of(url: str, requested: str | None) -> Flavor:
    if requested is not None:
        try:
            return Flavor(requested)
        except ValueError:
            raise ProxyConfigError(f"flavor must be one of {', '.join(Flavor)}") from None
    host = urlsplit(url).hostname or ""
    return Flavor.DOCKER_HUB if host in DOCKER_HUB_HOSTS else Flavor.OCI


def upstream_repository(project: str, repository: str, flavor: Flavor) -> str | None:
    """The upstream name of `repository` (which lies in the proxy project `project`), or None
    when the name has nothing below the project."""
    if not repository.startswith(project + "/"):
        return None
    relative = repository[len(project) + 1 :]
    if flavor is Flavor.DOCKER_HUB and "/" not in relative:
        return f"library/{relative}"
    return relative


@dataclass(frozen=True, slots=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        base = f"{self.os}/{self.architecture}"
        return f"{base}/{self.variant}" if self.variant else base


def parse_platforms(values: list[str] | None) -> tuple[Platform, ...] | None:
    """`os/architecture[/variant]` entries; None (or an empty list) means every platform."""
    if not values:
        return None
    if len(values) > MAX_PLATFORMS:
        raise ProxyConfigError(f"at most {MAX_PLATFORMS} platforms")
    parsed: list[Platform] = []
    for value in values:
        if not _PLATFORM.fullmatch(value):
            raise ProxyConfigError(f"platform {value!r} is not os/architecture[/variant]")
        os_name, architecture, *variant = value.split("/")
        parsed.append(Platform(os_name, architecture, variant[0] if variant else None))
    return tuple(parsed)


def platform_admitted(filters: tuple[Platform, ...] | None, platform: object) -> bool:
    """Whether an index entry's `platform` object passes the filter (no filter: all do).

    A filter without a variant admits every variant of its architecture.
    """
    if filters is None:
        return True
    if not isinstance(platform, dict):
        return False
    for wanted in filters:
        if platform.get("os") != wanted.os or platform.get("architecture") != wanted.architecture:
            continue
        if wanted.variant is None or platform.get("variant") == wanted.variant:
            return True
    return False


def validate_pem(value: str | None, what: str) -> str | None:
    if value is None or value == "":
        return None
    if len(value.encode()) > MAX_PEM_BYTES:
        raise ProxyConfigError(f"{what} is larger than {MAX_PEM_BYTES} bytes")
    if "-----BEGIN " not in value:
        raise ProxyConfigError(f"{what} must be PEM")
    return value
