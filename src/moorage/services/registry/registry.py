"""Manifests, blobs, tags, discovery: the registry's use cases, free of HTTP and SQL."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from moorage.domain import mediatypes as mt
from moorage.domain.digest import Digest
from moorage.domain.errors import ErrorCode, RegistryError
from moorage.domain.events import Actor, EventKind, RegistryEvent, policy_denied
from moorage.domain.manifest import ParsedManifest, parse_manifest
from moorage.domain.names import Reference, project_of
from moorage.domain.negotiation import DEFAULT_PLATFORM, is_acceptable
from moorage.domain.policy import DecisionPoint, PolicyContext, PolicySet
from moorage.domain.quotas import QuotaExceededError
from moorage.metadata.registry.registry_records import (
    ManifestLinks,
    ManifestRecord,
    MissingReferencesError,
    PreconditionFailedError,
    ReferrerRecord,
    StillReferencedError,
    TagPrecondition,
)
from moorage.metadata.registry.store import MetadataStore
from moorage.services.cache import DigestCache
from moorage.services.events import EventBus
from moorage.services.threads import Threads
from moorage.storage.base import StorageDriver

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class BlobLocation:
    digest: Digest
    size: int
    path: Path | None  # a local file for zero-copy serving, when the driver has one


@dataclass(frozen=True, slots=True)
class FetchedManifest:
    record: ManifestRecord
    body: bytes


# How often a write is checked again when what its checks read changed before it committed.
_DECISION_ATTEMPTS = 3


class ObservedState:
    """The repository's current state for policy checks (`RepositoryState`), read on first use.

    It remembers what it read, so the write that follows can insist that it still holds.
    """

    def __init__(
        self,
        metadata: MetadataStore,
        threads: Threads,
        repository: str,
        tag: str | None,
        digest: str | None,
    ) -> None:
        self._metadata = metadata
        self._threads = threads
        self._repository = repository
        self._tag = tag
        self._digest = digest
        self._tag_read = False
        self._tag_digest: str | None = None
        self._manifest_tags: tuple[str, ...] | None = None

    async def tag_digest(self) -> str | None:
        if not self._tag_read and self._tag is not None:
            record = await self._threads.run(
                self._metadata.resolve_tag, self._repository, self._tag
            )
            self._tag_digest = record.digest if record is not None else None
            self._tag_read = True
        return self._tag_digest

    async def manifest_tags(self) -> tuple[str, ...]:
        if self._manifest_tags is None:
            self._manifest_tags = (
                tuple(
                    await self._threads.run(
                        self._metadata.manifest_tags, self._repository, self._digest
                    )
                )
                if self._digest is not None
                else ()
            )
        return self._manifest_tags

    def tag_precondition(self) -> TagPrecondition | None:
        """What the tag must still point at when written, if a check looked at it."""
        return TagPrecondition(self._tag_digest) if self._tag_read else None

    def expected_tags(self) -> tuple[str, ...] | None:
        """The manifest's tags as a check saw them, if one looked."""
        return self._manifest_tags


