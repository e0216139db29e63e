"""The audit log: every domain event becomes one hash-chained entry.

Details are redacted by schema: for each action only the fields listed in `DETAIL_FIELDS` are
kept, so a secret can only reach the log if someone adds its field name here on purpose.
Entries are appended in small batches per process (every 200 ms and at shutdown); each batch
is one write transaction that continues the chain from the newest stored entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from moorage.domain.events import AccessEvent, Actor, DomainEvent, RegistryEvent
from moorage.domain.names import project_of
from moorage.metadata.access.iam_store import (
    GENESIS_HASH,
    AuditRecord,
    IamStore,
    NewAuditEntry,
    entry_hash,
)
from moorage.services.access.tokens import TokenService
from moorage.services.events import EventBus

log = logging.getLogger("moorage.audit")

DETAIL_FIELDS: Final[dict[str, frozenset[str]]] = {
    "login": frozenset({"credential"}),
    "user:create": frozenset({"email", "admin"}),
    "user:update": frozenset({"email", "is_admin", "disabled"}),
    "user:password": frozenset(),
    "user:delete": frozenset(),
    "group:create": frozenset(),
    "group:delete": frozenset(),
    "group:member-add": frozenset({"user"}),
    "group:member-remove": frozenset({"user"}),
    "project:create": frozenset({"public", "via"}),
    "project:update": frozenset({"public"}),
    "project:delete": frozenset(),
    "member:set": frozenset({"kind", "member", "role"}),
    "member:remove": frozenset({"kind", "member"}),
    "grant:add": frozenset({"kind", "principal", "pattern", "actions"}),
    "grant:delete": frozenset({"grant"}),
    "immutable-rule:create": frozenset({"rule", "repositories", "tags", "mode"}),
    "immutable-rule:delete": frozenset({"rule", "repositories", "tags", "mode"}),
    "immutable-rule:replace": frozenset({"rules", "removed"}),
    "trust-key:add": frozenset({"name", "algorithm", "fingerprint"}),
    "trust-key:delete": frozenset({"name", "fingerprint"}),
    "trust-store:add": frozenset({"name", "certificates"}),
    "trust-store:update": frozenset({"name", "certificates"}),
    "trust-store:delete": frozenset({"name"}),
    "trust-rule:create": frozenset({"rule"}),
    "trust-rule:replace": frozenset({"version", "rules", "removed"}),
    "trust-rule:delete": frozenset({"rule"}),
    # a pull the trust policy would refuse, allowed because the rule is in audit mode
    "signature:unverified": frozenset({"rule", "mode", "reason"}),
    "vulnerability-policy:update": frozenset(
        {
            "enabled",
            "severity",
            "unknown_as",
            "block_unscanned",
            "block_failed",
            "ignore_unfixed",
            "possibly_affected",
            "previous",
        }
    ),
    "allowlist:add": frozenset(
        {"entry", "scope", "vulnerability_id", "reason", "owner", "expires_at"}
    ),
    "allowlist:remove": frozenset({"entry", "scope", "vulnerability_id", "owner", "expires_at"}),
    "proxy:configure": frozenset(
        {
            "url",
            "flavor",
            "username",
            "credential",
            "tls",
            "allow_private_network",
            "tag_ttl_seconds",
            "platforms",
            "anonymous_fetch",
        }
    ),
    "proxy:remove": frozenset(),
    # garbage collection: what a run removed (counts only)
    "gc:run": frozenset({"run", "status", "dry_run", "delete_untagged", "counts"}),
    # stages and promotion: what moved where, and which gates said what (never key material)
    "promotion-stage:update": frozenset({"stage", "promotion_only", "previous"}),
    "promotion-gates:update": frozenset({"gates", "previous"}),
    "promotion:approve": frozenset({"digest", "comment"}),
    "promotion:create": frozenset(
        {"source", "destination", "digest", "gates", "promotion", "record", "reason"}
    ),
    # a system administrator's push into (or deletion in) a promotion-only project, let
    # through by break-glass
    "promotion:break-glass": frozenset({"digest", "tag", "operation"}),
    # replication: the kind of credential only, never the credential (not in the event either)
    "replication:endpoint-create": frozenset(
        {"name", "url", "kind", "username", "credential", "tls", "allow_private_network"}
    ),
    "replication:endpoint-update": frozenset(
        {"name", "url", "kind", "username", "credential", "tls", "allow_private_network"}
    ),
    "replication:endpoint-delete": frozenset(),
    "replication:rule-create": frozenset(
        {
            "name",
            "endpoint",
            "direction",
            "trigger",
            "filters",
            "destination_prefix",
            "strip_segments",
            "replicate_deletions",
            "mirror_deletions",
            "enabled",
        }
    ),
    "replication:rule-update": frozenset(
        {
            "name",
            "endpoint",
            "direction",
            "trigger",
            "filters",
            "destination_prefix",
            "strip_segments",
            "replicate_deletions",
            "mirror_deletions",
            "enabled",
        }
    ),
    "replication:rule-delete": frozenset(),
    "replication:run": frozenset({"name", "execution"}),
    "retention:policy-create": frozenset({"rules", "cron", "enabled"}),
    "retention:policy-update": frozenset({"rules", "cron", "enabled"}),
    "retention:policy-delete": frozenset(),
    "retention:run": frozenset(
        {"run", "dry_run", "trigger", "artifacts", "removed", "kept", "failed"}
    ),
    "virtual:configure": frozenset({"members", "push_member"}),
    "virtual:remove": frozenset(),
    "mirror:configure": frozenset({"project", "previous"}),
    "mirror:reset": frozenset({"project", "previous"}),
    "role:upsert": frozenset({"actions"}),
    "role:delete": frozenset(),
    "robot:create": frozenset({"permissions", "expires_at"}),
    "robot:update": frozenset({"disabled", "permissions"}),
    "robot:rotate": frozenset(),
    "robot:delete": frozenset(),
    "token:create": frozenset({"scopes", "expires_at"}),
    "token:revoke": frozenset(),
    "token:refresh-reuse": frozenset({"credential", "revoked"}),
    "settings:update": frozenset({"key", "value"}),
    # scanner adapters: never the credential (it is not in the event either)
    "scanner:create": frozenset(
        {"url", "auth", "skip_tls_verify", "allow_private_network", "ca_bundle"}
    ),
    "scanner:update": frozenset(
        {"changed", "url", "auth", "skip_tls_verify", "allow_private_network", "ca_bundle"}
    ),
    "scanner:delete": frozenset(),
    "signing-key:rotate": frozenset({"kid"}),
    "audit:prune": frozenset({"before", "removed"}),
    # vulnerability database: what was imported and what became current (no key material)
    "vulndb:import": frozenset(
        {
            "generation",
            "records",
            "skipped",
            "source",
            "source_checksum",
            "signed",
            "cve_records",
            "reason",
        }
    ),
    "vulndb:rollback": frozenset({"generation", "records", "source_checksum", "reason"}),
    "scan-settings:update": frozenset({"scan_on_push", "attach_sbom", "scanner"}),
    "scan:request": frozenset({"digest"}),
    "scan:all": frozenset({"queued"}),
    # registry events
    "manifest:pushed": frozenset({"tag", "media_type", "size"}),
    "manifest:pulled": frozenset({"tag", "media_type"}),
    "manifest:cached": frozenset({"tag", "media_type", "size"}),
    "manifest:deleted": frozenset(),
    "tag:deleted": frozenset({"tag"}),
    "repository:deleted": frozenset(),
    "access:denied": frozenset({"action", "reason"}),
    # a PolicySet check refused (immutable tags, and later gates): which point, policy, why
    "policy:denied": frozenset({"point", "policy", "reason"}),
    # quotas: the limits and usage a warning or a first refusal was announced at
    "quota:warning": frozenset({"quota", "limit", "used", "percent"}),
    "quota:exceeded": frozenset({"quota", "limit", "used", "percent"}),
    "quota:set": frozenset({"bytes", "artifacts"}),
    "quota:clear": frozenset(),
    "quota:recount": frozenset({"corrected"}),
    "quota:evict": frozenset({"manifests", "freed"}),
}
_FLUSH_SECONDS: Final = 0.2


def to_entry(event: DomainEvent) -> NewAuditEntry | None:
    """The audit entry for an event, or None for events the audit log does not record."""
    resource: str | None
    project: str | None
    if isinstance(event, RegistryEvent):
        action = str(event.kind)
        if action not in DETAIL_FIELDS:
            return None  # blob traffic is recorded through the manifests that use it
        resource = event.repository + (f"@{event.digest}" if event.digest else "")
        raw: dict[str, object] = {
            "tag": event.tag,
            "media_type": event.media_type,
            "size": event.size,
            **(event.details or {}),
        }
        actor, project, result = event.actor, project_of(event.repository), "success"
    else:
        action, actor, project, result = event.action, event.actor, event.project, event.result
        resource, raw = event.resource, dict(event.details or {})
    allowed = DETAIL_FIELDS.get(action, frozenset())
    details = {k: v for k, v in raw.items() if k in allowed and v is not None} or None
    return NewAuditEntry(
        at=event.at,
        actor_kind=actor.kind,
        actor=actor.name,
        client_ip=actor.client_ip,
        certificate=actor.certificate,
        action=action,
        project=project,
        resource=resource,
        result=result,
        details=details,
    )


class AuditLog:
    """EventBus subscriber; batches entries per process, or writes at once (`immediate`)."""

    def __init__(self, store: IamStore, *, immediate: bool = False) -> None:
        self._store = store
        self._immediate = immediate
        self._pending: list[NewAuditEntry] = []
        self._lock = threading.Lock()

    def __call__(self, event: DomainEvent) -> None:
        entry = to_entry(event)
        if entry is None:
            return
        if self._immediate:
            self._store.append_audit([entry])
            return
        with self._lock:
            self._pending.append(entry)

    def flush(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
        if batch:
            self._store.append_audit(batch)

    async def run(self, run_blocking: Callable[[Callable[[], None]], Any]) -> None:
        """Flush periodically until cancelled; flush once more on the way out."""
        try:
            while True:
                await asyncio.sleep(_FLUSH_SECONDS)
                try:
                    await run_blocking(self.flush)
                except Exception:
                    log.exception("writing audit entries failed; they will be retried")
        finally:
            with contextlib.suppress(Exception):
                self.flush()


@dataclass(frozen=True, slots=True)
class VerifyResult:
    entries: int
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_chain(
    store: IamStore, verify_signature: Callable[[str, bytes, str], bool]
) -> VerifyResult:
    """Walk the chain: every entry must link to its predecessor and hash to its stored hash."""
    problems: list[str] = []
    expected = GENESIS_HASH
    checkpoint = store.latest_checkpoint()
    if checkpoint is not None:
        signed = f"{checkpoint.last_pruned_id}:{checkpoint.last_pruned_hash}".encode()
        if not verify_signature(checkpoint.kid, signed, checkpoint.signature):
            problems.append(f"checkpoint {checkpoint.id} has an invalid signature")
        expected = checkpoint.last_pruned_hash
    count = 0
    previous_id = checkpoint.last_pruned_id if checkpoint is not None else 0
    for record in store.iter_audit():
        count += 1
        if record.prev_hash != expected:
            problems.append(
                f"entry {record.id}: chain broken after entry {previous_id} (an entry was removed,"
                " reordered or changed)"
            )
        if entry_hash(record.prev_hash, record) != record.hash:
            problems.append(f"entry {record.id}: content does not match its hash (modified)")
        expected = record.hash
        previous_id = record.id
        if len(problems) > 100:
            break
    return VerifyResult(count, problems)


def export_jsonl(store: IamStore) -> Iterator[str]:
    for record in store.iter_audit():
        yield json.dumps(record.as_dict(), sort_keys=True)


def prune(store: IamStore, before: datetime, sign: Callable[[bytes], tuple[str, str]]) -> int:
    return store.prune_audit(before.astimezone(UTC), sign)


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Filters of an audit search; newest entries first, `before_id` pages backwards."""

    project: str | None = None
    actor: str | None = None
    action: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    before_id: int | None = None
    limit: int = 100


