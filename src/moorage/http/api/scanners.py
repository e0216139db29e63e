"""Scanner adapters (Harbor's pluggable scanner API) that projects can scan with; administrators
register them. The credential is write-only: responses only say whether one is set."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from moorage.http.access import ADMIN
from moorage.http.api.common import Name, Text
from moorage.http.api.framework import ApiModel, ApiRoute, Call, RequestModel, UtcDateTime
from moorage.http.state import SCANNER_ADAPTERS
from moorage.services.supply_chain.scanner_adapters import (
    MAX_ADAPTERS,
    MAX_CA_BUNDLE_BYTES,
    MAX_CREDENTIAL_LENGTH,
    MAX_TIMEOUT_SECONDS,
    MIN_TIMEOUT_SECONDS,
    AdapterSettings,
    AdapterView,
    ScannerAdapterService,
)

SCANNERS = "scanners"
BASE = "/api/v1/scanners"
ONE = f"{BASE}/{{scanner}}"

Auth = Literal["none", "bearer", "basic", "api-key"]
Url = Annotated[
    str,
    Field(
        min_length=8,
        max_length=2048,
        pattern=r"^https?://[^\s\x00-\x1f\x7f]+$",
        description="the adapter's base URL (its API is under /api/v1)",
    ),
]
Credential = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_CREDENTIAL_LENGTH,
        pattern=r"^[^\r\n\x00]+$",
        json_schema_extra={"format": "password", "writeOnly": True},
        description="bearer token, basic password or API key; stored sealed, never returned",
    ),
]
HeaderName = Annotated[str, Field(pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$")]
CaBundle = Annotated[
    str, Field(max_length=MAX_CA_BUNDLE_BYTES, description="PEM certificates to trust")
]
Timeout = Annotated[int, Field(ge=MIN_TIMEOUT_SECONDS, le=MAX_TIMEOUT_SECONDS)]
Username = Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[^:\r\n\x00]+$")]


class ScannerAdapter(ApiModel):
    name: str
    url: str
    description: str | None
    auth: str
    username: str | None
    api_key_header: str | None
    has_credential: bool
    skip_tls_verify: bool
    ca_bundle: str | None
    allow_private_network: bool
    timeout_seconds: int | None = Field(description="null: the server's scanner_timeout_seconds")
    capabilities: dict[str, Any] | None = Field(
        description="the adapter's metadata document, as read by the last ping"
    )
    pinged_at: UtcDateTime | None
    created_by: str | None
    created_at: UtcDateTime
    updated_at: UtcDateTime


class NewScannerAdapter(RequestModel):
    """`auth` bearer sends `Authorization: Bearer <credential>`, basic sends the username and
    the credential as Basic credentials, api-key sends the credential in `apiKeyHeader`."""

    name: Name
    url: Url
    description: Text | None = None
    auth: Auth = "none"
    username: Username | None = None
    credential: Credential | None = None
    api_key_header: HeaderName | None = Field(
        None, description="the header an api-key goes in (default X-ScannerAdapter-API-Key)"
    )
    skip_tls_verify: bool = False
    ca_bundle: CaBundle | None = None
    allow_private_network: bool = Field(
        False, description="allow a loopback or private address (an adapter inside the network)"
    )
    timeout_seconds: Timeout | None = None


class ScannerAdapterChanges(RequestModel):
    """Fields left out stay as they are; `credential` replaces the stored one. Changing `auth`
    needs a new credential (or none, for `none`)."""

    url: Url | None = None
    description: Text | None = None
    auth: Auth | None = None
    username: Username | None = None
    credential: Credential | None = None
    api_key_header: HeaderName | None = None
    skip_tls_verify: bool | None = None
    ca_bundle: CaBundle | None = None
    allow_private_network: bool | None = None
    timeout_seconds: Timeout | None = None


# Fields whose null means "clear it" rather than "leave it".
_CLEARABLE = frozenset(
    {"description", "ca_bundle", "timeout_seconds", "username", "api_key_header"}
)


def adapter_view(view: AdapterView) -> ScannerAdapter:
    return ScannerAdapter(
        name=view.name,
        url=view.url,
        description=view.description,
        auth=view.auth,
        username=view.username,
        api_key_header=view.api_key_header,
        has_credential=view.has_credential,
        skip_tls_verify=view.skip_tls_verify,
        ca_bundle=view.ca_bundle,
        allow_private_network=view.allow_private_network,
        timeout_seconds=view.timeout_seconds,
        capabilities=view.capabilities,
        pinged_at=view.pinged_at,
        created_by=view.created_by,
        created_at=view.created_at,
        updated_at=view.updated_at,
    )


def _service(call: Call) -> ScannerAdapterService:
    return call.request.app[SCANNER_ADAPTERS]


async def list_scanners(call: Call) -> list[ScannerAdapter]:
    return [adapter_view(view) for view in await call.run(_service(call).list)]


async def create_scanner(call: Call) -> ScannerAdapter:
    body = call.body(NewScannerAdapter)
    settings = AdapterSettings(
        url=body.url,
        description=body.description,
        auth=body.auth,
        username=body.username,
        api_key_header=body.api_key_header,
        skip_tls_verify=body.skip_tls_verify,
        ca_bundle=body.ca_bundle,
        allow_private_network=body.allow_private_network,
        timeout_seconds=body.timeout_seconds,
    )
    view = await call.run(_service(call).create, call.actor, body.name, settings, body.credential)
    return adapter_view(view)


async def get_scanner(call: Call) -> ScannerAdapter:
    return adapter_view(await call.run(_service(call).get, call.param("scanner")))


async def update_scanner(call: Call) -> ScannerAdapter:
    body = call.body(ScannerAdapterChanges)
    given = body.model_fields_set
    changes = {
        key: getattr(body, key)
        for key in given - {"credential"}
        if getattr(body, key) is not None or key in _CLEARABLE
    }
    view = await call.run(
        _service(call).update,
        call.actor,
        call.param("scanner"),
        changes,
        body.credential,
        credential_given="credential" in given,
    )
    return adapter_view(view)


async def delete_scanner(call: Call) -> None:
    await call.run(_service(call).delete, call.actor, call.param("scanner"))


async def ping_scanner(call: Call) -> ScannerAdapter:
    return adapter_view(await _service(call).ping(call.param("scanner")))


ROUTES: tuple[ApiRoute, ...] = (
    ApiRoute(
        "GET",
        BASE,
        list_scanners,
        ADMIN,
        "The registered scanner adapters",
        SCANNERS,
        response=ScannerAdapter,
        many=True,
    ),
    ApiRoute(
        "POST",
        BASE,
        create_scanner,
        ADMIN,
        f"Register a scanner adapter (at most {MAX_ADAPTERS})",
        SCANNERS,
        body=NewScannerAdapter,
        response=ScannerAdapter,
        status=201,
        errors=(409,),
    ),
    ApiRoute(
        "GET", ONE, get_scanner, ADMIN, "One scanner adapter", SCANNERS, response=ScannerAdapter
    ),
    ApiRoute(
        "PATCH",
        ONE,
        update_scanner,
        ADMIN,
        "Change a scanner adapter's settings or credential",
        SCANNERS,
        body=ScannerAdapterChanges,
        response=ScannerAdapter,
    ),
    ApiRoute(
        "DELETE",
        ONE,
        delete_scanner,
        ADMIN,
        "Remove a scanner adapter no project scans with",
        SCANNERS,
        status=204,
        errors=(409,),
    ),
    ApiRoute(
        "POST",
        f"{ONE}/ping",
        ping_scanner,
        ADMIN,
        "Read the adapter's metadata now (checks URL, credential and TLS) and store it;"
        " 424 when the adapter cannot be read",
        SCANNERS,
        response=ScannerAdapter,
        errors=(422, 424),
    ),
)
