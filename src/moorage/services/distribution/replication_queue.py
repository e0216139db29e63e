"""The replication queue: push events become executions, scheduled rules start runs,
executions are planned (what the filters cover) and their tasks run, leased, with retries.

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
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import socket
import uuid
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Final

from moorage.domain.digest import Digest
from moorage.domain.errors import RegistryError
from moorage.domain.events import DomainEvent, EventKind, RegistryEvent
from moorage.domain.replication import Direction, RuleError, Schedule, Trigger
from moorage.metadata.distribution.replication_store import (
    ExecutionRecord,
    ReplicationStore,
    RuleRecord,
    TaskRecord,
    TaskSpec,
)
from moorage.metadata.registry.store import MetadataStore
from moorage.services.distribution.proxy import UpstreamError
from moorage.services.distribution.replication_referrers import MAX_REFERRER_DEPTH, subject_of_tag
from moorage.services.distribution.replication_transfer import Transfer
from moorage.services.distribution.replication_types import (
    Progress,
    RemoteEndpoint,
    RemoteRegistries,
    RemoteRegistry,
    ReplicationOptions,
    TaskError,
    describe,
    replication_actor,
    rule_filters,
    rule_mapping,
)
from moorage.services.errors import IdentityError
from moorage.services.threads import Threads

log = logging.getLogger("moorage.replication")

_MAX_EVENTS: Final = 10_000  # queued in memory between two engine rounds


class ReplicationQueue:
    def __init__(
        self,
        store: ReplicationStore,
        metadata: MetadataStore,
        threads: Threads,
        remotes: RemoteRegistries,
        options: ReplicationOptions,
        transfer: Transfer,
        remote_of: Callable[[int], RemoteEndpoint],
    ) -> None:
        self._store = store
        self._metadata = metadata
        self._threads = threads
        self._remotes = remotes
        self._options = options
        self._transfer = transfer
        self._remote_of = remote_of
        self._pending: deque[RegistryEvent] = deque(maxlen=_MAX_EVENTS)
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    def _rule(self, rule_id: int) -> RuleRecord:
        rule = self._store.rule(rule_id)
        if rule is None:
            raise IdentityError(f"replication rule {rule_id} not found", 404)
        return rule

    # -- events

    def on_event(self, event: DomainEvent) -> None:
        """EventBus subscriber: remember pushes and deletions; the engine matches them to
        rules and queues executions (no database work here, it runs inside requests)."""
        if not isinstance(event, RegistryEvent):
            return
        if event.kind not in (
            EventKind.MANIFEST_PUSHED,
            EventKind.TAG_DELETED,
            EventKind.MANIFEST_DELETED,
            EventKind.REPOSITORY_DELETED,
        ):
            return
        self._pending.append(event)
        self.wake_soon()

    def wake_soon(self) -> None:
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
            images: list[tuple[str, str]] | None = None
            for rule in rules:
                if event.kind is EventKind.REPOSITORY_DELETED:
                    if _replicates_deletion(rule, event) and self._delete_copies(rule, event):
                        queued += 1
                    continue
                spec = _event_task(rule, event)
                specs = [spec] if spec is not None else []
                if spec is None and _carries_supply_chain(rule, event):
                    # A referrer or a cosign tag: queue the tagged image it belongs to, whose
                    # copy brings it along (also when the tag filter leaves it out).
                    if images is None:
                        images = self._images_of(event)
                    destination = rule_mapping(rule).destination(event.repository)
                    filters = rule_filters(rule)
                    specs = [
                        TaskSpec("copy", event.repository, destination, tag, digest)
                        for tag, digest in images
                        if filters.tag_matches(tag)
                    ]
                if specs:
                    self._store.create_execution(
                        rule.id, str(Trigger.EVENT), event.actor.name, specs
                    )
                    queued += 1
        return queued

    def _delete_copies(self, rule: RuleRecord, event: RegistryEvent) -> bool:
        """A deleted repository: delete at the target what the rule copied from it (each tag
        only while it still points at what was copied). Whether anything was queued."""
        copies = self._store.copies_from(rule.id, event.repository, self._options.max_tasks)
        specs = [
            TaskSpec("delete", copy.source, copy.destination, copy.tag, copy.digest)
            for copy in copies
        ]
        if specs:
            self._store.create_execution(rule.id, str(Trigger.EVENT), event.actor.name, specs)
        return bool(specs)

    def _images_of(self, event: RegistryEvent) -> list[tuple[str, str]]:
        """(tag, digest) of the tagged manifests that a referrer pushed by digest, or a cosign
        or referrers tag, belongs to, following subjects a few levels up."""
        subject = (
            subject_of_tag(event.tag) if event.tag is not None else self._subject_of(event.digest)
        )
        for _ in range(MAX_REFERRER_DEPTH):
            if subject is None:
                return []
            tags = self._metadata.manifest_tags(event.repository, subject)
            if tags:
                return [(tag, subject) for tag in tags]
            subject = self._subject_of(subject)
        return []

    def _subject_of(self, digest: str | None) -> str | None:
        body = self._metadata.manifest_body(digest) if digest is not None else None
        if body is None:
            return None
        try:
            subject = json.loads(body).get("subject")
        except (ValueError, AttributeError):
            return None
        found = subject.get("digest") if isinstance(subject, dict) else None
        return found if isinstance(found, str) and Digest.is_digest(found) else None

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
            rule = await self._threads.run(self._rule, execution.rule_id)
            listed: dict[str, set[str]] = {}
            client: RemoteRegistry | None = None
            if rule.direction == Direction.PUSH:
                specs = await self._plan_push(rule)
            else:
                remote = await self._threads.run(self._remote_of, rule.endpoint_id)
                client = self._remotes.client(remote)
                specs = await self._plan_pull(rule, client, listed)
            if rule.mirror_deletions:
                specs.extend(await self._plan_deletions(rule, client, listed))
                specs = specs[: self._options.max_tasks]
        except (UpstreamError, IdentityError, RuleError, RegistryError) as error:
            await self._threads.run(
                self._store.fail_planning, execution.id, self.owner, describe(error)
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

    async def _plan_deletions(
        self, rule: RuleRecord, client: RemoteRegistry | None, listed: dict[str, set[str]]
    ) -> list[TaskSpec]:
        """Delete tasks for what this rule put at its target and what is gone at the source
        since; nothing the rule did not put there is touched."""
        specs: list[TaskSpec] = []
        for copy in await self._threads.run(self._store.copies, rule.id, self._options.max_tasks):
            if client is None:
                found = await self._threads.run(self._metadata.resolve_tag, copy.source, copy.tag)
                present = found is not None
            elif copy.source in listed:
                present = copy.tag in listed[copy.source]
            else:
                present = await client.find_manifest(copy.source, copy.tag) is not None
            if not present:
                specs.append(
                    TaskSpec("delete", copy.source, copy.destination, copy.tag, copy.digest)
                )
        return specs

    async def _plan_pull(
        self, rule: RuleRecord, client: RemoteRegistry, listed: dict[str, set[str]]
    ) -> list[TaskSpec]:
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
                    listed[repository] = set()
                    continue
                raise
            if len(tags) < limit:  # a truncated listing proves no deletion
                listed[repository] = set(tags)
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
        rule_seen: RuleRecord | None = None
        try:
            rule = await self._threads.run(self._store.rule, rule_id)
            if rule is None:
                raise TaskError("the rule was removed", permanent=True)
            rule_seen = rule
            remote = await self._threads.run(self._remote_of, rule.endpoint_id)
            client = self._remotes.client(remote)
            if task.operation == "delete" and rule.direction == Direction.PULL:
                await self._transfer.delete_local(remote, task)
            elif task.operation == "delete":
                await self._transfer.delete_remote(client, remote, task)
            elif rule.direction == Direction.PUSH:
                digest = await self._transfer.push(client, remote, task, progress)
            else:
                digest = await self._transfer.pull(client, remote, task, progress)
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
                retry_at = datetime.now(UTC) + timedelta(
                    seconds=backoff.delay(task.attempts, random.random())
                )
            log.warning(
                "replication task %d (%s %s) attempt %d failed: %s",
                task.id,
                task.source,
                task.tag or task.digest,
                task.attempts,
                error,
            )
        if rule_seen is not None:
            await self._threads.run(self._track, rule_seen, task, progress, error, retry_at)
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

    def _track(
        self,
        rule: RuleRecord,
        task: TaskRecord,
        progress: Progress,
        error: str | None,
        retry_at: datetime | None,
    ) -> None:
        """Keep the record of what the rule put at its target up to date."""
        if task.operation == "copy" and error is None:
            self._store.record_copies(rule.id, task.source, task.destination, progress.tags)
        elif task.operation == "delete" and task.tag is not None and retry_at is None:
            # Deleted, or found gone or changed (left alone): no longer the rule's either way.
            self._store.forget_copy(rule.id, task.destination, task.tag)


def _carries_supply_chain(rule: RuleRecord, event: RegistryEvent) -> bool:
    """Whether a push the rule's filters leave out may be a referrer or a cosign tag of an
    image the rule replicates."""
    if event.kind is not EventKind.MANIFEST_PUSHED or rule.trigger != Trigger.EVENT:
        return False
    if event.actor.name == replication_actor(rule.endpoint_id).name:
        return False
    if not rule_filters(rule).repository_matches(event.repository):
        return False
    try:
        rule_mapping(rule).destination(event.repository)
    except RuleError:
        return False
    return event.tag is None or subject_of_tag(event.tag) is not None


def _replicates_deletion(rule: RuleRecord, event: RegistryEvent) -> bool:
    """Whether the push rule sends `event`'s repository deletion to its target."""
    if not rule.replicate_deletions:
        return False
    if event.actor.name == replication_actor(rule.endpoint_id).name:
        return False
    return rule_filters(rule).repository_matches(event.repository)


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
        if rule.trigger != Trigger.EVENT or event.tag is None:
            return None  # by digest (an index's child, a referrer): travels with its image
        return TaskSpec("copy", event.repository, destination, event.tag, event.digest)
    if not rule.replicate_deletions:
        return None
    if event.kind is EventKind.TAG_DELETED:
        return TaskSpec("delete", event.repository, destination, event.tag, event.digest)
    return TaskSpec("delete", event.repository, destination, None, event.digest)