class RegistryService:
    def __init__(
        self,
        storage: StorageDriver,
        metadata: MetadataStore,
        threads: Threads,
        events: EventBus,
        policies: PolicySet,
        *,
        max_manifest_bytes: int,
        manifest_cache_bytes: int,
    ) -> None:
        self._storage = storage
        self._metadata = metadata
        self._threads = threads
        self._events = events
        self._policies = policies
        self.max_manifest_bytes = max_manifest_bytes
        self._bodies = DigestCache(manifest_cache_bytes)

    # -- policy

    async def _enforce(self, context: PolicyContext) -> None:
        denials = await self._policies.evaluate(context)
        if not denials:
            return
        resource = context.repository
        if context.tag is not None:
            resource += f":{context.tag}"
        elif context.digest is not None:
            resource += f"@{context.digest}"
        for denial in denials:
            self._events.publish(
                policy_denied(
                    context.actor,
                    project_of(context.repository),
                    resource,
                    point=str(context.point),
                    policy=denial.policy,
                    reason=denial.reason,
                )
            )
        raise RegistryError(ErrorCode.DENIED, "; ".join(d.reason for d in denials))

    def _state(self, repository: str, tag: str | None, digest: str | None) -> ObservedState:
        return ObservedState(self._metadata, self._threads, repository, tag, digest)

    # -- blobs

    async def locate_blob(self, repository: str, digest: Digest) -> BlobLocation:
        size = await self._threads.run(
            self._metadata.blob_size_in_repository, repository, str(digest)
        )
        if size is None:
            raise RegistryError(ErrorCode.BLOB_UNKNOWN, f"blob {digest} is not in {repository}")
        return BlobLocation(digest, size, self._storage.local_path(digest))

    async def open_blob(self, digest: Digest) -> BinaryIO:
        return await self._threads.run(self._storage.open_blob, digest)

    async def open_stored(self, location: BlobLocation) -> BinaryIO:
        """The blob's local file when it has one, else the driver's stream of it."""
        if location.path is not None:
            return await self._threads.run(_open_file, location.path)
        return await self.open_blob(location.digest)

    async def mount_blob(
        self, target: str, source: str, digest: Digest, actor: Actor
    ) -> int | None:
        await self._enforce(PolicyContext(DecisionPoint.PUSH_BLOB, target, actor, str(digest)))
        try:
            size = await self._threads.run(self._metadata.mount_blob, source, target, str(digest))
        except QuotaExceededError as error:
            self._events.publish(error.denied_event(actor, target, "push:blob"))
            raise
        if size is not None:
            self._events.publish(
                RegistryEvent(EventKind.BLOB_MOUNTED, target, str(digest), size=size, actor=actor)
            )
        return size

    async def authorize_upload(self, repository: str, actor: Actor) -> None:
        """The push:blob checks for a new upload session (DENIED when a policy refuses)."""
        await self._enforce(PolicyContext(DecisionPoint.PUSH_BLOB, repository, actor))

    async def delete_blob(self, repository: str, digest: Digest, actor: Actor) -> None:
        await self._enforce(
            PolicyContext(DecisionPoint.DELETE_BLOB, repository, actor, str(digest))
        )
        try:
            removed = await self._threads.run(self._metadata.unlink_blob, repository, str(digest))
        except StillReferencedError as error:
            raise RegistryError(
                ErrorCode.DENIED,
                f"blob {digest} is still referenced by manifest {error.by[0]}; delete the manifest"
                " first",
                detail={"referencedBy": error.by},
                status=409,
            ) from None
        if not removed:
            raise RegistryError(ErrorCode.BLOB_UNKNOWN, f"blob {digest} is not in {repository}")
        self._events.publish(
            RegistryEvent(EventKind.BLOB_DELETED, repository, str(digest), actor=actor)
        )

    # -- manifests

    async def _resolve(self, repository: str, reference: Reference) -> ManifestRecord:
        if reference.digest is not None:
            record = await self._threads.run(
                self._metadata.resolve_digest, repository, str(reference.digest)
            )
        else:
            assert reference.tag is not None
            record = await self._threads.run(self._metadata.resolve_tag, repository, reference.tag)
        if record is None:
            raise RegistryError(
                ErrorCode.MANIFEST_UNKNOWN, f"manifest {reference} is not in {repository}"
            )
        return record

    async def _body(self, digest: str) -> bytes:
        body = self._bodies.get(digest)
        if body is None:
            body = await self._threads.run(self._metadata.manifest_body, digest)
            if body is None:
                raise RegistryError(ErrorCode.MANIFEST_UNKNOWN, f"manifest {digest} has no content")
            self._bodies.put(digest, body)
        return body

    async def read_manifest(self, repository: str, digest: Digest) -> FetchedManifest:
        """A manifest for the registry's own readers (SBOM export): no pull policy, no pull
        counted. Raises MANIFEST_UNKNOWN when the repository does not hold it."""
        record = await self._resolve(repository, Reference(digest=digest))
        return FetchedManifest(record, await self._body(record.digest))

    async def get_manifest(
        self,
        repository: str,
        reference: Reference,
        accepted: frozenset[str] | None,
        actor: Actor,
        *,
        count_pull: bool,
    ) -> FetchedManifest:
        record = await self._resolve(repository, reference)
        body = await self._body(record.digest)
        if not is_acceptable(record.media_type, accepted):
            record, body = await self._negotiate(repository, record, body, accepted)
        await self._enforce(
            PolicyContext(
                DecisionPoint.PULL_MANIFEST,
                repository,
                actor,
                record.digest,
                reference.tag,
                record.media_type,
            )
        )
        if count_pull:
            self._events.publish(
                RegistryEvent(
                    EventKind.MANIFEST_PULLED,
                    repository,
                    record.digest,
                    reference.tag,
                    record.media_type,
                    record.size,
                    actor,
                )
            )
        return FetchedManifest(record, body)

    async def _negotiate(
        self, repository: str, record: ManifestRecord, body: bytes, accepted: frozenset[str] | None
    ) -> tuple[ManifestRecord, bytes]:
        """Serve an index's default-platform child to clients that cannot read indexes."""
        if record.media_type in mt.INDEXES:
            for child in json.loads(body).get("manifests", []):
                platform = child.get("platform") or {}
                if (platform.get("os"), platform.get("architecture")) == DEFAULT_PLATFORM and (
                    is_acceptable(child.get("mediaType", ""), accepted)
                ):
                    child_record = await self._resolve(
                        repository, Reference(digest=Digest.parse(child["digest"]))
                    )
                    return child_record, await self._body(child_record.digest)
        raise RegistryError(
            ErrorCode.MANIFEST_UNKNOWN,
            f"manifest is {record.media_type}, which the request's Accept header does not allow",
        )

    async def put_manifest(
        self, repository: str, reference: Reference, content_type: str, body: bytes, actor: Actor
    ) -> ParsedManifest:
        if len(body) > self.max_manifest_bytes:
            raise manifest_too_large(self.max_manifest_bytes)
        algorithm = reference.digest.algorithm if reference.digest is not None else "sha256"
        digest = Digest.of(body, algorithm)
        if reference.digest is not None and reference.digest != digest:
            raise RegistryError(
                ErrorCode.DIGEST_INVALID,
                f"manifest content has digest {digest}, not {reference.digest}",
            )
        manifest = parse_manifest(body, content_type, digest)
        for _ in range(_DECISION_ATTEMPTS):
            state = self._state(repository, reference.tag, str(digest))
            await self._enforce(
                PolicyContext(
                    DecisionPoint.PUSH_MANIFEST,
                    repository,
                    actor,
                    str(digest),
                    reference.tag,
                    manifest.media_type,
                    state,
                )
            )
            try:
                await self._threads.run(
                    self._metadata.put_manifest,
                    repository,
                    manifest,
                    body,
                    reference.tag,
                    tag_precondition=state.tag_precondition(),
                )
            except PreconditionFailedError:
                continue  # the tag moved while the push was checked: check again
            except QuotaExceededError as error:
                self._events.publish(error.denied_event(actor, repository, "push:manifest"))
                raise
            except MissingReferencesError as error:
                missing = error.blobs + error.manifests
                raise RegistryError(
                    ErrorCode.MANIFEST_BLOB_UNKNOWN,
                    f"manifest references {len(missing)} unknown blob(s) or manifest(s), first"
                    f" {missing[0]}",
                    detail={"blobs": error.blobs, "manifests": error.manifests},
                ) from None
            break
        else:
            raise _changed_meanwhile(f"tag {reference.tag}")
        self._bodies.put(str(digest), body)
        self._events.publish(
            RegistryEvent(
                EventKind.MANIFEST_PUSHED,
                repository,
                str(digest),
                reference.tag,
                manifest.media_type,
                manifest.size,
                actor,
            )
        )
        return manifest

    async def link_manifests(
        self,
        links: ManifestLinks,
        top: ManifestRecord,
        actor: Actor,
        write: Callable[[ManifestLinks], T],
    ) -> T:
        """Make manifests of one repository part of another (promotion): no byte is copied.

        The promote checks decide for `links.guarded_tag` pointing at `top` (immutable tags
        apply); `write` stores the links (`MetadataStore.link_manifests`, or a store that
        commits more in the same transaction) and is re-run after deciding again if the tag
        moved meanwhile.
        """
        for _ in range(_DECISION_ATTEMPTS):
            state = self._state(links.target, links.guarded_tag, top.digest)
            await self._enforce(
                PolicyContext(
                    DecisionPoint.PROMOTE,
                    links.target,
                    actor,
                    top.digest,
                    links.guarded_tag,
                    top.media_type,
                    state,
                )
            )
            guarded = dataclasses.replace(links, precondition=state.tag_precondition())
            try:
                result = await self._threads.run(write, guarded)
            except PreconditionFailedError:
                continue
            except QuotaExceededError as error:
                self._events.publish(error.denied_event(actor, links.target, "promote"))
                raise
            except MissingReferencesError as error:
                missing = error.blobs + error.manifests
                raise RegistryError(
                    ErrorCode.MANIFEST_BLOB_UNKNOWN,
                    f"{links.source} does not hold everything {top.digest} needs"
                    f" ({len(missing)} missing, first {missing[0] if missing else '?'})",
                    detail={"blobs": error.blobs, "manifests": error.manifests},
                ) from None
            break
        else:
            raise _changed_meanwhile(f"tag {links.guarded_tag}")
        self._events.publish(
            RegistryEvent(
                EventKind.MANIFEST_PUSHED,
                links.target,
                top.digest,
                links.guarded_tag,
                top.media_type,
                top.size,
                actor,
            )
        )
        return result

    async def delete_manifest(self, repository: str, reference: Reference, actor: Actor) -> None:
        if reference.tag is not None:
            await self._enforce(
                PolicyContext(DecisionPoint.DELETE_TAG, repository, actor, tag=reference.tag)
            )
            digest = await self._threads.run(self._metadata.delete_tag, repository, reference.tag)
            if digest is None:
                raise RegistryError(ErrorCode.MANIFEST_UNKNOWN, f"tag {reference.tag} not found")
            self._events.publish(
                RegistryEvent(EventKind.TAG_DELETED, repository, digest, reference.tag, actor=actor)
            )
            return
        assert reference.digest is not None
        digest_text = str(reference.digest)
        for _ in range(_DECISION_ATTEMPTS):
            state = self._state(repository, None, digest_text)
            await self._enforce(
                PolicyContext(
                    DecisionPoint.DELETE_MANIFEST, repository, actor, digest_text, state=state
                )
            )
            try:
                tags = await self._threads.run(
                    self._metadata.delete_manifest,
                    repository,
                    digest_text,
                    expected_tags=state.expected_tags(),
                )
            except PreconditionFailedError:
                continue  # the manifest was tagged or untagged meanwhile: check again
            except StillReferencedError as error:
                raise RegistryError(
                    ErrorCode.DENIED,
                    f"manifest {digest_text} is a child of index {error.by[0]}; delete the index"
                    " first",
                    detail={"referencedBy": error.by},
                    status=409,
                ) from None
            break
        else:
            raise _changed_meanwhile(f"the tags of manifest {digest_text}")
        if tags is None:
            raise RegistryError(ErrorCode.MANIFEST_UNKNOWN, f"manifest {digest_text} not found")
        self._events.publish(
            RegistryEvent(EventKind.MANIFEST_DELETED, repository, digest_text, actor=actor)
        )

    # -- discovery

    async def list_tags(self, repository: str, last: str | None, limit: int) -> list[str]:
        tags = await self._threads.run(self._metadata.list_tags, repository, last, limit)
        if tags is None:
            raise RegistryError(ErrorCode.NAME_UNKNOWN, f"repository {repository} not found")
        return tags

    async def list_repositories(self, last: str | None, limit: int) -> list[str]:
        return await self._threads.run(self._metadata.list_repositories, last, limit)

    async def referrers(
        self,
        repository: str,
        subject: Digest,
        artifact_type: str | None,
        after: str | None,
        limit: int,
    ) -> list[ReferrerRecord]:
        return await self._threads.run(
            self._metadata.referrers, repository, str(subject), artifact_type, after, limit
        )


def _changed_meanwhile(what: str) -> RegistryError:
    return RegistryError(
        ErrorCode.DENIED,
        f"{what} kept changing while the request was checked; try again",
        status=409,
    )


def manifest_too_large(limit: int) -> RegistryError:
    return RegistryError(
        ErrorCode.MANIFEST_INVALID, f"manifests are limited to {limit} bytes", status=413
    )


def referrers_index(records: list[ReferrerRecord]) -> dict[str, Any]:
    descriptors: list[dict[str, Any]] = []
    for record in records:
        descriptor: dict[str, Any] = {
            "mediaType": record.media_type,
            "digest": record.digest,
            "size": record.size,
        }
        if record.artifact_type:
            descriptor["artifactType"] = record.artifact_type
        if record.annotations:
            descriptor["annotations"] = record.annotations
        descriptors.append(descriptor)
    return {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": descriptors}


def _open_file(path: Path) -> BinaryIO:
    return path.open("rb")
