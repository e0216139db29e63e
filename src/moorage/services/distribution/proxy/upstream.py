"""What a proxy cache needs of its upstream registry, and how the upstream's failures read.

The services see the upstream only through the `UpstreamClient` protocol, which
`moorage.http.upstream` implements over the one outbound client factory (the upstream's token
flow, TLS and the outbound guard live there); aiohttp stays in `moorage.http`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Final, Protocol

from moorage.domain import mediatypes as mt
from moorage.domain.errors import ErrorCode, RegistryError
from moorage.domain.proxy import (
    Flavor,
)

# What the proxy asks the upstream for: every manifest type the registry stores.
UPSTREAM_ACCEPT: Final = (
    mt.OCI_INDEX,
    mt.OCI_MANIFEST,
    mt.DOCKER_MANIFEST_LIST,
    mt.DOCKER_MANIFEST,
)


class UpstreamError(Exception):
    """The upstream could not provide what was asked.

    `kind`: not-found, unauthorized, denied, rate-limited, unavailable (down, timeout, 5xx) or
    invalid (an answer the proxy cannot use, e.g. a digest that does not match).
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class UpstreamManifest:
    body: bytes
    media_type: str
    digest: str | None  # Docker-Content-Digest, when the upstream sent it


@dataclass(frozen=True, slots=True)
class UpstreamHead:
    digest: str | None
    media_type: str | None


@dataclass(frozen=True, slots=True)
class UpstreamBlobHead:
    size: int | None  # Content-Length of the upstream's HEAD
    digest: str | None  # Docker-Content-Digest, when the upstream sent it


class UpstreamBlob(Protocol):
    @property
    def size(self) -> int | None: ...

    def chunks(self) -> AsyncIterator[bytes]: ...

    async def close(self) -> None: ...


class UpstreamClient(Protocol):
    async def get_manifest(
        self, repository: str, reference: str, max_bytes: int
    ) -> UpstreamManifest: ...

    async def head_manifest(self, repository: str, reference: str) -> UpstreamHead: ...

    async def open_blob(self, repository: str, digest: str) -> UpstreamBlob: ...

    async def head_blob(self, repository: str, digest: str) -> UpstreamBlobHead: ...

    async def check(self) -> None:
        """Reach the upstream's /v2/ and sign in: raises UpstreamError when that fails."""
        ...


@dataclass(frozen=True, slots=True)
class UpstreamEndpoint:
    """What a client needs to reach one upstream. Secrets are kept out of repr."""

    project: str
    url: str
    flavor: Flavor
    username: str | None
    password: str | None = field(repr=False)
    token: str | None = field(repr=False)
    ca_bundle: str | None
    client_cert: str | None
    client_key: str | None = field(repr=False)
    allow_private_network: bool
    timeout_seconds: int
    version: str  # changes whenever the configuration changes: clients are cached by it


class UpstreamClients(Protocol):
    def client(self, endpoint: UpstreamEndpoint) -> UpstreamClient: ...


def upstream_failure(error: UpstreamError, what: str, missing: ErrorCode) -> RegistryError:
    """The registry error a client sees for an upstream failure: it names the cause."""
    if error.kind == "not-found":
        return RegistryError(missing, f"{what} is not cached and the upstream does not have it")
    if error.kind == "rate-limited":
        return RegistryError(
            ErrorCode.TOOMANYREQUESTS,
            f"{what} is not cached and the upstream is rate-limiting this proxy: {error}",
        )
    if error.kind in ("unauthorized", "denied"):
        return RegistryError(
            ErrorCode.DENIED,
            f"{what} is not cached and the upstream refused this proxy's credentials: {error}",
            status=502,
        )
    return RegistryError(
        missing, f"{what} is not cached and the upstream is unavailable: {error}", status=502
    )
