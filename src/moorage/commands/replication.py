"""`moorage replication`: remote registries, replication rules, runs and their history, through
the same endpoints as /api/v1 (see `moorage.commands.api`).

Runs queued here are carried out by the running server's replication engine, as runs queued
through the API are.
"""

from __future__ import annotations

import click

from moorage.commands.api import api_command
from moorage.http.api.replication import EXECUTION, REGISTRIES, REGISTRY, RULE, RULES


@click.group()
def replication() -> None:
    """Replication between this registry and others."""


@replication.group("registry")
def registry() -> None:
    """Remote registries that rules push to or pull from (credentials are never shown)."""


_REGISTRY_COLUMNS = ("id", "name", "url", "kind", "username", "credential", "verifyTls")
api_command(registry, "list", "GET", REGISTRIES, columns=_REGISTRY_COLUMNS)
api_command(
    registry,
    "add",
    "POST",
    REGISTRIES,
    help="Register a remote registry. A password or token is read from standard input"
    ' (--password-stdin, --token-stdin). Example: echo "$SECRET" | moorage replication'
    " registry add --name dr --url https://dr.example.org --kind moorage --username robot"
    " --password-stdin",
    done="registered remote registry {name} (id {result_id})",
)
api_command(registry, "show", "GET", REGISTRY)
api_command(
    registry,
    "replace",
    "PUT",
    REGISTRY,
    help="Replace a remote registry's complete definition (as `add` takes it); a stored"
    " credential is kept while the username stays the same.",
    done="changed remote registry {registry}",
)
api_command(registry, "remove", "DELETE", REGISTRY, done="removed remote registry {registry}")
api_command(registry, "check", "POST", f"{REGISTRY}/check")


@replication.group("rule")
def rule() -> None:
    """Replication rules: what to copy where, and when."""


_RULE_COLUMNS = (
    "id",
    "name",
    "endpoint",
    "direction",
    "repositories",
    "tags",
    "trigger",
    "enabled",
)
api_command(rule, "list", "GET", RULES, columns=_RULE_COLUMNS)
api_command(
    rule,
    "add",
    "POST",
    RULES,
    help="Add a replication rule. Example: moorage replication rule add --name to-dr"
    " --endpoint-id 1 --direction push --repositories 'team/**' --tags 'v*' --trigger event",
    done="added replication rule {name} (id {result_id})",
)
api_command(rule, "show", "GET", RULE)
api_command(
    rule,
    "replace",
    "PUT",
    RULE,
    help="Replace a rule's complete definition (as `add` takes it).",
    done="changed replication rule {rule}",
)
api_command(rule, "remove", "DELETE", RULE, done="removed replication rule {rule}")
api_command(
    rule,
    "run",
    "POST",
    f"{RULE}/run",
    help="Run a rule now: queues an execution that the server carries out.",
    done="queued execution {result_id} of rule {rule}",
)
api_command(
    rule,
    "executions",
    "GET",
    f"{RULE}/executions",
    columns=("id", "trigger", "status", "total", "succeeded", "failed", "createdAt"),
)


@replication.group("execution")
def execution() -> None:
    """Executions of rules and their per-image tasks."""


api_command(execution, "show", "GET", EXECUTION)
api_command(execution, "tasks", "GET", f"{EXECUTION}/tasks")
