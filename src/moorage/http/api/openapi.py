"""The OpenAPI 3.1 document, generated from the API route table and its pydantic models.

Every operation lists the statuses its kind of route can answer: problem details for errors,
the declared model (or an array of it, with a Link header when paged) for success.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any, Final

from pydantic import ConfigDict
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from moorage.http.access import PUBLIC, Permission, Scope
from moorage.http.api.common import PATH_PARAMETERS
from moorage.http.api.framework import ApiModel, ApiRoute, Call
from moorage.http.errors import PROBLEM_JSON

DOCUMENT_PATH: Final = "/api/v1/openapi.json"
_REF: Final = "#/components/schemas/{model}"
# {name} or {name:pattern} in an aiohttp path
_PATH_PARAM: Final = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::[^{}]*)?\}")
_SECURITY_SCHEMES: Final = {
    "basicAuth": {
        "type": "http",
        "scheme": "basic",
        "description": "a password, a personal access token (mpat_…) or a robot's secret",
    },
    "bearerAuth": {
        "type": "http",
        "scheme": "bearer",
        "description": "a personal access token: Authorization: Bearer mpat_…",
    },
}
_ERROR_HEADERS: Final = {
    401: {"WWW-Authenticate": {"description": "Basic realm", "schema": {"type": "string"}}},
    429: {"Retry-After": {"description": "seconds to wait", "schema": {"type": "string"}}},
}

SchemaKey = tuple[type[ApiModel] | type[Any], JsonSchemaMode]


class FieldError(ApiModel):
    field: str
    message: str


class Problem(ApiModel):
    """RFC 9457 problem details."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    code: str | None = None  # the OCI error code, when a registry rule refused the request
    errors: list[FieldError] | None = None  # which fields of the request are wrong


class OpenApiDocument(ApiModel):
    model_config = ConfigDict(extra="allow")

    openapi: str


def build_document(routes: Sequence[ApiRoute], min_password_length: int) -> dict[str, Any]:
    refs, components = _component_schemas(routes)
    _require_password_length(components, min_password_length)
    paths: dict[str, dict[str, Any]] = {}
    operation_ids: set[str] = set()
    for route in routes:
        operation = _operation(route, refs)
        if operation["operationId"] in operation_ids:
            raise ValueError(f"two routes are named {operation['operationId']}")
        operation_ids.add(operation["operationId"])
        paths.setdefault(openapi_path(route.path), {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Moorage management API",
            "version": "1",
            "description": "Users, groups, projects, members, grants, immutable tag rules, roles,"
            " robots, tokens, settings and the audit log. Errors are RFC 9457 problem details.",
        },
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": _SECURITY_SCHEMES},
        "security": [{"basicAuth": []}, {"bearerAuth": []}],
    }


def _require_password_length(schema: object, length: int) -> None:
    """Every `format: password` field takes the configured minimum length."""
    if isinstance(schema, dict):
        if schema.get("format") == "password":
            schema["minLength"] = length
        for value in schema.values():
            _require_password_length(value, length)
    elif isinstance(schema, list):
        for value in schema:
            _require_password_length(value, length)


def openapi_path(path: str) -> str:
    return _PATH_PARAM.sub(lambda match: "{" + match.group(1) + "}", path)


def _component_schemas(
    routes: Sequence[ApiRoute],
) -> tuple[dict[SchemaKey, dict[str, Any]], dict[str, Any]]:
    keys: set[SchemaKey] = {(Problem, "serialization")}
    for route in routes:
        if route.body is not None:
            keys.add((route.body, "validation"))
        if route.response is not None:
            keys.add((route.response, "serialization"))
    ordered = sorted(keys, key=lambda key: (key[0].__name__, key[1]))
    refs, definitions = models_json_schema(ordered, ref_template=_REF)
    return dict(refs), dict(definitions.get("$defs", {}))


