"""Proxy-cache configuration of a project: the upstream registry it pulls through.

Administrators create, replace and remove it; project admins may read it. Stored credentials
(password, token, client key) are write-only: replies say only which kind is set.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from moorage.domain.access import Action
from moorage.domain.proxy import (
    DEFAULT_TAG_TTL_SECONDS,
    DEFAULT_TIMEOUT_SECONDS,
    MAX_PEM_BYTES,
    MAX_PLATFORMS,
    MAX_TAG_TTL_SECONDS,
    MAX_TIMEOUT_SECONDS,
    MAX_URL_LENGTH,
)
from moorage.http.access import ADMIN, project_permission
from moorage.http.api.framework import ApiModel, ApiRoute, Call, RequestModel, UtcDateTime
from moorage.http.state import SERVICES
from moorage.services.distribution.proxy import ProxyInput, ProxyPatch, ProxyView, UpstreamError

PROXY = "proxy-cache"
PROXY_PATH = "/api/v1/projects/{project}/proxy"
MANAGE_PROJECT = project_permission(Action.MANAGE_PROJECT)

Secret = Annotated[str, Field(min_length=1, max_length=4096)]
Pem = Annotated[str, Field(max_length=MAX_PEM_BYTES)]


class ProxyConfiguration(ApiModel):
    project: str
    url: str
    flavor: Literal["oci", "docker-hub"]
    username: str | None
    credential: Literal["none", "password", "token"]
    ca_bundle: bool
    client_certificate: bool
    allow_private_network: bool
    tag_ttl_seconds: int
    timeout_seconds: int
    platforms: list[str]
    anonymous_fetch: bool
    updated_by: str | None
    updated_at: UtcDateTime


class ProxyConfigurationInput(RequestModel):
    """The upstream of a proxy-cache project.

    `password`, `token` and `clientKey` are never returned; leaving them out keeps the stored
    ones (while `username` is unchanged), `clearCredentials` removes them.
    """

    url: Annotated[str, Field(min_length=1, max_length=MAX_URL_LENGTH)]
    flavor: Literal["oci", "docker-hub"] | None = Field(
        None, description="docker-hub maps single-segment names to library/; default: from URL"
    )
    username: Annotated[str, Field(min_length=1, max_length=255)] | None = None
    password: Secret | None = None
    token: Secret | None = None
    clear_credentials: bool = False
    ca_bundle: Pem | None = Field(None, description="PEM certificates to trust for the upstream")
    client_cert: Pem | None = Field(None, description="PEM client certificate for mutual TLS")
    client_key: Pem | None = None
    allow_private_network: bool = Field(
        False, description="allow loopback and private addresses (on-premises upstreams)"
    )
    tag_ttl_seconds: Annotated[int, Field(ge=0, le=MAX_TAG_TTL_SECONDS)] = DEFAULT_TAG_TTL_SECONDS
    timeout_seconds: Annotated[int, Field(ge=1, le=MAX_TIMEOUT_SECONDS)] = DEFAULT_TIMEOUT_SECONDS
    platforms: Annotated[
        list[Annotated[str, Field(max_length=100)]], Field(max_length=MAX_PLATFORMS)
    ] = Field(default_factory=list, description="os/architecture[/variant] of index children")
    anonymous_fetch: bool = Field(
        False, description="in a public project, anyone who may pull may also fetch new content"
    )


class ProxyConfigurationChanges(RequestModel):
    """A JSON merge patch of the upstream configuration: only the fields sent change, the
    same rules as a PUT apply to the result. `null` removes a value (its default applies);
    `password: null` or `token: null` removes the stored credential."""

    url: Annotated[str, Field(min_length=1, max_length=MAX_URL_LENGTH)] | None = None
    flavor: Literal["oci", "docker-hub"] | None = None
    username: Annotated[str, Field(min_length=1, max_length=255)] | None = None
    password: Secret | None = None
    token: Secret | None = None
    clear_credentials: bool | None = None
    ca_bundle: Pem | None = None
    client_cert: Pem | None = None
    client_key: Pem | None = None
    allow_private_network: bool | None = None
    tag_ttl_seconds: Annotated[int, Field(ge=0, le=MAX_TAG_TTL_SECONDS)] | None = None
    timeout_seconds: Annotated[int, Field(ge=1, le=MAX_TIMEOUT_SECONDS)] | None = None
    platforms: (
        Annotated[list[Annotated[str, Field(max_length=100)]], Field(max_length=MAX_PLATFORMS)]
        | None
    ) = None
    anonymous_fetch: bool | None = None


class ProxyCheck(ApiModel):
    ok: bool
    message: str


def _configuration(view: ProxyView) -> ProxyConfiguration:
    return ProxyConfiguration.model_validate(
        {
            "project": view.project,
            "url": view.url,
            "flavor": view.flavor,
            "username": view.username,
            "credential": view.credential,
            "ca_bundle": view.ca_bundle,
            "client_certificate": view.client_certificate,
            "allow_private_network": view.allow_private_network,
            "tag_ttl_seconds": view.tag_ttl_seconds,
            "timeout_seconds": view.timeout_seconds,
            "platforms": view.platforms,
            "anonymous_fetch": view.anonymous_fetch,
            "updated_by": view.updated_by,
            "updated_at": view.updated_at,
        }
    )


async def get_proxy(call: Call) -> ProxyConfiguration:
    return _configuration(await call.run(call.iam.proxies.get, call.project))


async def put_proxy(call: Call) -> ProxyConfiguration:
    body = call.body(ProxyConfigurationInput)
    given = ProxyInput(
        url=body.url,
        flavor=body.flavor,
        username=body.username,
        password=body.password,
        token=body.token,
        clear_credentials=body.clear_credentials,
        ca_bundle=body.ca_bundle,
        client_cert=body.client_cert,
        client_key=body.client_key,
        allow_private_network=body.allow_private_network,
        tag_ttl_seconds=body.tag_ttl_seconds,
        timeout_seconds=body.timeout_seconds,
        platforms=list(body.platforms),
        anonymous_fetch=body.anonymous_fetch,
    )
    view = await call.run(call.iam.proxies.set, call.actor, call.param("project"), given)
    return _configuration(view)


async def patch_proxy(call: Call) -> ProxyConfiguration:
    body = call.body(ProxyConfigurationChanges)
    changes = ProxyPatch(
        given=frozenset(body.model_fields_set),
        url=body.url,
        flavor=body.flavor,
        username=body.username,
        password=body.password,
        token=body.token,
        clear_credentials=body.clear_credentials,
        ca_bundle=body.ca_bundle,
        client_cert=body.client_cert,
        client_key=body.client_key,
        allow_private_network=body.allow_private_network,
        tag_ttl_seconds=body.tag_ttl_seconds,
        timeout_seconds=body.timeout_seconds,
        platforms=list(body.platforms) if body.platforms is not None else None,
        anonymous_fetch=body.anonymous_fetch,
    )
    view = await call.run(call.iam.proxies.patch, call.actor, call.param("project"), changes)
    return _configuration(view)


async def delete_proxy(call: Call) -> None:
    await call.run(call.iam.proxies.remove, call.actor, call.param("project"))


async def check_proxy(call: Call) -> ProxyCheck:
    """Reach the upstream's /v2/ with the stored configuration and credentials."""
    project = call.param("project")
    await call.run(call.iam.proxies.get, project)  # 404 unless it is a proxy-cache project
    cache = call.request.app[SERVICES].proxy
    config = await call.run(call.iam.proxies.config_of, project)
    if config is None:
        return ProxyCheck(ok=False, message="not a proxy-cache project")
    try:
        await cache.check(config)
    except UpstreamError as error:
        return ProxyCheck(ok=False, message=f"{error.kind}: {error}")
    return ProxyCheck(ok=True, message="the upstream answered and accepted the credentials")


