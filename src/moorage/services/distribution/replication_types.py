"""What the parts of replication share: the remote registry protocol (implemented by
`moorage.http.replication_client`), options, task errors and progress, and how a rule's stored
filters and name mapping are read back.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Final, Protocol

from moorage.coordination.base import Coordination
from moorage.domain import mediatypes as mt
from moorage.domain.digest import Digest
from moorage.domain.errors import RegistryError
from moorage.domain.events import Actor
from moorage.domain.names import Reference
from moorage.domain.replication import Backoff, Filters, NameMapping
from moorage.metadata.distribution.replication_store import RuleRecord
from moorage.services.distribution.proxy import (
    UpstreamBlob,
    UpstreamError,
    UpstreamHead,
    UpstreamManifest,
)

MAX_DEPTH: Final = 2  # an index of indexes is followed this deep


# -- the remote side (implemented by moorage.http.replication_client)


@dataclass(frozen=True, slots=True)
class RemoteEndpoint:
    """What a client needs to reach a remote registry. Secrets are kept out of repr."""

    id: int
    url: str
    kind: str
    username: str | None
    password: str | None = field(repr=False)
    token: str | None = field(repr=False)
    ca_bundle: str | None
    verify_tls: bool
    allow_private_network: bool
    timeout_seconds: int
    version: str


@dataclass(frozen=True, slots=True)
class ManifestReceipt:
    """What a remote answered to a manifest PUT: its digest, and the `OCI-Subject` header that
    registries with the Referrers API send for a manifest with a subject."""

    digest: str | None
    subject: str | None


class RemoteRegistry(Protocol):
    async def check(self) -> None: ...

    async def list_repositories(self, limit: int) -> list[str]: ...

    async def list_tags(self, repository: str, limit: int) -> list[str]: ...

    async def get_manifest(
        self, repository: str, reference: str, max_bytes: int
    ) -> UpstreamManifest: ...

    async def find_manifest(self, repository: str, reference: str) -> UpstreamHead | None: ...

    async def open_blob(self, repository: str, digest: str) -> UpstreamBlob: ...

    async def has_blob(self, repository: str, digest: str) -> bool: ...

    async def start_upload(
        self, repository: str, digest: str, mount_from: str | None
    ) -> str | None: ...

    async def upload_blob(
        self,
        repository: str,
        digest: str,
        size: int,
        location: str,
        read: Callable[[int, int], AsyncIterator[bytes]],
    ) -> None: ...

    async def put_manifest(
        self, repository: str, reference: str, media_type: str, body: bytes
    ) -> ManifestReceipt: ...

    async def list_referrers(
        self, repository: str, digest: str, limit: int
    ) -> list[dict[str, object]] | None: ...

    async def delete_manifest(self, repository: str, reference: str) -> None: ...


class RemoteRegistries(Protocol):
    def client(self, remote: RemoteEndpoint) -> RemoteRegistry: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ReplicationOptions:
    concurrency: int = 2
    lease_seconds: float = 300.0
    poll_seconds: float = 1.0
    backoff: Backoff = field(default_factory=lambda: Backoff(30.0, 3600.0, 5))
    max_tasks: int = 10_000  # per execution
    max_manifest_bytes: int = 4 << 20
    max_blob_bytes: int = 64 << 30
    # Locks held across nodes (the referrers tag merge); None: within this process only.
    coordination: Coordination | None = None


class TaskError(Exception):
    """A task failed for a reason worth recording; `permanent` ones are not retried."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass(slots=True)
class Progress:
    bytes_copied: int = 0
    blobs_copied: int = 0
    blobs_skipped: int = 0
    referrers: int = 0  # referrers copied along (or found already there)
    tags: list[tuple[str, str]] = field(default_factory=list)  # (tag, digest) now at the target

    def columns(self) -> dict[str, int]:
        return {
            "bytes_copied": self.bytes_copied,
            "blobs_copied": self.blobs_copied,
            "blobs_skipped": self.blobs_skipped,
            "referrers_copied": self.referrers,
        }


def replication_actor(endpoint_id: int) -> Actor:
    """Who writes what a pull brings in. Push rules ignore events of their own endpoint's
    actor, so a pull and a push between the same two registries never loop."""
    return Actor(name=f"replication:{endpoint_id}", kind="system")


def filters_json(filters: Filters) -> dict[str, list[str]]:
    return {
        "repositories": list(filters.repositories),
        "exclude_repositories": list(filters.exclude_repositories),
        "tags": list(filters.tags),
        "exclude_tags": list(filters.exclude_tags),
    }


def rule_filters(rule: RuleRecord) -> Filters:
    data = rule.filters
    return Filters(
        tuple(data.get("repositories", ["**"])),
        tuple(data.get("exclude_repositories", [])),
        tuple(data.get("tags", ["*"])),
        tuple(data.get("exclude_tags", [])),
    )


def rule_mapping(rule: RuleRecord) -> NameMapping:
    return NameMapping(rule.destination_prefix, rule.strip_segments)


def reference_of(tag: str | None, digest: Digest) -> Reference:
    return Reference(tag=tag) if tag is not None else Reference(digest=digest)


def media_type_of(body: bytes) -> str:
    try:
        value = json.loads(body).get("mediaType")
    except (ValueError, AttributeError):
        value = None
    return value if isinstance(value, str) else mt.OCI_MANIFEST


def describe(error: BaseException) -> str:
    if isinstance(error, UpstreamError):
        return f"{error.kind}: {error}"
    if isinstance(error, RegistryError):
        return f"{error.code}: {error.message}"
    return str(error)
