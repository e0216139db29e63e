"""The supply chain of a replicated image: its referrers and cosign's tags travel with it.

Referrers (signatures, SBOMs, attestations, promotion records: every manifest whose `subject`
is the image) are followed recursively (referrers of referrers) and, for an index, also for its
child manifests, as other registries' copy tools do. Each is copied by digest with its
`subject`, after its subject:

- pushing, from the local referrers query; a remote that answers the manifest PUT without an
  `OCI-Subject` header (Distribution 2.8) has no Referrers API, so the referrers tag
  `<alg>-<hex>` there gets an image index of them, merged with what it already lists
  (distribution-spec 1.1, "Pushing Manifests with Subject");
- pulling, from the remote's Referrers API, or its referrers tag when it has no such API.

cosign's legacy tags `<alg>-<hex>.sig`, `.att` and `.sbom` name the image they belong to, so
they are copied with it whatever the rule's tag filter says.

A digest already visited is not followed again, so a cycle (an index that is a referrer of its
own child) ends; the depth and the number of referrers per task are capped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Final

from moorage.domain import mediatypes as mt
from moorage.domain.digest import Digest
from moorage.domain.events import Actor
from moorage.domain.manifest import ParsedManifest, parse_manifest
from moorage.metadata.distribution.replication_store import TaskRecord
from moorage.metadata.registry.registry_records import ReferrerRecord
from moorage.metadata.registry.store import MetadataStore
from moorage.services.distribution.proxy import UpstreamError
from moorage.services.distribution.replication_types import (
    Progress,
    RemoteEndpoint,
    RemoteRegistry,
    ReplicationOptions,
    TaskError,
)
from moorage.services.registry.registry import RegistryService
from moorage.services.threads import Threads

if TYPE_CHECKING:
    from moorage.services.distribution.replication_transfer import Transfer

COSIGN_SUFFIXES: Final = (".sig", ".att", ".sbom")
MAX_REFERRER_DEPTH: Final = 8  # referrers of referrers, this deep
MAX_REFERRERS: Final = 10_000  # per task
_PAGE: Final = 1000


def referrers_tag(digest: str) -> str:
    """The referrers tag schema's tag for `digest`: `sha256:<hex>` → `sha256-<hex>`."""
    return digest.replace(":", "-", 1)


def cosign_tags(digest: str) -> list[str]:
    return [referrers_tag(digest) + suffix for suffix in COSIGN_SUFFIXES]


def subject_of_tag(tag: str) -> str | None:
    """The digest that a referrers tag or a cosign tag names, or None for other tags."""
    base = tag
    for suffix in COSIGN_SUFFIXES:
        if tag.endswith(suffix):
            base = tag[: -len(suffix)]
            break
    algorithm, _, hexadecimal = base.partition("-")
    candidate = f"{algorithm}:{hexadecimal}"
    return candidate if hexadecimal and Digest.is_digest(candidate) else None


def _descriptor(
    digest: str, media_type: str, size: int, artifact_type: str | None, annotations: Any
) -> dict[str, object]:
    descriptor: dict[str, object] = {"mediaType": media_type, "digest": digest, "size": size}
    if artifact_type:
        descriptor["artifactType"] = artifact_type
    if annotations:
        descriptor["annotations"] = annotations
    return descriptor