ROUTES: tuple[ApiRoute, ...] = (
    ApiRoute(
        "GET",
        PROXY_PATH,
        get_proxy,
        MANAGE_PROJECT,
        "The project's proxy-cache upstream (credentials are never returned)",
        PROXY,
        response=ProxyConfiguration,
    ),
    ApiRoute(
        "PUT",
        PROXY_PATH,
        put_proxy,
        ADMIN,
        "Make the project a proxy cache of an upstream registry, or change its upstream",
        PROXY,
        body=ProxyConfigurationInput,
        response=ProxyConfiguration,
    ),
    ApiRoute(
        "PATCH",
        PROXY_PATH,
        patch_proxy,
        ADMIN,
        "Change some fields of the upstream configuration (JSON merge patch)",
        PROXY,
        body=ProxyConfigurationChanges,
        response=ProxyConfiguration,
    ),
    ApiRoute(
        "DELETE",
        PROXY_PATH,
        delete_proxy,
        ADMIN,
        "Stop proxying: the project keeps what it cached and becomes an ordinary project",
        PROXY,
        status=204,
    ),
    ApiRoute(
        "POST",
        f"{PROXY_PATH}/check",
        check_proxy,
        ADMIN,
        "Check that the upstream answers and accepts the stored credentials",
        PROXY,
        response=ProxyCheck,
    ),
)
