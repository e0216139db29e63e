"""Declaring management API routes, and running them.

An `ApiRoute` is one row of the route table (method, path, permission) plus what the OpenAPI
document says about it. The same declaration drives the behaviour, so the document cannot drift
from it: the body is parsed with the declared model (at most 64 KiB of JSON), the query with the
declared query model, and the reply must be the declared response model, sent with the declared
status. Permissions are decided by the access middleware before an endpoint runs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Final, ParamSpec, TypeVar
from urllib.parse import urlencode

from aiohttp import web
from aiohttp.typedefs import Handler
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError
from pydantic.alias_generators import to_camel

from moorage.domain.events import Actor
from moorage.http.access import ACTOR, CALLER, PROJECT, Permission
from moorage.http.errors import ApiProblem
from moorage.http.responses import json_response
from moorage.http.state import IAM, IamServices
from moorage.services.access.identity import Subject

MAX_BODY_BYTES: Final = 64 * 1024
MAX_PAGE_SIZE: Final = 100
MAX_ID: Final = 2**63 - 1  # the largest row id the databases store
_MAX_FIELD_ERRORS: Final = 20

P = ParamSpec("P")
T = TypeVar("T")
B = TypeVar("B", bound="RequestModel")
Q = TypeVar("Q", bound="QueryModel")
M = TypeVar("M", bound="ApiModel")


def _as_utc(moment: datetime) -> datetime:
    # SQLite hands back naive UTC; the API always answers with an explicit zone.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


UtcDateTime = Annotated[datetime, AfterValidator(_as_utc)]


class ApiModel(BaseModel):
    """A response: snake_case in Python, camelCase on the wire."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        frozen=True,
    )


class RequestModel(BaseModel):
    """A request body: camelCase only, strict types, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=False,
        validate_by_alias=True,
        extra="forbid",
        strict=True,
        frozen=True,
    )


class QueryModel(BaseModel):
    """Query parameters: text from the URL, converted to the field types; unknown ones ignored."""

    model_config = ConfigDict(alias_generator=to_camel, extra="ignore", frozen=True)


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a long list; `next` is the query of the following page, if there is one."""

    items: Sequence[ApiModel]
    next: Mapping[str, str] | None = None


@dataclass(frozen=True, slots=True)
class Download:
    """A document sent as it is (an SBOM), for a route that declares its media types."""

    body: bytes
    media_type: str
    filename: str


@dataclass(frozen=True, slots=True)
class Reply:
    """A reply with another success status the route declares in `also` (200 for a request
    that found its work already done, where the route's own status is 201)."""

    result: ApiModel
    status: int


Result = ApiModel | Sequence[ApiModel] | Page | Download | Reply | None
Endpoint = Callable[["Call"], Awaitable[Result]]