class AuditService:
    """Reading, verifying, exporting and pruning the log (`AuditLog` is what writes it)."""

    def __init__(self, store: IamStore, tokens: TokenService, events: EventBus) -> None:
        self._store = store
        self._tokens = tokens
        self._events = events

    def search(self, query: AuditQuery) -> list[AuditRecord]:
        return self._store.query_audit(
            project=query.project,
            actor=query.actor,
            action=query.action,
            since=query.since,
            until=query.until,
            before_id=query.before_id,
            limit=query.limit,
        )

    def verify(self) -> VerifyResult:
        return verify_chain(self._store, self._tokens.verify_bytes)

    def export_jsonl(self) -> Iterator[str]:
        return export_jsonl(self._store)

    def prune(self, actor: Actor, before: datetime) -> int:
        """Delete entries older than `before` behind a checkpoint signed with the active key."""
        removed = prune(self._store, before, self._tokens.sign_bytes)
        self._events.publish(
            AccessEvent(
                "audit:prune",
                actor,
                resource="audit-log",
                details={"before": before.astimezone(UTC).isoformat(), "removed": removed},
            )
        )
        return removed


__all__ = [
    "AuditLog",
    "AuditQuery",
    "AuditRecord",
    "AuditService",
    "VerifyResult",
    "export_jsonl",
    "prune",
    "to_entry",
    "verify_chain",
]
