"""Retention: per-project policies, dry and real runs, their history, and the schedule.

A run evaluates the project's rules repository by repository (`domain.retention.evaluate`,
over one consistent read of the repository and its last-pull times), records a decision per
artifact, and in a real run deletes what goes through the registry's own manifest delete
(so events, audit, referrers and the delete policies behave exactly as for an API delete; the
bytes are freed by the next garbage collection).

A dry run answers what a real run would delete: it asks the same delete policies
(immutable tags) without deleting. Just before each deletion a real run checks that the
artifact still has the tags it was evaluated with; one that was tagged meanwhile is skipped
(kept), so a push racing a run never loses its new tag.

Scheduled runs: a policy with a cron expression has a next firing time; whichever process
moves it forward (a conditional UPDATE) runs the policy, so a firing runs once per deployment.
At most one run of a project is in progress at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from moorage.domain.errors import ErrorCode, RegistryError
from moorage.domain.events import SYSTEM, AccessEvent, Actor
from moorage.domain.names import Reference
from moorage.domain.policy import (
    Allow,
    Decision,
    DecisionPoint,
    Deny,
    PolicyContext,
    PolicySet,
)
from moorage.domain.replication import RuleError as ScheduleError
from moorage.domain.replication import parse_cron
from moorage.domain.retention import (
    Artifact,
    RetentionRule,
    RuleError,
    covers_repository,
    evaluate,
    make_rule,
    validate_rules,
)
from moorage.metadata.lifecycle.pull_store import PullStore
from moorage.metadata.lifecycle.retention_store import (
    FAILED,
    PARTIAL,
    SUCCEEDED,
    DecisionRecord,
    PolicyRecord,
    ProjectMissingError,
    RetentionStore,
    RunRecord,
)
from moorage.metadata.registry.store import MetadataStore
from moorage.services.errors import IdentityError
from moorage.services.events import EventBus
from moorage.services.registry.immutability import ImmutabilityService
from moorage.services.registry.registry import ObservedState, RegistryService
from moorage.services.threads import Threads

log = logging.getLogger("moorage.lifecycle.retention")

LEASE_SECONDS: Final = 600.0  # renewed after every repository
MAX_RUNS_PAGE: Final = 100
MAX_DECISIONS_PAGE: Final = 1000
OUTCOMES: Final = ("kept", "removed", "would-remove", "refused", "skipped", "failed")


class PolicyError(IdentityError):
    """A policy that cannot be accepted, or a run without one (the message says why)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 422)


class RunInProgressError(IdentityError):
    def __init__(self, project: str) -> None:
        super().__init__(f"a retention run of {project} is in progress", 409)


class ProjectNotFoundError(IdentityError):
    def __init__(self, project: str) -> None:
        super().__init__(f"project {project} not found", 404)


def rule_from_json(spec: Mapping[str, Any]) -> RetentionRule:
    """A rule from its JSON form (the API's and the stored one)."""
    criterion = spec.get("criterion")
    if not isinstance(criterion, str):
        raise RuleError("criterion is required")
    value = spec.get("count") if spec.get("count") is not None else spec.get("days")
    if spec.get("count") is not None and spec.get("days") is not None:
        raise RuleError("give count or days, not both")
    return make_rule(
        criterion,
        value,
        repositories=spec.get("repositories", ("**",)),
        exclude_repositories=spec.get("excludeRepositories", ()),
        tags=spec.get("tags", ("*",)),
        exclude_tags=spec.get("excludeTags", ()),
        untagged=bool(spec.get("untagged", False)),
        remove_protected=bool(spec.get("removeProtected", False)),
    )


def rule_to_json(rule: RetentionRule) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "criterion": rule.criterion.value,
        "repositories": list(rule.repositories),
        "excludeRepositories": list(rule.exclude_repositories),
        "tags": list(rule.tags),
        "excludeTags": list(rule.exclude_tags),
        "untagged": rule.untagged,
        "removeProtected": rule.remove_protected,
    }
    if rule.criterion.takes_count:
        spec["count"] = rule.value
    elif rule.criterion.takes_days:
        spec["days"] = rule.value
    return spec


