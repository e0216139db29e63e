"""Copying one artifact between this registry and a remote one.

Pushing copies each blob the remote lacks (HEAD first, a cross-repository mount when this
process pushed the blob to another repository of the same remote before, else an upload
streamed from local storage), then the manifests (an index's children first), then the tag.
Pulling fetches the manifests and blobs, verifying every digest, and stores them through the
upload and registry services as a system actor, so events fire and the audit log sees them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from typing import Final

from moorage.domain.digest import Digest
from moorage.domain.events import Actor
from moorage.domain.manifest import ParsedManifest, parse_manifest
from moorage.domain.names import Reference
from moorage.domain.replication import EndpointKind
from moorage.metadata.distribution.replication_store import TaskRecord
from moorage.metadata.registry.store import MetadataStore
from moorage.services.distribution.keyed_locks import KeyedLocks
from moorage.services.distribution.proxy import UpstreamError
from moorage.services.distribution.replication_referrers import Referrers
from moorage.services.distribution.replication_types import (
    MAX_DEPTH,
    ManifestReceipt,
    Progress,
    RemoteEndpoint,
    RemoteRegistry,
    ReplicationOptions,
    TaskError,
    media_type_of,
    reference_of,
    replication_actor,
)
from moorage.services.registry.registry import RegistryService
from moorage.services.registry.uploads import UploadService
from moorage.services.threads import Threads
from moorage.storage.base import StorageDriver

_READ_BYTES: Final = 1 << 20
_MOUNT_MEMORY: Final = 10_000
_MAX_TAGS_CHECKED: Final = 1000  # before deleting by digest, for other tags of the manifest


class Transfer:
    def __init__(
        self,
        metadata: MetadataStore,
        registry: RegistryService,
        uploads: UploadService,
        storage: StorageDriver,
        threads: Threads,
        options: ReplicationOptions,
    ) -> None:
        self._metadata = metadata
        self._registry = registry
        self._uploads = uploads
        self._storage = storage
        self._threads = threads
        self._options = options
        self._mounts: OrderedDict[tuple[int, str], str] = OrderedDict()
        self._blob_locks = KeyedLocks(options.coordination, "replication-blob")
        self._referrers = Referrers(self, metadata, registry, threads, options)

    # -- push

    async def push(
        self, client: RemoteRegistry, remote: RemoteEndpoint, task: TaskRecord, progress: Progress
    ) -> str:
        if task.tag is not None:
            record = await self._threads.run(self._metadata.resolve_tag, task.source, task.tag)
        else:
            assert task.digest is not None
            record = await self._threads.run(
                self._metadata.resolve_digest, task.source, task.digest
            )
        if record is None:
            raise TaskError(
                f"{task.source}:{task.tag or task.digest} is no longer here", permanent=True
            )
        await self.push_manifest(
            client, remote, task, record.digest, record.media_type, task.tag, progress
        )
        if task.tag is not None:
            progress.tags.append((task.tag, record.digest))
        await self._referrers.push(client, remote, task, record.digest, record.media_type, progress)
        return record.digest

    async def push_manifest(
        self,
        client: RemoteRegistry,
        remote: RemoteEndpoint,
        task: TaskRecord,
        digest: str,
        media_type: str,
        tag: str | None,
        progress: Progress,
        depth: int = 0,
    ) -> ManifestReceipt | None:
        """Send a manifest and what it needs; the remote's receipt, or None when the remote
        already held it."""
        body = await self._threads.run(self._metadata.manifest_body, digest)
        if body is None:
            raise TaskError(f"manifest {digest} has no stored content", permanent=True)
        manifest = parse_manifest(body, media_type, Digest.parse(digest))
        present = await client.find_manifest(task.destination, tag or digest)
        if present is not None and present.digest == digest:
            return None  # the remote already holds it (under this tag): nothing to send
        if manifest.is_index:
            if depth >= MAX_DEPTH:
                raise TaskError(f"index {digest} nests deeper than {MAX_DEPTH}", permanent=True)
            for child in manifest.children:
                await self.push_manifest(
                    client,
                    remote,
                    task,
                    str(child.digest),
                    child.media_type,
                    None,
                    progress,
                    depth + 1,
                )
        else:
            for blob in manifest.required_blobs():
                await self._push_blob(client, remote, task, blob, progress)
        return await client.put_manifest(task.destination, tag or digest, media_type, body)

    async def _push_blob(
        self,
        client: RemoteRegistry,
        remote: RemoteEndpoint,
        task: TaskRecord,
        digest: Digest,
        progress: Progress,
    ) -> None:
        # Two tasks sending one blob to one remote repository at once would race there
        # (Distribution may then refuse both uploads): the second waits, then finds it.
        async with self._blob_locks.held((remote.id, task.destination, str(digest))):
            await self._send_blob(client, remote, task, digest, progress)

    async def _send_blob(
        self,
        client: RemoteRegistry,
        remote: RemoteEndpoint,
        task: TaskRecord,
        digest: Digest,
        progress: Progress,
    ) -> None:
        text = str(digest)
        if await client.has_blob(task.destination, text):
            progress.blobs_skipped += 1
            return
        size = await self._threads.run(self._metadata.blob_size_in_repository, task.source, text)
        if size is None:
            raise TaskError(f"blob {text} is not in {task.source}", permanent=True)
        key = (remote.id, text)
        seen_in = self._mounts.get(key)
        mount_from = seen_in if seen_in is not None and seen_in != task.destination else None
        location = await client.start_upload(task.destination, text, mount_from)
        if location is None:
            progress.blobs_skipped += 1
        else:
            try:
                await client.upload_blob(
                    task.destination, text, size, location, self._reader(digest)
                )
            except UpstreamError as error:
                if error.kind != "invalid":
                    raise
                # Stored blobs are verified when written, so a remote that says these bytes do
                # not match their digest lost them itself: Distribution does when two uploads
                # of one blob finish at once. That passes; try again later.
                raise TaskError(f"the remote refused blob {text}: {error}") from None
            progress.blobs_copied += 1
            progress.bytes_copied += size
        self._mounts[key] = task.destination
        self._mounts.move_to_end(key)
        while len(self._mounts) > _MOUNT_MEMORY:
            self._mounts.popitem(last=False)

    def _reader(self, digest: Digest) -> Callable[[int, int], AsyncIterator[bytes]]:
        """Streams a range of a stored blob, a megabyte at a time, never the whole blob."""
        threads, storage = self._threads, self._storage

        async def read(offset: int, length: int) -> AsyncIterator[bytes]:
            handle = await threads.run(storage.open_blob, digest)
            try:
                await threads.run(handle.seek, offset)
                remaining = length
                while remaining > 0:
                    chunk = await threads.run(handle.read, min(_READ_BYTES, remaining))
                    if not chunk:
                        raise OSError(f"stored blob {digest} is shorter than recorded")
                    remaining -= len(chunk)
                    yield chunk
            finally:
                await threads.run(handle.close)

        return read

    # -- pull

    async def pull(
        self, client: RemoteRegistry, remote: RemoteEndpoint, task: TaskRecord, progress: Progress
    ) -> str:
        reference = task.tag or task.digest
        assert reference is not None
        actor = replication_actor(remote.id)
        if task.tag is not None:
            # A HEAD first: an unchanged tag costs no download (and no pull on rate-limited
            # registries), and stores nothing again.
            head = await client.find_manifest(task.source, task.tag)
            local = await self._threads.run(self._metadata.resolve_tag, task.destination, task.tag)
            if head is not None and local is not None and head.digest == local.digest:
                progress.tags.append((task.tag, local.digest))
                # Unchanged, but signatures may have been added since.
                body = await self._threads.run(self._metadata.manifest_body, local.digest)
                if body is not None:
                    parsed = parse_manifest(body, local.media_type, Digest.parse(local.digest))
                    await self._referrers.pull(client, task, parsed, progress, actor)
                return local.digest
        manifest = await self.pull_manifest(client, task, reference, task.tag, progress, actor)
        await self._referrers.pull(client, task, manifest, progress, actor)
        return str(manifest.digest)

    async def pull_manifest(
        self,
        client: RemoteRegistry,
        task: TaskRecord,
        reference: str,
        tag: str | None,
        progress: Progress,
        actor: Actor,
    ) -> ParsedManifest:
        """Fetch a remote manifest and what it needs, and store it here (under `tag`)."""
        manifest, body = await self.fetch_manifest(client, task.source, reference)
        await self._store_tree(client, task, manifest, progress, actor, 0)
        await self._registry.put_manifest(
            task.destination,
            reference_of(tag, manifest.digest),
            manifest.media_type,
            body,
            actor,
        )
        if tag is not None:
            progress.tags.append((tag, str(manifest.digest)))
        return manifest

    async def fetch_manifest(
        self, client: RemoteRegistry, repository: str, reference: str
    ) -> tuple[ParsedManifest, bytes]:
        """The remote's manifest, verified against the digest asked for or announced."""
        fetched = await client.get_manifest(repository, reference, self._options.max_manifest_bytes)
        by_digest = Digest.is_digest(reference)
        algorithm = Digest.parse(reference).algorithm if by_digest else "sha256"
        digest = Digest.of(fetched.body, algorithm)
        if by_digest and str(digest) != reference:
            raise TaskError(f"the remote's manifest does not match {reference}", permanent=True)
        if fetched.digest and fetched.digest != str(digest):
            raise TaskError(
                f"the remote's manifest {repository}:{reference} arrived as {digest}, not"
                f" {fetched.digest}",
                permanent=True,
            )
        media_type = fetched.media_type or media_type_of(fetched.body)
        return parse_manifest(fetched.body, media_type, digest), fetched.body

    async def _store_tree(
        self,
        client: RemoteRegistry,
        task: TaskRecord,
        manifest: ParsedManifest,
        progress: Progress,
        actor: Actor,
        depth: int,
    ) -> None:
        if manifest.is_index:
            if depth >= MAX_DEPTH:
                raise TaskError(
                    f"index {manifest.digest} nests deeper than {MAX_DEPTH}", permanent=True
                )
            for child in manifest.children:
                child_digest = str(child.digest)
                present = await self._threads.run(
                    self._metadata.resolve_digest, task.destination, child_digest
                )
                if present is not None:
                    continue
                parsed, body = await self.fetch_manifest(client, task.source, child_digest)
                await self._store_tree(client, task, parsed, progress, actor, depth + 1)
                await self._registry.put_manifest(
                    task.destination,
                    reference_of(None, parsed.digest),
                    parsed.media_type,
                    body,
                    actor,
                )
            return
        for blob in manifest.required_blobs():
            await self._pull_blob(client, task, blob, progress, actor)

    async def _pull_blob(
        self,
        client: RemoteRegistry,
        task: TaskRecord,
        digest: Digest,
        progress: Progress,
        actor: Actor,
    ) -> None:
        text = str(digest)
        present = await self._threads.run(
            self._metadata.blob_size_in_repository, task.destination, text
        )
        if present is not None:
            progress.blobs_skipped += 1
            return
        source = await client.open_blob(task.source, text)
        try:
            if source.size is not None and source.size > self._options.max_blob_bytes:
                raise TaskError(f"blob {text} exceeds the blob size limit", permanent=True)
            size = await self._uploads.monolithic(
                task.destination, digest, source.size, source.chunks(), actor
            )
        finally:
            await source.close()
        progress.blobs_copied += 1
        progress.bytes_copied += size

    # -- deletions

    async def delete_remote(
        self, client: RemoteRegistry, remote: RemoteEndpoint, task: TaskRecord
    ) -> None:
        target = task.digest
        if task.tag is not None:
            # Distribution deletes manifests only by digest: delete what the tag points at,
            # and only when it is still what was deleted here.
            head = await client.find_manifest(task.destination, task.tag)
            if head is None:
                raise TaskError(
                    f"{task.destination}:{task.tag} is not on the remote", permanent=True
                )
            if task.digest and head.digest and head.digest != task.digest:
                raise TaskError(
                    f"the remote's {task.destination}:{task.tag} is {head.digest}, not the deleted"
                    f" {task.digest}; left alone",
                    permanent=True,
                )
            if remote.kind == EndpointKind.MOORAGE:
                await client.delete_manifest(task.destination, task.tag)  # the tag only
                return
            target = head.digest or task.digest
            if target is not None:
                await self._only_tag(client, task.destination, task.tag, target)
        if target is None:
            raise TaskError("nothing identifies what to delete", permanent=True)
        await client.delete_manifest(task.destination, target)

    async def _only_tag(
        self, client: RemoteRegistry, repository: str, tag: str, digest: str
    ) -> None:
        """Deleting by digest removes every tag of the manifest: refuse when another tag there
        names it too, since that tag may not be ours."""
        tags = await client.list_tags(repository, _MAX_TAGS_CHECKED + 1)
        if len(tags) > _MAX_TAGS_CHECKED:
            raise TaskError(
                f"{repository} has more than {_MAX_TAGS_CHECKED} tags on the remote: cannot"
                f" check that only {tag} names {digest}; left alone",
                permanent=True,
            )
        for other in tags:
            if other == tag:
                continue
            head = await client.find_manifest(repository, other)
            if head is not None and head.digest == digest:
                raise TaskError(
                    f"{digest} is also tagged {other} on the remote, and the remote deletes"
                    f" only by digest; left alone",
                    permanent=True,
                )

    async def delete_local(self, remote: RemoteEndpoint, task: TaskRecord) -> None:
        """A pull rule's mirrored deletion: the local tag goes, if it still names what the rule
        brought in."""
        assert task.tag is not None
        record = await self._threads.run(self._metadata.resolve_tag, task.destination, task.tag)
        if record is None:
            return  # already gone
        if task.digest is not None and record.digest != task.digest:
            raise TaskError(
                f"{task.destination}:{task.tag} is {record.digest} here, not the replicated"
                f" {task.digest}; left alone",
                permanent=True,
            )
        await self._registry.delete_manifest(
            task.destination, Reference(tag=task.tag), replication_actor(remote.id)
        )