class Referrers:
    def __init__(
        self,
        transfer: Transfer,
        metadata: MetadataStore,
        registry: RegistryService,
        threads: Threads,
        options: ReplicationOptions,
    ) -> None:
        self._transfer = transfer
        self._metadata = metadata
        self._registry = registry
        self._threads = threads
        self._options = options
        # The referrers tag is read, merged and written back, and the registries that need it
        # have no conditional writes: two tasks merging into one tag at once would lose an
        # entry. One lock per tag in this process, then the deployment's lock across nodes.
        self._tag_locks: dict[tuple[int, str, str], tuple[asyncio.Lock, int]] = {}

    # -- push

    async def push(
        self,
        client: RemoteRegistry,
        remote: RemoteEndpoint,
        task: TaskRecord,
        digest: str,
        media_type: str,
        progress: Progress,
    ) -> None:
        for tag in cosign_tags(digest):
            if tag == task.tag:
                continue
            record = await self._threads.run(self._metadata.resolve_tag, task.source, tag)
            if record is not None:
                await self._transfer.push_manifest(
                    client, remote, task, record.digest, record.media_type, tag, progress
                )
                progress.tags.append((tag, record.digest))
        subjects: deque[tuple[str, str, int]] = deque([(digest, media_type, 0)])
        seen = {digest}
        api: bool | None = None
        while subjects:
            subject, subject_type, depth = subjects.popleft()
            for child, child_type in await self._local_children(subject, subject_type):
                if child not in seen:
                    seen.add(child)
                    subjects.append((child, child_type, depth))
            records = await self._local_referrers(task.source, subject)
            if not records:
                continue
            # With a Referrers API, what the remote lists is there already: no HEAD each (a
            # trust policy there may refuse reading an unsigned referrer by digest).
            listed: set[str] = set()
            if api is not False:
                found = await client.list_referrers(task.destination, subject, MAX_REFERRERS)
                api = found is not None
                listed = {str(entry["digest"]) for entry in found or []}
            descriptors: list[dict[str, object]] = []
            for referrer in records:
                descriptors.append(
                    _descriptor(
                        referrer.digest,
                        referrer.media_type,
                        referrer.size,
                        referrer.artifact_type,
                        referrer.annotations,
                    )
                )
                if referrer.digest in seen:
                    continue
                seen.add(referrer.digest)
                self._count(progress, task)
                if referrer.digest not in listed:
                    receipt = await self._transfer.push_manifest(
                        client, remote, task, referrer.digest, referrer.media_type, None, progress
                    )
                    if receipt is not None and receipt.subject is None:
                        api = False  # no OCI-Subject: the remote ignored the subject
                if depth + 1 < MAX_REFERRER_DEPTH:
                    subjects.append((referrer.digest, referrer.media_type, depth + 1))
            if not api:
                async with self._tag_lock((remote.id, task.destination, subject)):
                    await self._merge_referrers_tag(client, task.destination, subject, descriptors)

    @contextlib.asynccontextmanager
    async def _tag_lock(self, key: tuple[int, str, str]) -> AsyncIterator[None]:
        """Held while one referrers tag is merged; forgotten when nobody holds or awaits it."""
        lock, users = self._tag_locks.get(key, (asyncio.Lock(), 0))
        self._tag_locks[key] = (lock, users + 1)
        try:
            async with lock:
                coordination = self._options.coordination
                if coordination is None:
                    yield
                    return
                remote_id, destination, subject = key
                held = await coordination.lock(f"referrers-tag:{remote_id}:{destination}:{subject}")
                try:
                    yield
                finally:
                    held.release()
        finally:
            lock, users = self._tag_locks[key]
            if users == 1:
                del self._tag_locks[key]
            else:
                self._tag_locks[key] = (lock, users - 1)

    def _count(self, progress: Progress, task: TaskRecord) -> None:
        progress.referrers += 1
        if progress.referrers > MAX_REFERRERS:
            raise TaskError(
                f"{task.source} has more than {MAX_REFERRERS} referrers for one image",
                permanent=True,
            )

    async def _local_children(self, digest: str, media_type: str) -> list[tuple[str, str]]:
        if media_type not in (mt.OCI_INDEX, mt.DOCKER_MANIFEST_LIST):
            return []
        body = await self._threads.run(self._metadata.manifest_body, digest)
        if body is None:
            return []
        manifest = parse_manifest(body, media_type, Digest.parse(digest))
        return [(str(child.digest), child.media_type) for child in manifest.children]

    async def _local_referrers(self, repository: str, subject: str) -> list[ReferrerRecord]:
        found: list[ReferrerRecord] = []
        after: str | None = None
        while len(found) <= MAX_REFERRERS:
            page = await self._threads.run(
                self._metadata.referrers, repository, subject, None, after, _PAGE
            )
            found.extend(page)
            if len(page) < _PAGE:
                break
            after = page[-1].digest
        return found

    async def _merge_referrers_tag(
        self,
        client: RemoteRegistry,
        repository: str,
        subject: str,
        descriptors: list[dict[str, object]],
    ) -> None:
        """Add `descriptors` to the referrers tag's index on the remote, keeping every entry
        it lists already (other tools' referrers among them)."""
        tag = referrers_tag(subject)
        document = await self._referrers_index(client, repository, tag)
        if document is None:
            document = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": []}
        manifests = document["manifests"]
        listed = {entry.get("digest") for entry in manifests if isinstance(entry, dict)}
        added = [entry for entry in descriptors if entry["digest"] not in listed]
        if not added:
            return
        document["manifests"] = [*manifests, *added]
        body = json.dumps(document, separators=(",", ":")).encode()
        await client.put_manifest(repository, tag, mt.OCI_INDEX, body)

    async def _referrers_index(
        self, client: RemoteRegistry, repository: str, tag: str
    ) -> dict[str, Any] | None:
        """The image index under a referrers tag, None when the tag does not exist."""
        try:
            fetched = await client.get_manifest(repository, tag, self._options.max_manifest_bytes)
        except UpstreamError as error:
            if error.kind == "not-found":
                return None
            raise
        try:
            document = json.loads(fetched.body)
        except ValueError:
            document = None
        if (
            not isinstance(document, dict)
            or document.get("mediaType", fetched.media_type) != mt.OCI_INDEX
            or not isinstance(document.get("manifests"), list)
        ):
            raise TaskError(
                f"{repository}:{tag} on the remote is not an image index of referrers; left alone",
                permanent=True,
            )
        return document

    # -- pull

    async def pull(
        self,
        client: RemoteRegistry,
        task: TaskRecord,
        manifest: ParsedManifest,
        progress: Progress,
        actor: Actor,
    ) -> None:
        digest = str(manifest.digest)
        for tag in cosign_tags(digest):
            if tag == task.tag:
                continue
            head = await client.find_manifest(task.source, tag)
            if head is None:
                continue
            local = await self._threads.run(self._metadata.resolve_tag, task.destination, tag)
            if local is not None and head.digest == local.digest:
                progress.tags.append((tag, local.digest))
                continue
            await self._transfer.pull_manifest(client, task, tag, tag, progress, actor)
        subjects: deque[tuple[str, int]] = deque([(digest, 0)])
        seen = {digest}
        for child in manifest.children:
            if str(child.digest) not in seen:
                seen.add(str(child.digest))
                subjects.append((str(child.digest), 0))
        while subjects:
            subject, depth = subjects.popleft()
            for entry in await self._remote_referrers(client, task.source, subject):
                referrer = str(entry["digest"])
                if referrer in seen:
                    continue
                seen.add(referrer)
                self._count(progress, task)
                present = await self._threads.run(
                    self._metadata.resolve_digest, task.destination, referrer
                )
                if present is None:
                    await self._transfer.pull_manifest(
                        client, task, referrer, None, progress, actor
                    )
                if depth + 1 < MAX_REFERRER_DEPTH:
                    subjects.append((referrer, depth + 1))

    async def _remote_referrers(
        self, client: RemoteRegistry, repository: str, subject: str
    ) -> list[dict[str, object]]:
        found = await client.list_referrers(repository, subject, MAX_REFERRERS + 1)
        if found is not None:
            return found
        # No Referrers API: the referrers tag schema, when the remote has the tag.
        document = await self._referrers_index(client, repository, referrers_tag(subject))
        if document is None:
            return []
        entries: list[dict[str, object]] = []
        for entry in document["manifests"]:
            digest = entry.get("digest") if isinstance(entry, dict) else None
            if not isinstance(digest, str) or not Digest.is_digest(digest):
                raise TaskError(
                    f"{repository}:{referrers_tag(subject)} lists an invalid descriptor",
                    permanent=True,
                )
            entries.append(entry)
        return entries