def _operation(route: ApiRoute, refs: dict[SchemaKey, dict[str, Any]]) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": route.endpoint.__name__,
        "summary": route.summary,
        "tags": [route.tag],
        "x-permission": _permission_text(route.permission),
    }
    parameters = _path_parameters(route.path) + _query_parameters(route)
    if parameters:
        operation["parameters"] = parameters
    if route.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": refs[(route.body, "validation")]}},
        }
    elif route.consumes:
        # OpenAPI 3.1: a media type without a schema is any bytes (a file upload).
        operation["requestBody"] = {
            "required": True,
            "content": {media_type: {} for media_type in route.consumes},
        }
    problem = refs[(Problem, "serialization")]
    operation["responses"] = {
        str(route.status): _success(route, refs),
        **{str(status): _success(route, refs) for status in route.also},
        **{str(status): _error(status, problem) for status in _error_statuses(route)},
    }
    if route.permission.scope is Scope.PUBLIC:
        operation["security"] = []
    return operation


def _permission_text(permission: Permission) -> str:
    action = f":{permission.action}" if permission.action is not None else ""
    return f"{permission.scope}{action}"


def _path_parameters(path: str) -> list[dict[str, Any]]:
    return [
        {"name": name, "in": "path", "required": True, "schema": dict(PATH_PARAMETERS[name])}
        for name in _PATH_PARAM.findall(path)
    ]


def _query_parameters(route: ApiRoute) -> list[dict[str, Any]]:
    if route.query is None:
        return []
    schema = route.query.model_json_schema(by_alias=True, mode="validation")
    required = set(schema.get("required", ()))
    parameters = []
    for name, raw in schema["properties"].items():
        prop = _without_null(raw)
        description = prop.pop("description", None)
        parameter = {"name": name, "in": "query", "required": name in required, "schema": prop}
        if description:
            parameter["description"] = description
        parameters.append(parameter)
    return parameters


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter is present or absent, never null: drop the null alternative."""
    prop = {key: value for key, value in schema.items() if key != "title"}
    options = [option for option in prop.pop("anyOf", []) if option != {"type": "null"}]
    if len(options) == 1:
        prop.update(options[0])
    elif options:
        prop["anyOf"] = options
    if prop.get("default", 0) is None:
        del prop["default"]
    return prop


def _success(route: ApiRoute, refs: dict[SchemaKey, dict[str, Any]]) -> dict[str, Any]:
    if route.produces:
        return {
            "description": route.summary,
            "content": {kind: {"schema": {"type": "object"}} for kind in route.produces},
            "headers": {
                "Content-Disposition": {
                    "description": "attachment; filename=...",
                    "schema": {"type": "string"},
                }
            },
        }
    if route.response is None:
        return {"description": "done"}
    schema = refs[(route.response, "serialization")]
    if route.many:
        schema = {"type": "array", "items": schema}
    response: dict[str, Any] = {
        "description": route.summary,
        "content": {"application/json": {"schema": schema}},
    }
    if route.paged:
        response["headers"] = {
            "Link": {
                "description": 'the next page, as <url>; rel="next" (absent on the last page)',
                "schema": {"type": "string"},
            }
        }
    return response


def _error_statuses(route: ApiRoute) -> list[int]:
    statuses = set(route.errors)
    if route.permission.scope is not Scope.PUBLIC:
        # bad input a service refuses, no or wrong credentials, not allowed, sign-in back-off
        statuses |= {400, 401, 403, 429}
    if route.query is not None:
        statuses.add(400)
    if route.body is not None:
        statuses |= {400, 413, 415, 422}
    if _PATH_PARAM.search(route.path):
        statuses.add(404)
    return sorted(statuses)


def _error(status: int, problem: dict[str, Any]) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": HTTPStatus(status).phrase,
        "content": {PROBLEM_JSON: {"schema": problem}},
    }
    if status in _ERROR_HEADERS:
        response["headers"] = _ERROR_HEADERS[status]
    return response


def document_route(routes: Sequence[ApiRoute]) -> ApiRoute:
    """The route serving the document of `routes` and of itself (built once, on first use)."""

    @functools.cache
    def document(min_password_length: int) -> OpenApiDocument:
        return OpenApiDocument.model_validate(build_document((*routes, route), min_password_length))

    async def get_openapi_document(call: Call) -> OpenApiDocument:
        return await call.run(document, call.iam.identity.policy.min_password_length)

    route = ApiRoute(
        "GET",
        DOCUMENT_PATH,
        get_openapi_document,
        PUBLIC,
        "This document (OpenAPI 3.1)",
        "meta",
        response=OpenApiDocument,
    )
    return route
