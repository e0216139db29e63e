"""Replication: remote registry endpoints, rules, and the engine that runs them.

Administrators register remote registries (their credentials sealed with AES-GCM under a
server secret, never returned, logged or audited) and rules that push local repositories to a
remote or pull remote repositories here (`moorage.domain.replication`). A run of a rule is an
execution with one task per artifact (repository + tag), kept in the database:

- push events queue an execution with its task at once (the `EventBus` subscriber only
  remembers the event; the engine writes it), and so do local tag and manifest deletions for
  push rules that replicate deletions;
- scheduled rules are started by whichever process first moves the rule's `next_run_at`;
- manual and scheduled executions are planned by a worker (it lists local or remote
  repositories and tags through the filters) and then run task by task.

Tasks are leased, so several processes run the queue and a crashed worker's task is taken over
once its lease runs out. A failed attempt is retried after an exponential back-off until the
attempts run out; permanent failures (the remote refuses a delete with 404/405, a manifest that
does not verify) are not retried. Every attempt's error reason is kept on the task.

Pushing copies each blob the remote lacks (HEAD first, a cross-repository mount when this
process pushed the blob to another repository of the same remote before, else an upload
streamed from local storage), then the manifests (an index's children first), then the tag.
Pulling fetches the manifests and blobs, verifying every digest, and stores them through the
upload and registry services as a system actor, so events fire and the audit log sees them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import socket
import uuid
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final, Protocol

from moorage.domain import mediatypes as mt
from moorage.domain.digest import Digest
from moorage.domain.errors import RegistryError
from moorage.domain.events import AccessEvent, Actor, DomainEvent, EventKind, RegistryEvent
from moorage.domain.manifest import ParsedManifest, parse_manifest
from moorage.domain.names import Reference
from moorage.domain.proxy import ProxyConfigError, normalize_url, validate_pem
from moorage.domain.replication import (
    Backoff,
    Direction,
    EndpointKind,
    Filters,
    NameMapping,
    RuleError,
    Schedule,
    Trigger,
    validate_filters,
    validate_mapping,
    validate_schedule,
)
from moorage.metadata.replication_store import (
    DuplicateNameError,
    EndpointRecord,
    ExecutionRecord,
    InUseError,
    ReplicationStore,
    RuleRecord,
    TaskRecord,
    TaskSpec,
)
from moorage.metadata.store import MetadataStore
from moorage.services.errors import IdentityError
from moorage.services.events import EventBus
from moorage.services.proxy import (
    SecretBox,
    UpstreamBlob,
    UpstreamError,
    UpstreamHead,
    UpstreamManifest,
)
from moorage.services.registry import RegistryService
from moorage.services.threads import Threads
from moorage.services.uploads import UploadService
from moorage.storage.base import StorageDriver

log = logging.getLogger("moorage.replication")

_KEY_NAME: Final = "replication-credentials"
_READ_BYTES: Final = 1 << 20
_MAX_DEPTH: Final = 2  # an index of indexes is followed this deep
_MAX_EVENTS: Final = 10_000  # queued in memory between two engine rounds
_MOUNT_MEMORY: Final = 10_000
MAX_ENDPOINTS: Final = 100
MAX_RULES: Final = 200
MAX_TIMEOUT_SECONDS: Final = 600


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
    ) -> str | None: ...

    async def delete_manifest(self, repository: str, reference: str) -> None: ...


class RemoteRegistries(Protocol):
    def client(self, remote: RemoteEndpoint) -> RemoteRegistry: ...

    async def close(self) -> None: ...


# -- configuration as the API sees it


@dataclass(frozen=True, slots=True)
class EndpointInput:
    """`password`/`token` left as None keep the stored credential (while the username is
    unchanged); `clear_credentials` removes it."""

    name: str
    url: str
    kind: str = EndpointKind.OCI
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    clear_credentials: bool = False
    ca_bundle: str | None = None
    verify_tls: bool = True
    allow_private_network: bool = False
    timeout_seconds: int = 60


@dataclass(frozen=True, slots=True)
class EndpointView:
    id: int
    name: str
    url: str
    kind: str
    username: str | None
    credential: str  # none | password | token
    ca_bundle: bool
    verify_tls: bool
    allow_private_network: bool
    timeout_seconds: int
    updated_by: str | None
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class RuleInput:
    name: str
    endpoint_id: int
    direction: str
    filters: Filters
    mapping: NameMapping
    trigger: str = Trigger.MANUAL
    schedule: Schedule | None = None
    replicate_deletions: bool = False
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class ReplicationOptions:
    concurrency: int = 2
    lease_seconds: float = 300.0
    poll_seconds: float = 1.0
    backoff: Backoff = field(default_factory=lambda: Backoff(30.0, 3600.0, 5))
    max_tasks: int = 10_000  # per execution
    max_manifest_bytes: int = 4 << 20
    max_blob_bytes: int = 64 << 30


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

    def columns(self) -> dict[str, int]:
        return {
            "bytes_copied": self.bytes_copied,
            "blobs_copied": self.blobs_copied,
            "blobs_skipped": self.blobs_skipped,
        }


def replication_actor(endpoint_id: int) -> Actor:
    """Who writes what a pull brings in. Push rules ignore events of their own endpoint's
    actor, so a pull and a push between the same two registries never loop."""
    return Actor(name=f"replication:{endpoint_id}", kind="system")


def _filters_json(filters: Filters) -> dict[str, list[str]]:
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


def _view(row: EndpointRecord) -> EndpointView:
    return EndpointView(
        row.id,
        row.name,
        row.url,
        row.kind,
        row.username,
        row.credential_kind,
        row.ca_bundle is not None,
        row.verify_tls,
        row.allow_private_network,
        row.timeout_seconds,
        row.updated_by,
        row.updated_at,
    )


def _endpoint_details(row: EndpointRecord) -> dict[str, object]:
    tls = "insecure" if not row.verify_tls else ("ca" if row.ca_bundle else "default")
    return {
        "name": row.name,
        "url": row.url,
        "kind": row.kind,
        "username": row.username,
        "credential": row.credential_kind,  # only which kind is set, never the credential
        "tls": tls,
        "allow_private_network": row.allow_private_network,
    }


def _rule_details(rule: RuleRecord, endpoint: str) -> dict[str, object]:
    return {
        "name": rule.name,
        "endpoint": endpoint,
        "direction": rule.direction,
        "trigger": rule.trigger,
        "filters": rule.filters,
        "destination_prefix": rule.destination_prefix,
        "strip_segments": rule.strip_segments,
        "replicate_deletions": rule.replicate_deletions,
        "enabled": rule.enabled,
    }


class ReplicationService:
    def __init__(
        self,
        store: ReplicationStore,
        metadata: MetadataStore,
        registry: RegistryService,
        uploads: UploadService,
        storage: StorageDriver,
        threads: Threads,
        events: EventBus,
        remotes: RemoteRegistries,
        options: ReplicationOptions,
    ) -> None:
        self._store = store
        self._metadata = metadata
        self._registry = registry
        self._uploads = uploads
        self._storage = storage
        self._threads = threads
        self._events = events
        self._remotes = remotes
        self._options = options
        self._box = SecretBox(lambda: metadata.server_secret(_KEY_NAME))
        self._pending: deque[RegistryEvent] = deque(maxlen=_MAX_EVENTS)
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._mounts: OrderedDict[tuple[int, str], str] = OrderedDict()
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    # -- endpoints

    def _endpoint_row(self, endpoint_id: int) -> EndpointRecord:
        row = self._store.endpoint(endpoint_id)
        if row is None:
            raise IdentityError(f"registry endpoint {endpoint_id} not found", 404)
        return row

    def endpoints(self) -> list[EndpointView]:
        return [_view(row) for row in self._store.endpoints()]

    def endpoint(self, endpoint_id: int) -> EndpointView:
        return _view(self._endpoint_row(endpoint_id))

    def save_endpoint(
        self, actor: Actor, endpoint_id: int | None, given: EndpointInput
    ) -> EndpointView:
        current = self._endpoint_row(endpoint_id) if endpoint_id is not None else None
        if current is None and len(self._store.endpoints()) >= MAX_ENDPOINTS:
            raise IdentityError(f"at most {MAX_ENDPOINTS} registry endpoints", 409)
        try:
            url = normalize_url(given.url, allow_private=given.allow_private_network)
            ca_bundle = validate_pem(given.ca_bundle, "ca_bundle")
        except ProxyConfigError as error:
            raise IdentityError(str(error), 422) from None
        if given.kind not in {str(kind) for kind in EndpointKind}:
            raise IdentityError("kind is moorage, distribution or oci", 422)
        if given.password is not None and given.token is not None:
            raise IdentityError("give a password or a token, not both", 422)
        if given.password is not None and not given.username:
            raise IdentityError("a password needs a username", 422)
        if not 1 <= given.timeout_seconds <= MAX_TIMEOUT_SECONDS:
            raise IdentityError(f"timeout_seconds must be 1 to {MAX_TIMEOUT_SECONDS}", 422)
        values: dict[str, object] = {
            "name": given.name,
            "url": url,
            "kind": given.kind,
            "username": given.username or None,
            "ca_bundle": ca_bundle,
            "verify_tls": given.verify_tls,
            "allow_private_network": given.allow_private_network,
            "timeout_seconds": given.timeout_seconds,
            "updated_by": actor.name,
        }
        seal: Callable[[int], bytes | None] | None = None
        secret = given.password if given.password is not None else given.token
        same_user = current is not None and current.username == (given.username or None)
        if given.clear_credentials or (current is not None and not same_user and secret is None):
            values["credential_kind"] = "none"
            seal = _no_credential
        elif secret is not None:
            values["credential_kind"] = "password" if given.password is not None else "token"
            box = self._box
            # Load the key now: sealing runs inside the store's write transaction, where
            # reading the server secret (a write of its own on first use) would wait forever.
            box.seal(0, "")

            def seal(endpoint_id: int) -> bytes | None:
                return box.seal(endpoint_id, secret)

        elif current is None:
            values["credential_kind"] = "none"
        try:
            row = self._store.save_endpoint(endpoint_id, values, seal)
        except DuplicateNameError:
            raise IdentityError(f"a registry endpoint named {given.name} exists", 409) from None
        action = "replication:endpoint-create" if current is None else "replication:endpoint-update"
        self._audit(action, actor, f"replication-endpoint:{row.name}", _endpoint_details(row))
        return _view(row)

    def delete_endpoint(self, actor: Actor, endpoint_id: int) -> None:
        row = self._endpoint_row(endpoint_id)
        try:
            self._store.delete_endpoint(endpoint_id)
        except InUseError as error:
            raise IdentityError(
                f"registry endpoint {row.name} is used by rule {error}; remove the rule first", 409
            ) from None
        self._audit("replication:endpoint-delete", actor, f"replication-endpoint:{row.name}", {})

    def remote_of(self, endpoint_id: int) -> RemoteEndpoint:
        row = self._endpoint_row(endpoint_id)
        secret = self._box.open(row.id, row.credential)
        version = hashlib.sha256(
            f"{row.id}\0{row.updated_at.isoformat()}\0{row.url}".encode()
        ).hexdigest()[:16]
        return RemoteEndpoint(
            id=row.id,
            url=row.url,
            kind=row.kind,
            username=row.username,
            password=secret if row.credential_kind == "password" else None,
            token=secret if row.credential_kind == "token" else None,
            ca_bundle=row.ca_bundle,
            verify_tls=row.verify_tls,
            allow_private_network=row.allow_private_network,
            timeout_seconds=row.timeout_seconds,
            version=version,
        )

    async def check_endpoint(self, endpoint_id: int) -> None:
        """Reach the remote's /v2/ and sign in; raises UpstreamError when that fails."""
        remote = await self._threads.run(self.remote_of, endpoint_id)
        await self._remotes.client(remote).check()

    # -- rules

    def rules(self) -> list[RuleRecord]:
        return self._store.rules()

    def rule(self, rule_id: int) -> RuleRecord:
        rule = self._store.rule(rule_id)
        if rule is None:
            raise IdentityError(f"replication rule {rule_id} not found", 404)
        return rule

    def endpoint_names(self) -> dict[int, str]:
        return {row.id: row.name for row in self._store.endpoints()}

    def save_rule(self, actor: Actor, rule_id: int | None, given: RuleInput) -> RuleRecord:
        current = self.rule(rule_id) if rule_id is not None else None
        if current is None and len(self._store.rules()) >= MAX_RULES:
            raise IdentityError(f"at most {MAX_RULES} replication rules", 409)
        endpoint = self._store.endpoint(given.endpoint_id)
        if endpoint is None:
            raise IdentityError(f"endpointId {given.endpoint_id} names no registry endpoint", 422)
        try:
            direction = Direction(given.direction)
            trigger = Trigger(given.trigger)
            filters = validate_filters(given.filters)
            mapping = validate_mapping(given.mapping, direction)
            schedule = (
                validate_schedule(given.schedule or Schedule())
                if trigger is Trigger.SCHEDULE
                else None
            )
            if trigger is Trigger.EVENT and direction is Direction.PULL:
                raise RuleError("pull rules run on a schedule or manually: remotes send no events")
            if given.replicate_deletions and direction is Direction.PULL:
                raise RuleError("deletions are replicated by push rules only")
        except (ValueError, RuleError) as error:
            raise IdentityError(str(error), 422) from None
        now = datetime.now(UTC)
        values = {
            "name": given.name,
            "endpoint_id": endpoint.id,
            "direction": str(direction),
            "filters": _filters_json(filters),
            "destination_prefix": mapping.destination_prefix,
            "strip_segments": mapping.strip_segments,
            "trigger": str(trigger),
            "interval_seconds": schedule.interval_seconds if schedule else None,
            "cron": schedule.cron if schedule else None,
            "replicate_deletions": given.replicate_deletions,
            "enabled": given.enabled,
            "next_run_at": schedule.next_after(now) if schedule else None,
            "updated_by": actor.name,
        }
        try:
            rule = self._store.save_rule(rule_id, values)
        except DuplicateNameError:
            raise IdentityError(f"a replication rule named {given.name} exists", 409) from None
        action = "replication:rule-create" if current is None else "replication:rule-update"
        self._audit(
            action, actor, f"replication-rule:{rule.name}", _rule_details(rule, endpoint.name)
        )
        return rule

    def delete_rule(self, actor: Actor, rule_id: int) -> None:
        rule = self.rule(rule_id)
        self._store.delete_rule(rule_id)
        self._audit("replication:rule-delete", actor, f"replication-rule:{rule.name}", {})

    def run_rule(self, actor: Actor, rule_id: int) -> ExecutionRecord:
        """Queue a manual run; the engine plans and runs it."""
        rule = self.rule(rule_id)
        if not rule.enabled:
            raise IdentityError(f"replication rule {rule.name} is disabled", 409)
        execution_id = self._store.create_execution(rule.id, str(Trigger.MANUAL), actor.name)
        self._audit(
            "replication:run",
            actor,
            f"replication-rule:{rule.name}",
            {"name": rule.name, "execution": execution_id},
        )
        self._wake_soon()
        execution = self._store.execution(execution_id)
        assert execution is not None
        return execution

    # -- history

    def executions(self, rule_id: int, before: int | None, limit: int) -> list[ExecutionRecord]:
        self.rule(rule_id)
        return self._store.executions(rule_id, before, limit)

    def execution(self, execution_id: int) -> ExecutionRecord:
        found = self._store.execution(execution_id)
        if found is None:
            raise IdentityError(f"replication execution {execution_id} not found", 404)
        return found

    def tasks(self, execution_id: int, after: int | None, limit: int) -> list[TaskRecord]:
        self.execution(execution_id)
        return self._store.tasks(execution_id, after, limit)

    def _audit(self, action: str, actor: Actor, resource: str, details: dict[str, object]) -> None:
        self._events.publish(AccessEvent(action, actor, "success", None, resource, details))

    # -- events

    def on_event(self, event: DomainEvent) -> None:
        """EventBus subscriber: remember pushes and deletions; the engine matches them to
        rules and queues executions (no database work here, it runs inside requests)."""
        if not isinstance(event, RegistryEvent):
            return
        if event.kind is EventKind.MANIFEST_PUSHED and event.tag is None:
            return  # pushed by digest (an index's child): travels with the tagged parent
        if event.kind not in (
            EventKind.MANIFEST_PUSHED,
            EventKind.TAG_DELETED,
            EventKind.MANIFEST_DELETED,
        ):
            return
        self._pending.append(event)
        self._wake_soon()

    def _wake_soon(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is None or wake is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            wake.set()
        else:
            loop.call_soon_threadsafe(wake.set)

    def _queue_events(self, events: list[RegistryEvent]) -> int:
        queued = 0
        # Read fresh for each batch: a rule saved through another process applies at once.
        rules = [r for r in self._store.rules(enabled_only=True) if r.direction == Direction.PUSH]
        for event in events:
            for rule in rules:
                spec = _event_task(rule, event)
                if spec is not None:
                    self._store.create_execution(
                        rule.id, str(Trigger.EVENT), event.actor.name, [spec]
                    )
                    queued += 1
        return queued

    # -- the engine

    async def run(self, *, engine: bool = True) -> None:
        """Until cancelled (the application's lifecycle starts it in every process): record
        push and delete events as executions, and, when `engine`, start scheduled runs, plan
        executions and run tasks."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        active: set[asyncio.Task[None]] = set()
        try:
            while True:
                try:
                    await self._round(active, engine)
                except Exception:
                    log.exception("replication round failed")
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancel
                # that arrives as the event is set, and shutdown would then never finish.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._options.poll_seconds):
                        await self._wake.wait()
                self._wake.clear()
        finally:
            for task in active:
                task.cancel()
            for task in list(active):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _round(self, active: set[asyncio.Task[None]], engine: bool) -> None:
        if self._pending:
            events = list(self._pending)
            self._pending.clear()
            await self._threads.run(self._queue_events, events)
        if not engine or self._options.concurrency == 0:
            return
        await self._start_schedules()
        while (
            execution := await self._threads.run(
                self._store.claim_unplanned, self.owner, self._options.lease_seconds
            )
        ) is not None:
            await self._plan(execution)
        while len(active) < self._options.concurrency:
            claimed = await self._threads.run(
                self._store.claim_task, self.owner, self._options.lease_seconds
            )
            if claimed is None:
                break
            task = asyncio.create_task(self._perform(*claimed))
            active.add(task)
            task.add_done_callback(active.discard)

    async def _start_schedules(self) -> None:
        now = datetime.now(UTC)
        for rule in await self._threads.run(self._store.due_rules, now):
            schedule = Schedule(rule.interval_seconds, rule.cron)
            try:
                following = schedule.next_after(now)
            except RuleError:
                continue
            await self._threads.run(self._store.start_scheduled_run, rule, following, self.owner)

    async def _plan(self, execution: ExecutionRecord) -> None:
        try:
            rule = await self._threads.run(self.rule, execution.rule_id)
            if rule.direction == Direction.PUSH:
                specs = await self._plan_push(rule)
            else:
                remote = await self._threads.run(self.remote_of, rule.endpoint_id)
                specs = await self._plan_pull(rule, self._remotes.client(remote))
        except (UpstreamError, IdentityError, RuleError, RegistryError) as error:
            await self._threads.run(
                self._store.fail_planning, execution.id, self.owner, _describe(error)
            )
            return
        except Exception as error:
            log.exception("planning replication execution %d failed", execution.id)
            reason = f"internal error: {type(error).__name__}"
            await self._threads.run(self._store.fail_planning, execution.id, self.owner, reason)
            return
        await self._threads.run(self._store.plan, execution.id, self.owner, specs)

    async def _plan_push(self, rule: RuleRecord) -> list[TaskSpec]:
        filters, mapping = rule_filters(rule), rule_mapping(rule)
        specs: list[TaskSpec] = []
        last: str | None = None
        while len(specs) < self._options.max_tasks:
            page = await self._threads.run(self._metadata.list_repositories, last, 1000)
            if not page:
                break
            last = page[-1]
            for repository in page:
                if not filters.repository_matches(repository):
                    continue
                destination = mapping.destination(repository)
                for tag in await self._local_tags(repository):
                    if filters.tag_matches(tag):
                        specs.append(TaskSpec("copy", repository, destination, tag, None))
        return specs[: self._options.max_tasks]

    async def _local_tags(self, repository: str) -> list[str]:
        tags: list[str] = []
        last: str | None = None
        while len(tags) < self._options.max_tasks:
            page = await self._threads.run(self._metadata.list_tags, repository, last, 1000)
            if not page:
                break
            tags.extend(page)
            last = page[-1]
        return tags

    async def _plan_pull(self, rule: RuleRecord, client: RemoteRegistry) -> list[TaskSpec]:
        filters, mapping = rule_filters(rule), rule_mapping(rule)
        limit = self._options.max_tasks
        repositories = filters.literal_repositories()
        if repositories is None:
            repositories = tuple(await client.list_repositories(limit))
        specs: list[TaskSpec] = []
        for repository in repositories:
            if not filters.repository_matches(repository):
                continue
            destination = mapping.destination(repository)
            try:
                tags = await client.list_tags(repository, limit)
            except UpstreamError as error:
                if error.kind == "not-found":
                    continue
                raise
            specs.extend(
                TaskSpec("copy", repository, destination, tag, None)
                for tag in tags
                if filters.tag_matches(tag)
            )
            if len(specs) >= limit:
                break
        return specs[:limit]

    async def _renew(self, task: TaskRecord) -> None:
        interval = max(self._options.lease_seconds / 3, 1.0)
        while True:
            await asyncio.sleep(interval)
            await self._threads.run(
                self._store.renew_task, task.id, self.owner, self._options.lease_seconds
            )

    async def _perform(self, task: TaskRecord, rule_id: int) -> None:
        progress = Progress()
        renewer = asyncio.create_task(self._renew(task))
        error: str | None = None
        permanent = False
        digest: str | None = None
        try:
            rule = await self._threads.run(self._store.rule, rule_id)
            if rule is None:
                raise TaskError("the rule was removed", permanent=True)
            remote = await self._threads.run(self.remote_of, rule.endpoint_id)
            client = self._remotes.client(remote)
            if task.operation == "delete":
                await self._delete_remote(client, remote, task)
            elif rule.direction == Direction.PUSH:
                digest = await self._push(client, remote, task, progress)
            else:
                digest = await self._pull(client, remote, task, progress)
        except asyncio.CancelledError:
            renewer.cancel()
            with contextlib.suppress(Exception):
                await asyncio.shield(self._threads.run(self._store.release_task, task, self.owner))
            raise
        except TaskError as failure:
            error, permanent = str(failure), failure.permanent
        except UpstreamError as failure:
            error = f"{failure.kind}: {failure}"
            permanent = failure.kind in ("invalid", "not-found")
        except RegistryError as failure:
            error, permanent = f"{failure.code}: {failure.message}", True
        except IdentityError as failure:
            error, permanent = str(failure), True
        except OSError as failure:
            error = f"local storage: {failure}"
        except Exception as failure:
            log.exception("replication task %d failed", task.id)
            error = f"internal error: {type(failure).__name__}"
        finally:
            renewer.cancel()
        retry_at = None
        if error is not None:
            backoff = self._options.backoff
            if not permanent and not backoff.gives_up(task.attempts):
                retry_at = datetime.now(UTC) + timedelta(seconds=backoff.delay(task.attempts))
            log.warning(
                "replication task %d (%s %s) attempt %d failed: %s",
                task.id,
                task.source,
                task.tag or task.digest,
                task.attempts,
                error,
            )
        await self._threads.run(
            lambda: self._store.finish_task(
                task,
                self.owner,
                error=error,
                retry_at=retry_at,
                progress=progress.columns(),
                digest=digest,
            )
        )
        if self._wake is not None:
            self._wake.set()

    # -- push

    async def _push(
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
        await self._push_manifest(
            client, remote, task, record.digest, record.media_type, task.tag, progress, 0
        )
        return record.digest

    async def _push_manifest(
        self,
        client: RemoteRegistry,
        remote: RemoteEndpoint,
        task: TaskRecord,
        digest: str,
        media_type: str,
        tag: str | None,
        progress: Progress,
        depth: int,
    ) -> None:
        body = await self._threads.run(self._metadata.manifest_body, digest)
        if body is None:
            raise TaskError(f"manifest {digest} has no stored content", permanent=True)
        manifest = parse_manifest(body, media_type, Digest.parse(digest))
        present = await client.find_manifest(task.destination, tag or digest)
        if present is not None and present.digest == digest:
            return  # the remote already holds it (under this tag): nothing to send
        if manifest.is_index:
            if depth >= _MAX_DEPTH:
                raise TaskError(f"index {digest} nests deeper than {_MAX_DEPTH}", permanent=True)
            for child in manifest.children:
                await self._push_manifest(
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
        await client.put_manifest(task.destination, tag or digest, media_type, body)

    async def _push_blob(
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
            await client.upload_blob(task.destination, text, size, location, self._reader(digest))
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

    async def _pull(
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
                return local.digest
        manifest, body = await self._fetch_manifest(client, task.source, reference)
        await self._store_tree(client, task, manifest, progress, actor, 0)
        await self._registry.put_manifest(
            task.destination,
            _reference(task.tag, manifest.digest),
            manifest.media_type,
            body,
            actor,
        )
        return str(manifest.digest)

    async def _fetch_manifest(
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
        media_type = fetched.media_type or _media_type_of(fetched.body)
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
            if depth >= _MAX_DEPTH:
                raise TaskError(
                    f"index {manifest.digest} nests deeper than {_MAX_DEPTH}", permanent=True
                )
            for child in manifest.children:
                child_digest = str(child.digest)
                present = await self._threads.run(
                    self._metadata.resolve_digest, task.destination, child_digest
                )
                if present is not None:
                    continue
                parsed, body = await self._fetch_manifest(client, task.source, child_digest)
                await self._store_tree(client, task, parsed, progress, actor, depth + 1)
                await self._registry.put_manifest(
                    task.destination,
                    _reference(None, parsed.digest),
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

    async def _delete_remote(
        self, client: RemoteRegistry, remote: RemoteEndpoint, task: TaskRecord
    ) -> None:
        if task.tag is not None and remote.kind == EndpointKind.MOORAGE:
            await client.delete_manifest(task.destination, task.tag)
            return
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
            target = head.digest or task.digest
        if target is None:
            raise TaskError("nothing identifies what to delete", permanent=True)
        await client.delete_manifest(task.destination, target)


def _no_credential(_endpoint_id: int) -> bytes | None:
    return None


def _reference(tag: str | None, digest: Digest) -> Reference:
    return Reference(tag=tag) if tag is not None else Reference(digest=digest)


def _media_type_of(body: bytes) -> str:
    try:
        value = json.loads(body).get("mediaType")
    except (ValueError, AttributeError):
        value = None
    return value if isinstance(value, str) else mt.OCI_MANIFEST


def _event_task(rule: RuleRecord, event: RegistryEvent) -> TaskSpec | None:
    """The task a local push or deletion asks of a push rule, or None."""
    if event.actor.name == replication_actor(rule.endpoint_id).name:
        return None  # brought in from this very remote: never sent back
    filters = rule_filters(rule)
    if not filters.repository_matches(event.repository):
        return None
    if event.tag is not None and not filters.tag_matches(event.tag):
        return None
    try:
        destination = rule_mapping(rule).destination(event.repository)
    except RuleError:
        return None
    if event.kind is EventKind.MANIFEST_PUSHED:
        if rule.trigger != Trigger.EVENT:
            return None
        return TaskSpec("copy", event.repository, destination, event.tag, event.digest)
    if not rule.replicate_deletions:
        return None
    if event.kind is EventKind.TAG_DELETED:
        return TaskSpec("delete", event.repository, destination, event.tag, event.digest)
    return TaskSpec("delete", event.repository, destination, None, event.digest)


def _describe(error: BaseException) -> str:
    if isinstance(error, UpstreamError):
        return f"{error.kind}: {error}"
    if isinstance(error, RegistryError):
        return f"{error.code}: {error.message}"
    return str(error)
