"""The OpenAPI document: public, complete, and true to the server, as schemathesis checks by
sending generated requests (valid and invalid) to every operation of a live server."""

from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from moorage.http.api import API_ROUTES
from moorage.http.api.openapi import openapi_path
from tests.support.api import API, PASSWORD, api_client
from tests.support.server import RegistryProcess

CHECKS = ",".join(
    (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
    )
)
FUZZ_PROJECTS = 30  # DELETE operations consume some; the rest keep project routes reachable


def _document(server: RegistryProcess) -> dict[str, Any]:
    response = httpx.get(f"{server.url}{API}/openapi.json")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    document: dict[str, Any] = response.json()
    return document


def test_the_document_is_public_and_describes_every_api_route(
    api_registry: RegistryProcess,
) -> None:
    document = _document(api_registry)
    assert document["openapi"] == "3.1.0"
    described = {
        (path, method.upper())
        for path, operations in document["paths"].items()
        for method in operations
    }
    assert described == {(openapi_path(route.path), route.method) for route in API_ROUTES}
    operation_ids = [
        operation["operationId"]
        for operations in document["paths"].values()
        for operation in operations.values()
    ]
    assert len(operation_ids) == len(set(operation_ids))
    assert set(document["components"]["securitySchemes"]) == {"basicAuth", "bearerAuth"}
    assert document["security"] == [{"basicAuth": []}, {"bearerAuth": []}]


def test_operations_state_their_permission_statuses_and_errors(
    api_registry: RegistryProcess,
) -> None:
    paths = _document(api_registry)["paths"]
    assert paths["/api/v1/openapi.json"]["get"]["security"] == []
    create_user = paths["/api/v1/users"]["post"]
    assert create_user["x-permission"] == "registry:admin"
    assert set(create_user["responses"]) == {
        "201",
        "400",
        "401",
        "403",
        "409",
        "413",
        "415",
        "422",
        "429",
    }
    problem = create_user["responses"]["422"]["content"]["application/problem+json"]["schema"]
    assert problem == {"$ref": "#/components/schemas/Problem"}
    members = paths["/api/v1/projects/{project}/members/{kind}/{member}"]["put"]
    assert members["x-permission"] == "project:manage-members"
    parameters = {p["name"]: p for p in members["parameters"]}
    assert parameters["kind"]["schema"]["enum"] == ["user", "group"]
    listing = paths["/api/v1/users"]["get"]
    assert "Link" in listing["responses"]["200"]["headers"]
    limit = next(p for p in listing["parameters"] if p["name"] == "limit")
    assert limit["schema"]["maximum"] == 100
    assert paths["/api/v1/users/{username}"]["delete"]["responses"]["204"] == {
        "description": "done"
    }


def test_password_fields_state_the_configured_minimum(api_registry: RegistryProcess) -> None:
    schemas = _document(api_registry)["components"]["schemas"]
    assert schemas["NewUser"]["properties"]["password"]["minLength"] == 12
    assert schemas["PasswordChange"]["properties"]["newPassword"]["minLength"] == 12
    assert schemas["NewUser"]["required"] == ["username", "password"]
    assert schemas["NewUser"]["additionalProperties"] is False


def _seed(server: RegistryProcess) -> tuple[str, dict[str, list[str]]]:
    """An administrator for the fuzzer with a name it cannot guess, and real objects to aim at."""
    fuzzer = f"fuzz-{secrets.token_hex(6)}"
    with api_client(server) as admin:
        created = admin.post(
            "/users", json={"username": fuzzer, "password": PASSWORD, "admin": True}
        )
        assert created.status_code == 201
        projects = [f"fuzz-{index}" for index in range(FUZZ_PROJECTS)]
        for project in projects:
            assert admin.post("/projects", json={"name": project}).status_code == 201
            robot = {"name": "ci", "permissions": [{"project": project, "actions": ["pull"]}]}
            assert admin.post(f"/projects/{project}/robots", json=robot).status_code == 201
        victims = [f"victim-{index}" for index in range(10)]
        for victim in victims:
            admin.post("/users", json={"username": victim, "password": PASSWORD})
            admin.put(f"/projects/{projects[0]}/members/user/{victim}", json={"role": "guest"})
        for group in ("builders", "readers"):
            admin.post("/groups", json={"name": group})
        admin.put("/roles/auditor", json={"actions": ["read-project", "read-audit"]})
        admin.post(
            "/robots", json={"name": "sync", "permissions": [{"project": "*", "actions": ["pull"]}]}
        )
    values = {
        "projects": projects,
        "users": victims,
        "groups": ["builders", "readers"],
        "roles": ["auditor", "developer", "guest"],
        "robots": ["ci", "sync"],
    }
    return fuzzer, values


def _config(directory: Path, values: dict[str, list[str]]) -> Path:
    """Bind path parameters to existing objects half of the time, so operations get past 404."""
    lines = ["[cache]", "enabled = false", ""]
    for name, items in values.items():
        quoted = ", ".join(f'"{item}"' for item in items)
        lines += [f"[dictionaries.{name}]", f"values = [{quoted}]", ""]
    bindings = {
        "project": "projects",
        "username": "users",
        "member": "users",
        "group": "groups",
        "role": "roles",
        "robot": "robots",
    }
    lines.append("[parameters]")
    for parameter, dictionary in bindings.items():
        lines.append(f'"path.{parameter}" = {{ dictionary = "{dictionary}", probability = 0.5 }}')
    path = directory / "schemathesis.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.slow
def test_schemathesis_finds_no_server_errors_and_no_schema_violations(
    start_registry: Any, tmp_path: Path
) -> None:
    # A server of its own: the fuzzer deletes, disables and renames whatever it finds.
    server: RegistryProcess = start_registry()
    fuzzer, values = _seed(server)
    config = _config(tmp_path, values)
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "--config-file",
        str(config),
        "--no-color",
        "run",
        f"{server.url}{API}/openapi.json",
        "--auth",
        f"{fuzzer}:{PASSWORD}",
        "--checks",
        CHECKS,
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        "25",
        "--seed",
        "20261123",
        "--workers",
        "1",  # the generator is not thread-safe on CPython 3.11 (AST recursion errors)
        "--no-shrink",
        "--request-timeout",
        "20",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path / "report"),
    ]
    # A hang guard, not a speed limit: the run took two minutes on a busy machine.
    run = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False
    )
    # The failures section names each failing operation and check; the tail is the summary.
    failures = run.stdout.find("FAILURES")
    output = run.stdout[max(failures, 0) :][:12000] + run.stdout[-3000:] + run.stderr[-4000:]
    assert run.returncode == 0, output
    assert "passed" in run.stdout
    assert "unhandled error" not in server.logs(), server.logs()[-4000:]
    # The fuzzer kept its own account usable: it cannot disable, demote or delete itself.
    with api_client(server, fuzzer, PASSWORD) as client:
        me = client.get("/users/me").json()
    assert me["admin"] is True
    assert me["disabled"] is False
