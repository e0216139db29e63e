"""Replication: remote registry endpoints, rules, manual runs and the history of each rule.

Everything here needs `admin`. An endpoint's credential is shared by every rule that uses it
and a rule acts with it on the remote, so letting project admins write rules would let them
use a credential they were never given; reading the history is admin-only for the same reason
(task errors name remote repositories). Credentials are write-only: replies say only which kind
is set.
"""

from __future__ import annotations

from moorage.domain.replication import Filters, NameMapping, Schedule
from moorage.http.access import ADMIN
from moorage.http.api.framework import ApiRoute, Call
from moorage.http.api.replication_models import (
    ExecutionsQuery,
    RegistryCheck,
    RegistryEndpoint,
    RegistryEndpointInput,
    ReplicationExecution,
    ReplicationRule,
    ReplicationRuleInput,
    ReplicationTask,
    TasksQuery,
)
from moorage.http.state import REPLICATION
from moorage.metadata.distribution.replication_store import ExecutionRecord, RuleRecord, TaskRecord
from moorage.services.distribution.proxy import UpstreamError
from moorage.services.distribution.replication import (
    EndpointInput,
    EndpointView,
    ReplicationService,
    RuleInput,
    rule_filters,
)

TAG = "replication"
BASE = "/api/v1/replication"
REGISTRIES = f"{BASE}/registries"
REGISTRY = f"{REGISTRIES}/{{registry:[0-9]+}}"
RULES = f"{BASE}/rules"
RULE = f"{RULES}/{{rule:[0-9]+}}"
EXECUTION = f"{BASE}/executions/{{execution:[0-9]+}}"


def _service(call: Call) -> ReplicationService:
    return call.request.app[REPLICATION]


def _endpoint(view: EndpointView) -> RegistryEndpoint:
    return RegistryEndpoint.model_validate(
        {
            "id": view.id,
            "name": view.name,
            "url": view.url,
            "kind": view.kind,
            "username": view.username,
            "credential": view.credential,
            "ca_bundle": view.ca_bundle,
            "verify_tls": view.verify_tls,
            "allow_private_network": view.allow_private_network,
            "timeout_seconds": view.timeout_seconds,
            "updated_by": view.updated_by,
            "updated_at": view.updated_at,
        }
    )


def _rule(rule: RuleRecord, endpoints: dict[int, str]) -> ReplicationRule:
    filters = rule_filters(rule)
    return ReplicationRule.model_validate(
        {
            "id": rule.id,
            "name": rule.name,
            "endpoint_id": rule.endpoint_id,
            "endpoint": endpoints.get(rule.endpoint_id, ""),
            "direction": rule.direction,
            "repositories": list(filters.repositories),
            "exclude_repositories": list(filters.exclude_repositories),
            "tags": list(filters.tags),
            "exclude_tags": list(filters.exclude_tags),
            "destination_prefix": rule.destination_prefix,
            "strip_segments": rule.strip_segments,
            "trigger": rule.trigger,
            "interval_seconds": rule.interval_seconds,
            "cron": rule.cron,
            "replicate_deletions": rule.replicate_deletions,
            "mirror_deletions": rule.mirror_deletions,
            "enabled": rule.enabled,
            "next_run_at": rule.next_run_at,
            "updated_by": rule.updated_by,
            "updated_at": rule.updated_at,
        }
    )


def _execution(record: ExecutionRecord) -> ReplicationExecution:
    counts = record.counts
    return ReplicationExecution.model_validate(
        {
            "id": record.id,
            "rule_id": record.rule_id,
            "trigger": record.trigger,
            "triggered_by": record.triggered_by,
            "status": record.status,
            "message": record.message,
            "created_at": record.created_at,
            "finished_at": record.finished_at,
            "total": sum(counts.values()),
            "pending": counts.get("pending", 0),
            "running": counts.get("running", 0),
            "succeeded": counts.get("succeeded", 0),
            "failed": counts.get("failed", 0),
        }
    )