class Call:
    """One API request as an endpoint sees it: parsed input, the caller and the services."""

    __slots__ = ("_body", "_query", "request")

    def __init__(
        self, request: web.Request, body: RequestModel | None, query: QueryModel | None
    ) -> None:
        self.request = request
        self._body = body
        self._query = query

    @property
    def iam(self) -> IamServices:
        return self.request.app[IAM]

    @property
    def actor(self) -> Actor:
        return self.request[ACTOR]

    @property
    def subject(self) -> Subject:
        return self.request[CALLER].subject

    @property
    def project(self) -> str:
        """The project the access middleware authorized this request for."""
        project = self.request[PROJECT]
        if project is None:
            raise TypeError("this route is not scoped to a project")
        return project

    @property
    def queried_project(self) -> str | None:
        """`?project=` as the access middleware read it (None: the whole registry)."""
        return self.request.get(PROJECT)

    def param(self, name: str) -> str:
        return self.request.match_info[name]

    def id_param(self, name: str) -> int:
        """A numeric path segment (the route's pattern admits only digits)."""
        value = int(self.request.match_info[name])
        if value > MAX_ID:
            raise ApiProblem(404, f"{name} {value} not found")
        return value

    def body(self, model: type[B]) -> B:
        if not isinstance(self._body, model):
            raise TypeError(f"the route does not declare {model.__name__} as its body")
        return self._body

    def query(self, model: type[Q]) -> Q:
        if not isinstance(self._query, model):
            raise TypeError(f"the route does not declare {model.__name__} as its query")
        return self._query

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Call a (blocking) service on the worker threads."""
        return await self.iam.threads.run(fn, *args, **kwargs)


@dataclass(frozen=True, slots=True)
class ApiRoute:
    method: str
    path: str  # aiohttp syntax; a segment may carry a pattern, e.g. {grant:[0-9]+}
    endpoint: Endpoint
    permission: Permission
    summary: str
    tag: str
    body: type[RequestModel] | None = None
    query: type[QueryModel] | None = None
    response: type[ApiModel] | None = None  # None: 204 without a body
    many: bool = False  # the reply is a JSON array of `response`
    paged: bool = False  # ... with a Link header to the next page
    status: int = 200
    errors: tuple[int, ...] = ()  # statuses beyond those every route of its kind may answer
    produces: tuple[str, ...] = ()  # media types of a `Download` reply (instead of `response`)
    consumes: tuple[str, ...] = ()  # media types of a raw (file) body the endpoint streams itself
    also: tuple[int, ...] = ()  # other success statuses, answered through `Reply`

    @property
    def handler(self) -> Handler:
        route = self

        async def handle(request: web.Request) -> web.StreamResponse:
            return await _handle(route, request)

        return handle


async def _handle(route: ApiRoute, request: web.Request) -> web.StreamResponse:
    query = parse_query(request, route.query) if route.query is not None else None
    body = await parse_body(request, route.body) if route.body is not None else None
    result = await route.endpoint(Call(request, body, query))
    return render(route, request, result)


def parse_query(request: web.Request, model: type[Q]) -> Q:
    repeated = sorted({key for key in request.query if len(request.query.getall(key)) > 1})
    if repeated:
        raise ApiProblem(400, f"query parameters may appear once: {', '.join(repeated)[:200]}")
    # An empty value means the parameter was left out (`?after=` is the first page).
    values = {key: value for key, value in request.query.items() if value != ""}
    try:
        return model.model_validate(values)
    except ValidationError as error:
        raise ApiProblem(400, "invalid query parameters", field_errors(error)) from None


async def parse_body(request: web.Request, model: type[B]) -> B:
    if not _is_json(request.content_type):
        raise ApiProblem(415, "send the request body as application/json")
    return validate_body(model, await read_capped(request, MAX_BODY_BYTES))


def validate_body(model: type[B], raw: bytes | str) -> B:
    """A JSON body checked against its model (also the command line's, for the same refusals)."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as error:
        if any(item["type"] == "json_invalid" for item in error.errors()):
            raise ApiProblem(400, "the request body is not valid JSON") from None
        raise ApiProblem(
            422, "the request body does not match the schema", field_errors(error)
        ) from None


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or content_type.endswith("+json")


async def read_capped(request: web.Request, limit: int) -> bytes:
    too_large = ApiProblem(413, f"request bodies are limited to {limit} bytes")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    data = bytearray()
    while chunk := await request.content.readany():
        data += chunk
        if len(data) > limit:
            raise too_large
    return bytes(data)


def field_errors(error: ValidationError) -> list[dict[str, str]]:
    """Which fields are wrong and why; never the submitted values (they may be secrets)."""
    return [
        {"field": ".".join(str(part) for part in item["loc"]) or "(root)", "message": item["msg"]}
        for item in error.errors(include_url=False, include_input=False)[:_MAX_FIELD_ERRORS]
    ]


def render(route: ApiRoute, request: web.Request, result: Result) -> web.StreamResponse:
    if route.produces:
        if not isinstance(result, Download) or result.media_type not in route.produces:
            raise TypeError(f"{route.path} must answer with a Download of {route.produces}")
        return web.Response(
            status=route.status,
            body=result.body,
            headers={
                "Content-Type": result.media_type,
                "Content-Disposition": f'attachment; filename="{result.filename}"',
            },
        )
    status = route.status
    if isinstance(result, Reply):
        if result.status not in route.also:
            raise TypeError(f"{route.path} does not declare status {result.status}")
        status, result = result.status, result.result
    model = route.response
    if model is None:
        if result is not None:
            raise TypeError(f"{route.path} declares no response body")
        return web.Response(status=route.status)
    if not route.many:
        if not isinstance(result, model):
            raise TypeError(f"{route.path} must answer with {model.__name__}")
        return json_response(_dump(result), status=status)
    page = result if isinstance(result, Page) else Page(_sequence(result))
    items = [_dump(_checked(model, item)) for item in page.items]
    headers = {}
    if page.next is not None:
        headers["Link"] = f'<{request.path}?{urlencode(page.next)}>; rel="next"'
    return json_response(items, status=route.status, headers=headers)


def _sequence(result: Result) -> Sequence[ApiModel]:
    if isinstance(result, Sequence):
        return result
    raise TypeError("a list route must answer with a sequence or a Page")


def _checked(model: type[ApiModel], item: ApiModel) -> ApiModel:
    if not isinstance(item, model):
        raise TypeError(f"list items must be {model.__name__}")
    return item


def _dump(model: ApiModel) -> dict[str, Any]:
    return model.model_dump(mode="json", by_alias=True)


def page_of(items: Sequence[M], limit: int, cursor: Callable[[M], Mapping[str, str]]) -> Page:
    """A page whose Link points past its last item when it is full (there may be more)."""
    return Page(items, cursor(items[-1]) if items and len(items) >= limit else None)
