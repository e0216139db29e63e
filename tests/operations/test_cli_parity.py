"""Everything the API can change, the command line can change: each mutating route of the route
table has a `moorage` command, or an exclusion here that says why it makes sense only over HTTP.

Most commands run the API's own endpoint in-process (`moorage.commands.api.COMMAND_ROUTES`
records which); the older ones call the same services directly and are declared below.
"""

from __future__ import annotations

from collections.abc import Iterator

import click
import pytest

from moorage.cli import main
from moorage.commands.api import COMMAND_ROUTES
from moorage.http.api import RESOURCE_ROUTES
from moorage.http.routes import ROUTES

READS = frozenset({"GET", "HEAD"})

# API operation → the command that does the same through the same service, for commands that
# predate the in-process API runner.
SERVICE_COMMANDS: dict[tuple[str, str], str] = {
    ("POST", "/api/v1/users"): "user create",
    ("DELETE", "/api/v1/users/{username}"): "user delete",
    ("PUT", "/api/v1/users/{username}/password"): "user passwd",
    # The caller's own account: the command line names the account instead.
    ("PUT", "/api/v1/users/me/password"): "user passwd",
    ("POST", "/api/v1/users/me/tokens"): "token create",
    ("DELETE", "/api/v1/users/me/tokens/{token}"): "token revoke",
    ("POST", "/api/v1/groups"): "group create",
    ("DELETE", "/api/v1/groups/{group}"): "group delete",
    ("PUT", "/api/v1/groups/{group}/members/{username}"): "group add-member",
    ("DELETE", "/api/v1/groups/{group}/members/{username}"): "group remove-member",
    ("POST", "/api/v1/projects"): "project create",
    ("PATCH", "/api/v1/projects/{project}"): "project set-public",
    ("DELETE", "/api/v1/projects/{project}"): "project delete",
    ("PUT", "/api/v1/projects/{project}/members/{kind:(?:user|group)}/{member}"): "member set",
    ("DELETE", "/api/v1/projects/{project}/members/{kind:(?:user|group)}/{member}"): (
        "member remove"
    ),
    ("POST", "/api/v1/projects/{project}/robots"): "robot create",
    ("DELETE", "/api/v1/projects/{project}/robots/{robot}"): "robot delete",
    ("POST", "/api/v1/projects/{project}/robots/{robot}/rotate"): "robot rotate",
    ("POST", "/api/v1/robots"): "robot create",
    ("DELETE", "/api/v1/robots/{robot}"): "robot delete",
    ("POST", "/api/v1/robots/{robot}/rotate"): "robot rotate",
    ("POST", "/api/v1/promotions"): "promote",
    ("POST", "/api/v1/signing-keys/rotate"): "keys rotate",
    ("POST", "/api/v1/vulnerability-database"): "vulndb import",
    ("POST", "/api/v1/vulnerability-database/rollback"): "vulndb rollback",
    ("POST", "/api/v1/system/gc"): "gc",
    ("POST", "/api/v1/system/gc/runs/{gc_run:gc-[0-9]+-[0-9a-f]+}/stop"): "gc stop",
}
# ... and listings that such commands print.
SERVICE_READS: dict[tuple[str, str], str] = {
    ("GET", "/api/v1/system/gc/runs"): "gc runs",
    ("GET", "/api/v1/system/gc/runs/{gc_run:gc-[0-9]+-[0-9a-f]+}"): "gc show",
}

# API operations without a command, and why.
EXCLUDED: dict[tuple[str, str], str] = {
    ("POST", "/api/v1/projects/{project}/promotion-approvals"): (
        "an approval is a person's consent, recorded under their own account and counted per"
        " approver; the host's operator running a command is nobody who could give it"
    ),
}