def _task(record: TaskRecord) -> ReplicationTask:
    return ReplicationTask.model_validate(
        {
            "id": record.id,
            "execution_id": record.execution_id,
            "operation": record.operation,
            "source": record.source,
            "destination": record.destination,
            "tag": record.tag,
            "digest": record.digest,
            "status": record.status,
            "attempts": record.attempts,
            "next_attempt_at": record.next_attempt_at,
            "error": record.error,
            "bytes_copied": record.bytes_copied,
            "blobs_copied": record.blobs_copied,
            "blobs_skipped": record.blobs_skipped,
            "referrers_copied": record.referrers_copied,
            "updated_at": record.updated_at,
            "finished_at": record.finished_at,
        }
    )


def _endpoint_input(body: RegistryEndpointInput) -> EndpointInput:
    return EndpointInput(
        name=body.name,
        url=body.url,
        kind=body.kind,
        username=body.username,
        password=body.password,
        token=body.token,
        clear_credentials=body.clear_credentials,
        ca_bundle=body.ca_bundle,
        verify_tls=body.verify_tls,
        allow_private_network=body.allow_private_network,
        timeout_seconds=body.timeout_seconds,
    )


def _rule_input(body: ReplicationRuleInput) -> RuleInput:
    schedule = Schedule(body.interval_seconds, body.cron) if body.trigger == "schedule" else None
    return RuleInput(
        name=body.name,
        endpoint_id=body.endpoint_id,
        direction=body.direction,
        filters=Filters(
            tuple(body.repositories),
            tuple(body.exclude_repositories),
            tuple(body.tags),
            tuple(body.exclude_tags),
        ),
        mapping=NameMapping(body.destination_prefix, body.strip_segments),
        trigger=body.trigger,
        schedule=schedule,
        replicate_deletions=body.replicate_deletions,
        mirror_deletions=body.mirror_deletions,
        enabled=body.enabled,
    )


# -- endpoints


async def list_registries(call: Call) -> list[RegistryEndpoint]:
    return [_endpoint(view) for view in await call.run(_service(call).endpoints)]


async def create_registry(call: Call) -> RegistryEndpoint:
    given = _endpoint_input(call.body(RegistryEndpointInput))
    return _endpoint(await call.run(_service(call).save_endpoint, call.actor, None, given))


async def get_registry(call: Call) -> RegistryEndpoint:
    return _endpoint(await call.run(_service(call).endpoint, call.id_param("registry")))


async def replace_registry(call: Call) -> RegistryEndpoint:
    given = _endpoint_input(call.body(RegistryEndpointInput))
    registry = call.id_param("registry")
    return _endpoint(await call.run(_service(call).save_endpoint, call.actor, registry, given))


async def delete_registry(call: Call) -> None:
    await call.run(_service(call).delete_endpoint, call.actor, call.id_param("registry"))


async def check_registry(call: Call) -> RegistryCheck:
    """Reach the remote's /v2/ with the stored configuration and credential."""
    service = _service(call)
    registry = call.id_param("registry")
    await call.run(service.endpoint, registry)  # 404 for an unknown endpoint
    try:
        await service.check_endpoint(registry)
    except UpstreamError as error:
        return RegistryCheck(ok=False, message=f"{error.kind}: {error}")
    return RegistryCheck(ok=True, message="the remote answered and accepted the credentials")


# -- rules


async def list_rules(call: Call) -> list[ReplicationRule]:
    service = _service(call)
    names = await call.run(service.endpoint_names)
    return [_rule(rule, names) for rule in await call.run(service.rules)]


async def create_rule(call: Call) -> ReplicationRule:
    service = _service(call)
    given = _rule_input(call.body(ReplicationRuleInput))
    rule = await call.run(service.save_rule, call.actor, None, given)
    return _rule(rule, await call.run(service.endpoint_names))


async def get_rule(call: Call) -> ReplicationRule:
    service = _service(call)
    rule = await call.run(service.rule, call.id_param("rule"))
    return _rule(rule, await call.run(service.endpoint_names))


async def replace_rule(call: Call) -> ReplicationRule:
    service = _service(call)
    given = _rule_input(call.body(ReplicationRuleInput))
    rule = await call.run(service.save_rule, call.actor, call.id_param("rule"), given)
    return _rule(rule, await call.run(service.endpoint_names))


async def delete_rule(call: Call) -> None:
    await call.run(_service(call).delete_rule, call.actor, call.id_param("rule"))