def parse_rules(specs: Sequence[Mapping[str, Any]]) -> tuple[RetentionRule, ...]:
    rules = []
    for number, spec in enumerate(specs, 1):
        try:
            rules.append(rule_from_json(spec))
        except RuleError as error:
            raise PolicyError(f"rule {number}: {error}") from None
    try:
        return validate_rules(rules)
    except RuleError as error:
        raise PolicyError(str(error)) from None


@dataclass(slots=True)
class _Deleting:
    """The artifact a run is deleting (or checking, in a dry run) and the tags it was evaluated
    with; `changed` is set when the delete check found other tags."""

    repository: str
    digest: str
    tags: tuple[str, ...]
    changed: list[str] | None = field(default=None)


# Set around each of a run's deletions; read by the delete:manifest check (same task, and the
# registry's worker threads copy the context).
_DELETING: ContextVar[_Deleting | None] = ContextVar("retention_deleting", default=None)


@dataclass(frozen=True, slots=True)
class RunPlan:
    """The decisions of one repository and the order in which to delete."""

    repository: str
    decisions: tuple[DecisionRecord, ...]
    removals: tuple[str, ...]
    children: Mapping[str, tuple[str, ...]]  # of every artifact that goes


class RetentionService:
    def __init__(
        self,
        store: RetentionStore,
        pulls: PullStore,
        metadata: MetadataStore,
        registry: RegistryService,
        immutability: ImmutabilityService,
        policies: PolicySet,
        threads: Threads,
        events: EventBus,
    ) -> None:
        self._store = store
        self._pulls = pulls
        self._metadata = metadata
        self._registry = registry
        self._immutability = immutability
        self._policies = policies
        self._threads = threads
        self._events = events
        policies.register(DecisionPoint.DELETE_MANIFEST, self.check_unchanged)

    async def check_unchanged(self, context: PolicyContext) -> Decision:
        """At delete:manifest, for a retention deletion: the manifest still has exactly the tags
        it was evaluated with. The registry's delete insists that the tags this check read
        still hold when it writes (else it checks again), so a tag pushed at any moment of a
        run is never deleted with an old digest."""
        deleting = _DELETING.get()
        if (
            deleting is None
            or context.state is None
            or context.repository != deleting.repository
            or context.digest != deleting.digest
        ):
            return Allow()
        tags = sorted(await context.state.manifest_tags())
        if tags == sorted(deleting.tags):
            return Allow()
        deleting.changed = tags
        return Deny(
            f"{context.repository}@{context.digest} was tagged {tags} after retention evaluated"
            " it; it stays",
            "retention",
        )

    # -- policies

    async def policy(self, project: str) -> PolicyRecord | None:
        return await self._threads.run(self._store.policy, project)

    async def policies(self) -> list[PolicyRecord]:
        return await self._threads.run(self._store.policies)

    async def put_policy(
        self,
        actor: Actor,
        project: str,
        rules: Sequence[Mapping[str, Any]],
        cron: str | None,
        enabled: bool,
    ) -> tuple[PolicyRecord, bool]:
        parsed = parse_rules(rules)
        next_run_at = None
        if cron is not None:
            try:
                next_run_at = parse_cron(cron).next_after(datetime.now(UTC))
            except ScheduleError as error:
                raise PolicyError(f"schedule: {error}") from None
        stored = [rule_to_json(rule) for rule in parsed]
        try:
            record, created = await self._threads.run(
                self._store.put_policy,
                project,
                stored,
                cron,
                enabled,
                next_run_at if enabled else None,
                actor.name,
            )
        except ProjectMissingError:
            raise ProjectNotFoundError(project) from None
        self._events.publish(
            AccessEvent(
                "retention:policy-create" if created else "retention:policy-update",
                actor,
                project=project,
                resource=project,
                details={"rules": stored, "cron": cron, "enabled": enabled},
            )
        )
        return record, created

    async def delete_policy(self, actor: Actor, project: str) -> bool:
        try:
            deleted = await self._threads.run(self._store.delete_policy, project)
        except ProjectMissingError:
            raise ProjectNotFoundError(project) from None
        if deleted:
            self._events.publish(
                AccessEvent("retention:policy-delete", actor, project=project, resource=project)
            )
        return deleted

    # -- history

    async def runs(self, project: str, limit: int, before: int | None) -> list[RunRecord]:
        return await self._threads.run(self._store.runs, project, limit, before)

    async def run_record(self, run_id: int) -> RunRecord | None:
        return await self._threads.run(self._store.run, run_id)

    async def decisions(
        self, run_id: int, *, after: int | None, limit: int, outcome: str | None
    ) -> list[DecisionRecord]:
        return await self._threads.run(
            self._store.decisions, run_id, after=after, limit=limit, outcome=outcome
        )

    # -- runs

    async def run(
        self, actor: Actor, project: str, *, dry_run: bool, trigger: str = "manual"
    ) -> RunRecord:
        """Evaluate the project's policy and (unless `dry_run`) delete what goes."""
        policy = await self.policy(project)
        if policy is None:
            if not await self._threads.run(self._store.project_exists, project):
                raise ProjectNotFoundError(project)
            raise PolicyError(f"project {project} has no retention policy")
        rules = parse_rules(policy.rules)
        try:
            run = await self._threads.run(
                lambda: self._store.start_run(
                    project,
                    dry_run=dry_run,
                    trigger=trigger,
                    requested_by=actor.name,
                    rules=policy.rules,
                    lease_seconds=LEASE_SECONDS,
                )
            )
        except ProjectMissingError:
            raise ProjectNotFoundError(project) from None
        if run is None:
            raise RunInProgressError(project)
        status, error = SUCCEEDED, None
        try:
            immutable = await self._threads.run(self._immutability.rules_of, project)
            now = datetime.now(UTC)
            for repository in await self._threads.run(self._store.repositories, project):
                if not covers_repository(rules, repository):
                    continue  # left alone entirely, and not listed in the run's decisions
                plan = await self._plan(rules, repository, immutable, now)
                decided = await self._carry_out(actor, plan, dry_run=dry_run)
                await self._threads.run(
                    self._store.record_decisions, run.id, decided, LEASE_SECONDS
                )
                if any(d.outcome == "failed" for d in decided):
                    status = PARTIAL
        except Exception as failure:
            log.exception("retention run %s of %s failed", run.id, project)
            status, error = FAILED, f"{type(failure).__name__}: {failure}"
        finished = await self._threads.run(self._store.finish_run, run.id, status, error)
        if finished is None:
            raise ProjectNotFoundError(project)  # deleted while the run was in progress
        self._events.publish(
            AccessEvent(
                "retention:run",
                actor,
                result="success" if status != FAILED else "failure",
                project=project,
                resource=project,
                details={
                    "run": finished.id,
                    "dry_run": dry_run,
                    "trigger": trigger,
                    "artifacts": finished.artifacts,
                    "removed": finished.removed,
                    "kept": finished.kept,
                    "failed": finished.failed,
                },
            )
        )
        return finished

    async def _plan(
        self, rules: Sequence[RetentionRule], repository: str, immutable: Any, now: datetime
    ) -> RunPlan:
        stored = await self._threads.run(self._store.artifacts, repository)
        pulled = await self._threads.run(
            self._pulls.last_pulled, repository, [a.digest for a in stored]
        )
        artifacts = [
            Artifact(
                digest=a.digest,
                pushed_at=a.pushed_at,
                tags=a.tags,
                pulled_at=pulled.get(a.digest),
                children=a.children,
                subject=a.subject,
                promoted_to=a.promoted_to,
            )
            for a in stored
        ]
        plan = evaluate(rules, repository, artifacts, now=now, immutable_rules=immutable)
        decisions = tuple(
            DecisionRecord(
                0,
                repository,
                d.digest,
                list(d.tags),
                "kept" if d.keep else "remove",
                d.reason,
                d.rule,
            )
            for d in plan.decisions
        )
        children = {a.digest: a.children for a in artifacts if a.digest in set(plan.removals)}
        return RunPlan(repository, decisions, plan.removals, children)

    async def _carry_out(
        self, actor: Actor, plan: RunPlan, *, dry_run: bool
    ) -> list[DecisionRecord]:
        """Delete (or, in a dry run, check) in the plan's order; the final decisions."""
        by_digest = {d.digest: d for d in plan.decisions}
        final = {d.digest: d for d in plan.decisions if d.outcome == "kept"}
        # An index whose removal did not happen keeps its children (the delete path would
        # refuse them); the order puts every index before its children.
        staying: dict[str, str] = {}  # child -> the index that stays
        for digest in plan.removals:
            decision = by_digest[digest]
            if digest in staying:
                outcome, reason = "kept", f"child of {staying[digest]}, which stays"
            else:
                outcome, reason = await self._remove(actor, plan.repository, decision, dry_run)
            final[digest] = DecisionRecord(
                0, plan.repository, digest, decision.tags, outcome, reason, None
            )
            if outcome not in ("removed", "would-remove"):
                for child in plan.children.get(digest, ()):
                    staying.setdefault(child, digest)
        return [final[d.digest] for d in plan.decisions]

    async def _remove(
        self, actor: Actor, repository: str, decision: DecisionRecord, dry_run: bool
    ) -> tuple[str, str]:
        digest = decision.digest
        now_tags = await self._threads.run(self._store.current_tags, repository, digest)
        if now_tags is None:
            return "skipped", "no longer in the repository"
        if sorted(now_tags) != sorted(decision.tags):
            return "skipped", f"tagged {sorted(now_tags)} since it was evaluated"
        deleting = _Deleting(repository, digest, tuple(decision.tags))
        token = _DELETING.set(deleting)
        try:
            outcome, reason = await self._delete(actor, repository, decision, dry_run)
        finally:
            _DELETING.reset(token)
        if deleting.changed is not None:
            return "skipped", f"tagged {deleting.changed} since it was evaluated"
        return outcome, reason

    async def _delete(
        self, actor: Actor, repository: str, decision: DecisionRecord, dry_run: bool
    ) -> tuple[str, str]:
        digest = decision.digest
        if dry_run:
            denials = await self._policies.evaluate(
                PolicyContext(
                    DecisionPoint.DELETE_MANIFEST,
                    repository,
                    actor,
                    digest,
                    state=ObservedState(self._metadata, self._threads, repository, None, digest),
                )
            )
            if denials:
                return "refused", "; ".join(d.reason for d in denials)
            return "would-remove", decision.reason
        try:
            await self._registry.delete_manifest(repository, Reference.parse(digest), actor)
        except RegistryError as error:
            if error.code is ErrorCode.DENIED and error.status != 409:
                return "refused", error.message
            if error.code is ErrorCode.MANIFEST_UNKNOWN:
                return "skipped", "no longer in the repository"
            return "failed", error.message
        return "removed", decision.reason

    # -- schedule

    async def run_due(self) -> int:
        """Run every policy whose cron firing has come (each once per deployment)."""
        ran = 0
        now = datetime.now(UTC)
        for policy in await self._threads.run(self._store.due, now):
            if policy.next_run_at is None or policy.cron is None:
                continue
            following = parse_cron(policy.cron).next_after(now)
            if not await self._threads.run(
                self._store.advance, policy.project, policy.next_run_at, following
            ):
                continue  # another process took this firing
            try:
                await self.run(SYSTEM, policy.project, dry_run=False, trigger="schedule")
                ran += 1
            except RunInProgressError:
                log.info(
                    "retention of %s: a run is in progress; skipping this firing", policy.project
                )
            except Exception:
                log.exception("scheduled retention of %s failed", policy.project)
        return ran