# Routes outside /api/v1 are the registry protocols themselves, not management operations.
PROTOCOL_PREFIXES = {
    "/service/token": "token exchange: registry clients trade credentials for tokens",
    "/v2/": "the OCI Distribution API that registry clients (docker, skopeo, oras) speak",
    "/scanner/": "Harbor's scanner adapter API, which Harbor calls to have an image scanned",
    "/healthz": "a probe for load balancers",
    "/readyz": "a probe for load balancers: are the database, storage and Redis reachable",
}


def _commands(group: click.Group, prefix: str = "") -> Iterator[tuple[str, click.Command]]:
    context = click.Context(group)
    for name in group.list_commands(context):
        command = group.get_command(context, name)
        assert command is not None, name
        path = f"{prefix}{name}"
        yield path, command
        if isinstance(command, click.Group):
            yield from _commands(command, f"{path} ")


@pytest.fixture(scope="module")
def commands() -> dict[str, click.Command]:
    return dict(_commands(main))


def _covered(commands: dict[str, click.Command]) -> dict[tuple[str, str], str]:
    by_command = {command: path for path, command in commands.items()}
    covered = {
        route: by_command[command]
        for command, routes in COMMAND_ROUTES.items()
        if command in by_command
        for route in routes
    }
    return covered | SERVICE_COMMANDS | SERVICE_READS


def test_every_mutating_api_operation_has_a_command(commands: dict[str, click.Command]) -> None:
    covered = _covered(commands)
    mutating = {(r.method, r.path) for r in RESOURCE_ROUTES if r.method not in READS}
    missing = sorted(mutating - covered.keys() - EXCLUDED.keys())
    assert missing == [], f"API operations without a moorage command: {missing}"
    assert not covered.keys() & EXCLUDED.keys(), "an excluded operation has a command after all"
    assert EXCLUDED.keys() <= mutating
    assert SERVICE_COMMANDS.keys() <= mutating


def test_the_declared_commands_exist(commands: dict[str, click.Command]) -> None:
    declared = {*SERVICE_COMMANDS.values(), *SERVICE_READS.values()}
    assert sorted(declared - commands.keys()) == []


def test_commands_run_routes_that_exist(commands: dict[str, click.Command]) -> None:
    declared = {(r.method, r.path) for r in RESOURCE_ROUTES}
    for path, command in commands.items():
        for route in COMMAND_ROUTES.get(command, ()):
            assert route in declared, (path, route)


def test_every_api_listing_has_a_command(commands: dict[str, click.Command]) -> None:
    """Reads too, except the OpenAPI document, the caller's own profile and tokens (the
    command line has no signed-in caller; `user show`, `token list` name the account), the
    audit search (`audit export` writes the whole log) and the users, groups, projects,
    members and robots listings the older commands print."""
    covered = _covered(commands)
    not_needed = {
        ("GET", "/api/v1/openapi.json"),
        ("GET", "/api/v1/users/me"),
        ("GET", "/api/v1/users/me/tokens"),
        ("GET", "/api/v1/audit-logs"),
        ("GET", "/api/v1/projects/{project}/audit-logs"),
        ("GET", "/api/v1/users"),
        ("GET", "/api/v1/groups"),
        ("GET", "/api/v1/groups/{group}"),
        ("GET", "/api/v1/projects"),
        ("GET", "/api/v1/projects/{project}"),
        ("GET", "/api/v1/projects/{project}/members"),
        ("GET", "/api/v1/projects/{project}/robots"),
        ("GET", "/api/v1/projects/{project}/robots/{robot}"),
        ("GET", "/api/v1/robots"),
        ("GET", "/api/v1/robots/{robot}"),
        ("GET", "/api/v1/vulnerability-database"),
    }
    reads = {(r.method, r.path) for r in RESOURCE_ROUTES if r.method in READS}
    assert sorted(reads - covered.keys() - not_needed) == []


def test_routes_outside_the_management_api_are_protocols() -> None:
    for route in ROUTES:
        assert any(route.path.startswith(prefix) for prefix in PROTOCOL_PREFIXES), route.path
