"""The one path of a pull: a requested name resolved to the source that serves it.

A pull reads from one of three sources, chosen here and nowhere else:

- a local repository: its stored manifests and blobs;
- a proxy-cache project's repository: what is cached, else fetched from the upstream (single
  flight, verified against the digest) while it is streamed to the client;
- a virtual project's repository: its members in order, the first that has it (a member that
  holds a blob wins over a proxy-cache member that would fetch it).

The access decision is made once, at the edge, before this runs (`PullAccess`): which of the
repositories the caller may pull, and where it may bring new content in. Nothing here calls
back into the HTTP layer. A manifest comes back with its bytes (pull policies applied by the
serving repository); a blob comes back as a stored location, a live stream from the upstream,
or, for a HEAD of an uncached blob, the size the upstream states. Later sources (redirects to
object storage, bundles) plug in here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import BinaryIO, Final

from moorage.domain.digest import Digest
from moorage.domain.errors import ErrorCode, RegistryError
from moorage.domain.events import Actor
from moorage.domain.names import Reference, project_of
from moorage.metadata.registry.registry_records import ReferrerRecord
from moorage.services.distribution.proxy import LiveBlob, MayFetch, ProxyCache, ProxyConfig
from moorage.services.distribution.virtual import VirtualConfig
from moorage.services.registry.registry import BlobLocation, FetchedManifest, RegistryService

# A page of a merged tags list holds at most this many tags (each member gives one more, to
# tell whether more follow).
MAX_TAGS_PER_MEMBER: Final = 10_000

_NOT_FOUND: Final = frozenset({ErrorCode.MANIFEST_UNKNOWN, ErrorCode.NAME_UNKNOWN})
_BLOB_NOT_FOUND: Final = frozenset({ErrorCode.BLOB_UNKNOWN, ErrorCode.NAME_UNKNOWN})


class FetchRight(StrEnum):
    """May the caller bring new content into a proxy-cache repository?"""

    ALLOWED = "allowed"
    REFUSED = "refused"
    SIGN_IN = "sign-in"  # anonymous without a token: challenged, so a client may sign in


class SignInRequired(Exception):
    """Fetching needs an identity the anonymous caller may still present (the edge answers
    with a challenge)."""

    def __init__(self, repository: str) -> None:
        super().__init__(f"sign in to fetch {repository}")
        self.repository = repository


@dataclass(frozen=True, slots=True)
class PullAccess:
    """The edge's access decision for one pull.

    `sources`: the repositories that may serve it, in order — the requested repository, or the
    members of a virtual project the caller may pull (the others are skipped as if absent).
    `fetch`: for each proxy-cache repository among them, whether the caller may bring new
    content in.
    """

    repository: str
    actor: Actor
    virtual: VirtualConfig | None
    sources: tuple[str, ...]
    fetch: Mapping[str, FetchRight]

    def may_fetch(self, repository: str) -> MayFetch:
        right = self.fetch.get(repository, FetchRight.REFUSED)

        async def decide(required: bool) -> bool:
            if right is FetchRight.SIGN_IN and required:
                raise SignInRequired(repository)
            return right is FetchRight.ALLOWED

        return decide


class BlobWant(StrEnum):
    """What a blob request needs from an uncached blob."""

    STREAM = "stream"  # the bytes as they arrive (a plain GET, or a range of it)
    HEAD = "head"  # only its size: the upstream is asked with a HEAD
    STORED = "stored"  # the stored copy (conditional requests wait until it is stored)


@dataclass(frozen=True, slots=True)
class StoredBlob:
    repository: str
    location: BlobLocation


@dataclass(frozen=True, slots=True)
class UpstreamBlobSize:
    """An uncached blob's size as the upstream's HEAD states it (nothing was stored)."""

    repository: str
    size: int


BlobSource = StoredBlob | LiveBlob | UpstreamBlobSize


class PullService:
    def __init__(self, registry: RegistryService, cache: ProxyCache) -> None:
        self._registry = registry
        self._cache = cache

    async def _proxy_of(self, repository: str) -> ProxyConfig | None:
        return await self._cache.config_for(project_of(repository))

    # -- manifests

    async def manifest(
        self,
        access: PullAccess,
        reference: Reference,
        accepted: frozenset[str] | None,
        *,
        count_pull: bool,
    ) -> FetchedManifest:
        """The manifest from the first source that has it (or can fetch it)."""
        virtual = access.virtual is not None
        failure: RegistryError | None = None
        for target in access.sources:
            proxy = await self._proxy_of(target)
            if proxy is not None:
                try:
                    await self._cache.ensure_manifest(
                        proxy, target, reference, access.actor, access.may_fetch(target)
                    )
                except RegistryError as error:
                    if not virtual:
                        raise
                    # Not here, not fetchable by this caller, or the upstream is down: the
                    # next member may have it.
                    if error.code not in _NOT_FOUND and failure is None:
                        failure = error
                    continue
            try:
                return await self._registry.get_manifest(
                    target, reference, accepted, access.actor, count_pull=count_pull
                )
            except RegistryError as error:
                if not virtual or error.code not in _NOT_FOUND:
                    raise  # found, but refused (a pull policy): that answer stands
        if failure is not None:
            raise failure
        raise self._missing(access, ErrorCode.MANIFEST_UNKNOWN, str(reference))

    # -- blobs

    async def blob(self, access: PullAccess, digest: Digest, want: BlobWant) -> BlobSource:
        """Where the blob comes from: stored, streamed from an upstream, or (HEAD) only sized."""
        if access.virtual is not None:
            # A member that holds the blob wins over a proxy-cache member that would fetch it.
            for target in access.sources:
                try:
                    return StoredBlob(target, await self._registry.locate_blob(target, digest))
                except RegistryError as error:
                    if error.code not in _BLOB_NOT_FOUND:
                        raise
        failure: RegistryError | None = None
        for target in access.sources:
            proxy = await self._proxy_of(target)
            if proxy is None:
                if access.virtual is None:
                    return StoredBlob(target, await self._registry.locate_blob(target, digest))
                continue
            try:
                found = await self._from_proxy(proxy, access, target, digest, want)
            except RegistryError as error:
                if access.virtual is None:
                    raise
                if error.code not in _BLOB_NOT_FOUND and failure is None:
                    failure = error
                continue
            if found is not None:
                return found
            return StoredBlob(target, await self._registry.locate_blob(target, digest))
        if failure is not None:
            raise failure
        raise self._missing(access, ErrorCode.BLOB_UNKNOWN, f"blob {digest}")

    async def _from_proxy(
        self,
        proxy: ProxyConfig,
        access: PullAccess,
        target: str,
        digest: Digest,
        want: BlobWant,
    ) -> LiveBlob | UpstreamBlobSize | None:
        """None once the blob is stored in `target`; else what the upstream provides."""
        may_fetch = access.may_fetch(target)
        if want is BlobWant.HEAD:
            size = await self._cache.head_blob(proxy, target, digest, access.actor, may_fetch)
            return None if size is None else UpstreamBlobSize(target, size)
        return await self._cache.ensure_blob(
            proxy, target, digest, access.actor, may_fetch, stream=want is BlobWant.STREAM
        )

    async def open_blob(self, location: BlobLocation) -> BinaryIO:
        """A reader for a stored blob: its local file (sent with sendfile), or the driver's
        stream. BLOB_UNKNOWN when its bytes are gone: the blob was unreferenced, and garbage
        collection removed it between the lookup and this open."""
        try:
            return await self._registry.open_stored(location)
        except FileNotFoundError:
            raise RegistryError(
                ErrorCode.BLOB_UNKNOWN, f"blob {location.digest} is no longer stored"
            ) from None

    # -- listings

    async def tags(
        self, access: PullAccess, last: str | None, limit: int
    ) -> tuple[list[str], bool]:
        """One page of tags; of a virtual project, the sorted union of its readable members'."""
        if access.virtual is None:
            # Also with n=0 the query runs: the repository must exist.
            found = await self._registry.list_tags(access.repository, last, limit + 1)
            return found[:limit], len(found) > limit
        merged: set[str] = set()
        present = False
        # One past the page from each member tells whether more follow.
        limit = min(limit, MAX_TAGS_PER_MEMBER)
        for target in access.sources:
            try:
                tags = await self._registry.list_tags(target, last, limit + 1)
            except RegistryError as error:
                if error.code in _NOT_FOUND:
                    continue
                raise
            present = True
            merged.update(tags)
        if not present:
            raise RegistryError(
                ErrorCode.NAME_UNKNOWN,
                f"repository {access.repository} is in no member of {access.virtual.project}"
                " you may pull",
            )
        ordered = sorted(merged)
        return ordered[:limit], len(ordered) > limit

    async def referrers(
        self,
        access: PullAccess,
        subject: Digest,
        artifact_type: str | None,
        last: str | None,
        limit: int,
    ) -> list[ReferrerRecord]:
        """Referrers of `subject`; of a virtual project, from the first readable member that
        has any."""
        source: str | None = access.repository
        if access.virtual is not None:
            source = None
            for target in access.sources:
                if await self._registry.referrers(target, subject, artifact_type, None, 1):
                    source = target
                    break
        if source is None:
            return []
        return await self._registry.referrers(source, subject, artifact_type, last, limit)

    @staticmethod
    def _missing(access: PullAccess, code: ErrorCode, what: str) -> RegistryError:
        if access.virtual is None:
            return RegistryError(code, f"{what} is not in {access.repository}")
        return RegistryError(
            code,
            f"{access.repository}: no member of {access.virtual.project} you may pull has {what}",
        )
