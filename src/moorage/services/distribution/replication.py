"""Replication: remote registry endpoints and rules as administrators configure them, and the
history of their runs. The queue that runs them is `replication_queue`, the copying
`replication_transfer`, and what they share `replication_types`.

Administrators register remote registries (their credentials sealed with AES-GCM under a
server secret, never returned, logged or audited) and rules that push local repositories to a
remote or pull remote repositories here (`moorage.domain.replication`). A run of a rule is an
execution with one task per artifact (repository + tag), kept in the database.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

from moorage.domain.events import AccessEvent, Actor, DomainEvent
from moorage.domain.proxy import ProxyConfigError, normalize_url, validate_pem
from moorage.domain.replication import (
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
from moorage.metadata.distribution.replication_store import (
    DuplicateNameError,
    EndpointRecord,
    ExecutionRecord,
    InUseError,
    ReplicationStore,
    RuleRecord,
    TaskRecord,
)
from moorage.metadata.registry.store import MetadataStore
from moorage.services.distribution.proxy import SecretBox
from moorage.services.distribution.replication_queue import ReplicationQueue
from moorage.services.distribution.replication_transfer import Transfer
from moorage.services.distribution.replication_types import (
    RemoteEndpoint,
    RemoteRegistries,
    ReplicationOptions,
    filters_json,
    replication_actor,
    rule_filters,
    rule_mapping,
)
from moorage.services.errors import IdentityError
from moorage.services.events import EventBus
from moorage.services.registry.registry import RegistryService
from moorage.services.registry.uploads import UploadService
from moorage.services.threads import Threads
from moorage.storage.base import StorageDriver

__all__ = [
    "EndpointInput",
    "EndpointView",
    "RemoteEndpoint",
    "ReplicationOptions",
    "ReplicationService",
    "RuleInput",
    "replication_actor",
    "rule_filters",
    "rule_mapping",
]

_KEY_NAME: Final = "replication-credentials"
MAX_ENDPOINTS: Final = 100
MAX_RULES: Final = 200
MAX_TIMEOUT_SECONDS: Final = 600


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
    mirror_deletions: bool = False
    enabled: bool = True


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
        "mirror_deletions": rule.mirror_deletions,
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
        self._threads = threads
        self._events = events
        self._remotes = remotes
        self._options = options
        self._box = SecretBox(lambda: metadata.server_secret(_KEY_NAME))
        transfer = Transfer(metadata, registry, uploads, storage, threads, options)
        self._queue = ReplicationQueue(
            store, metadata, threads, remotes, options, transfer, self.remote_of
        )

    @property
    def owner(self) -> str:
        return self._queue.owner

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
            "filters": filters_json(filters),
            "destination_prefix": mapping.destination_prefix,
            "strip_segments": mapping.strip_segments,
            "trigger": str(trigger),
            "interval_seconds": schedule.interval_seconds if schedule else None,
            "cron": schedule.cron if schedule else None,
            "replicate_deletions": given.replicate_deletions,
            "mirror_deletions": given.mirror_deletions,
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
        self._queue.wake_soon()
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

    # -- the queue

    def on_event(self, event: DomainEvent) -> None:
        """EventBus subscriber (see `ReplicationQueue.on_event`)."""
        self._queue.on_event(event)

    async def run(self, *, engine: bool = True) -> None:
        """Until cancelled: record events as executions and, when `engine`, run the queue."""
        await self._queue.run(engine=engine)


def _no_credential(_endpoint_id: int) -> bytes | None:
    return None