async def run_rule(call: Call) -> ReplicationExecution:
    service = _service(call)
    return _execution(await call.run(service.run_rule, call.actor, call.id_param("rule")))


# -- history


async def list_executions(call: Call) -> list[ReplicationExecution]:
    query = call.query(ExecutionsQuery)
    records = await call.run(
        _service(call).executions, call.id_param("rule"), query.before, query.limit
    )
    return [_execution(record) for record in records]


async def get_execution(call: Call) -> ReplicationExecution:
    return _execution(await call.run(_service(call).execution, call.id_param("execution")))


async def list_tasks(call: Call) -> list[ReplicationTask]:
    query = call.query(TasksQuery)
    records = await call.run(
        _service(call).tasks, call.id_param("execution"), query.after, query.limit
    )
    return [_task(record) for record in records]


ROUTES: tuple[ApiRoute, ...] = (
    ApiRoute(
        "GET",
        REGISTRIES,
        list_registries,
        ADMIN,
        "Remote registries replication rules can use (credentials are never returned)",
        TAG,
        response=RegistryEndpoint,
        many=True,
    ),
    ApiRoute(
        "POST",
        REGISTRIES,
        create_registry,
        ADMIN,
        "Register a remote registry",
        TAG,
        body=RegistryEndpointInput,
        response=RegistryEndpoint,
        status=201,
        errors=(409,),
    ),
    ApiRoute(
        "GET",
        REGISTRY,
        get_registry,
        ADMIN,
        "One remote registry",
        TAG,
        response=RegistryEndpoint,
    ),
    ApiRoute(
        "PUT",
        REGISTRY,
        replace_registry,
        ADMIN,
        "Change a remote registry",
        TAG,
        body=RegistryEndpointInput,
        response=RegistryEndpoint,
        errors=(409,),
    ),
    ApiRoute(
        "DELETE",
        REGISTRY,
        delete_registry,
        ADMIN,
        "Remove a remote registry no rule uses",
        TAG,
        status=204,
        errors=(409,),
    ),
    ApiRoute(
        "POST",
        f"{REGISTRY}/check",
        check_registry,
        ADMIN,
        "Check that the remote answers and accepts the stored credential",
        TAG,
        response=RegistryCheck,
    ),
    ApiRoute(
        "GET",
        RULES,
        list_rules,
        ADMIN,
        "Replication rules",
        TAG,
        response=ReplicationRule,
        many=True,
    ),
    ApiRoute(
        "POST",
        RULES,
        create_rule,
        ADMIN,
        "Add a replication rule",
        TAG,
        body=ReplicationRuleInput,
        response=ReplicationRule,
        status=201,
        errors=(409,),
    ),
    ApiRoute("GET", RULE, get_rule, ADMIN, "One replication rule", TAG, response=ReplicationRule),
    ApiRoute(
        "PUT",
        RULE,
        replace_rule,
        ADMIN,
        "Change a replication rule",
        TAG,
        body=ReplicationRuleInput,
        response=ReplicationRule,
        errors=(409,),
    ),
    ApiRoute(
        "DELETE",
        RULE,
        delete_rule,
        ADMIN,
        "Remove a replication rule and its history",
        TAG,
        status=204,
    ),
    ApiRoute(
        "POST",
        f"{RULE}/run",
        run_rule,
        ADMIN,
        "Run a rule now: queues an execution",
        TAG,
        response=ReplicationExecution,
        status=202,
        errors=(409,),
    ),
    ApiRoute(
        "GET",
        f"{RULE}/executions",
        list_executions,
        ADMIN,
        "The rule's executions, newest first",
        TAG,
        query=ExecutionsQuery,
        response=ReplicationExecution,
        many=True,
    ),
    ApiRoute(
        "GET",
        EXECUTION,
        get_execution,
        ADMIN,
        "One execution with its progress",
        TAG,
        response=ReplicationExecution,
    ),
    ApiRoute(
        "GET",
        f"{EXECUTION}/tasks",
        list_tasks,
        ADMIN,
        "The execution's tasks with their attempts and error reasons",
        TAG,
        query=TasksQuery,
        response=ReplicationTask,
        many=True,
    ),
)
