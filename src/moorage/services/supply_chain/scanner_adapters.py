"""External scanner adapters (Harbor's pluggable scanner API): their registration, and scanning
an image with one.

- `ScannerAdapterService` keeps the registrations (administrators only; every change audited).
  The adapter's credential is sealed with AES-GCM under a server secret before it is stored,
  and is never returned, logged or audited: views only say whether one is set.
- `ScannerRegistry` is the scan service's `ScannerResolver`: `external_for(name)` gives an
  `AdapterScanner`, which asks the adapter for its metadata, sends a scan request carrying a
  short-lived token that can pull only the one repository, and polls for the report within
  `scanner_timeout_seconds` (or the adapter's own timeout).

The HTTP side (`moorage.http.scanner_client`) is passed in as an `AdapterClient`, so this
module holds the rules and never touches the network itself.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from moorage.domain.events import AccessEvent, Actor
from moorage.metadata.access.iam_store import ConflictError, LimitExceededError
from moorage.metadata.supply_chain.scanner_models import ScannerAdapterRow
from moorage.metadata.supply_chain.scanner_store import ScannerStore
from moorage.scanning.harbor import (
    AdapterMetadata,
    VulnerabilityReport,
    findings_from_report,
    same_origin,
    scan_request_document,
)
from moorage.scanning.report import ScanFailedError, ScanTarget
from moorage.services.access.tokens import PULL_ONLY_MAX_TTL, TokenService
from moorage.services.cache import TtlCache
from moorage.services.errors import IdentityError
from moorage.services.events import EventBus
from moorage.services.threads import Threads
from moorage.vulnerability.findings import Finding

log = logging.getLogger("moorage.scanners")

MAX_ADAPTERS: Final = 64
AUTH_KINDS: Final = ("none", "bearer", "basic", "api-key")
DEFAULT_API_KEY_HEADER: Final = "X-ScannerAdapter-API-Key"
MAX_CA_BUNDLE_BYTES: Final = 64 * 1024
MAX_CREDENTIAL_LENGTH: Final = 4096
MIN_TIMEOUT_SECONDS: Final = 5
MAX_TIMEOUT_SECONDS: Final = 86_400
PING_TIMEOUT_SECONDS: Final = 15.0
ADAPTER_PULLER: Final = "scanner-adapter:"  # + the adapter name
_CACHE_SECONDS: Final = 2.0
_SEALING_KEY_NAME: Final = "scanner-adapter-credentials"  # a server secret's name
_NAME_RE: Final = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
# An HTTP header name (RFC 9110 token), and never one that carries other meaning.
_HEADER_RE: Final = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$")
_RESERVED_HEADERS: Final = frozenset(
    {"authorization", "host", "content-type", "content-length", "accept", "cookie"}
)


class AdapterError(Exception):
    """Talking to an adapter failed; the message says why (never the credential)."""


# -- what the HTTP side receives and provides


@dataclass(frozen=True, slots=True)
class AdapterConfig:
    """A registration as the HTTP client uses it, the credential opened."""

    name: str
    url: str
    headers: dict[str, str] = field(repr=False)  # authentication headers: never log them
    ca_pem: str | None
    verify_tls: bool
    allow_private_network: bool
    timeout_seconds: int

    @property
    def base(self) -> str:
        return self.url.rstrip("/")


class AdapterClient(Protocol):
    async def metadata(self, config: AdapterConfig, timeout_seconds: float) -> AdapterMetadata:
        """GET /api/v1/metadata; AdapterError when it fails."""
        ...

    async def scan(
        self, config: AdapterConfig, request: dict[str, Any], report_type: str
    ) -> VulnerabilityReport:
        """POST /api/v1/scan, then poll the report within `config.timeout_seconds`;
        AdapterError when anything fails or the time is up."""
        ...


# -- registrations


@dataclass(frozen=True, slots=True)
class AdapterView:
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
    timeout_seconds: int | None
    capabilities: dict[str, Any] | None
    pinged_at: datetime | None
    created_by: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class AdapterSettings:
    """Everything an administrator sets on an adapter (the credential apart)."""

    url: str
    description: str | None = None
    auth: str = "none"
    username: str | None = None
    api_key_header: str | None = None
    skip_tls_verify: bool = False
    ca_bundle: str | None = None
    allow_private_network: bool = False
    timeout_seconds: int | None = None


# Fields an update may change; the credential is given apart, and only when it changes.
SETTINGS_FIELDS: Final = frozenset(AdapterSettings.__dataclass_fields__)


def _view(row: ScannerAdapterRow) -> AdapterView:
    return AdapterView(
        name=row.name,
        url=row.url,
        description=row.description,
        auth=row.auth,
        username=row.username,
        api_key_header=row.api_key_header,
        has_credential=row.sealed_credential is not None,
        skip_tls_verify=row.skip_tls_verify,
        ca_bundle=row.ca_bundle,
        allow_private_network=row.allow_private_network,
        timeout_seconds=row.timeout_seconds,
        capabilities=row.capabilities,
        pinged_at=row.pinged_at,
        created_by=row.created_by,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _invalid(message: str) -> IdentityError:
    return IdentityError(message, 422)


# Refuses an outbound URL with ValueError (moorage.http.outbound.check_url).
UrlGuard = Callable[[str, bool], None]


def _validated(
    settings: AdapterSettings, credential: str | None, url_guard: UrlGuard, own: tuple[str, ...]
) -> AdapterSettings:
    """The settings as stored (auth-specific fields cleared), or 422 saying what is wrong."""
    try:
        url_guard(settings.url, settings.allow_private_network)
    except ValueError as error:  # the guard's message names allowPrivateNetwork where it helps
        raise _invalid(f"url: {error}") from None
    if same_origin(settings.url, own):
        # Its scan requests would come back to this registry's scan queue and wait on themselves.
        raise _invalid(
            "url: this is the registry itself; its built-in scanner is used when a project"
            " names no scanner"
        )
    if settings.auth not in AUTH_KINDS:
        raise _invalid(f"auth must be one of {', '.join(AUTH_KINDS)}")
    if settings.auth == "none":
        if credential is not None:
            raise _invalid("a credential needs auth bearer, basic or api-key")
    elif not credential:
        raise _invalid(f"auth {settings.auth} needs a credential")
    if credential is not None and (
        len(credential) > MAX_CREDENTIAL_LENGTH or any(c in credential for c in "\r\n\0")
    ):
        raise _invalid(f"the credential must be one line of at most {MAX_CREDENTIAL_LENGTH}")
    username = settings.username if settings.auth == "basic" else None
    if settings.auth == "basic" and (not username or ":" in username):
        raise _invalid("auth basic needs a username without ':'")
    header = settings.api_key_header if settings.auth == "api-key" else None
    if settings.auth == "api-key":
        header = header or DEFAULT_API_KEY_HEADER
        if not _HEADER_RE.fullmatch(header) or header.lower() in _RESERVED_HEADERS:
            raise _invalid(f"apiKeyHeader {header[:70]!r} is not a header name that can be used")
    timeout = settings.timeout_seconds
    if timeout is not None and not MIN_TIMEOUT_SECONDS <= timeout <= MAX_TIMEOUT_SECONDS:
        raise _invalid(f"timeoutSeconds must be {MIN_TIMEOUT_SECONDS}..{MAX_TIMEOUT_SECONDS}")
    if settings.ca_bundle is not None:
        _check_ca_bundle(settings.ca_bundle)
    return AdapterSettings(
        url=settings.url,
        description=settings.description,
        auth=settings.auth,
        username=username,
        api_key_header=header,
        skip_tls_verify=settings.skip_tls_verify,
        ca_bundle=settings.ca_bundle or None,
        allow_private_network=settings.allow_private_network,
        timeout_seconds=timeout,
    )


def _check_ca_bundle(pem: str) -> None:
    if len(pem.encode()) > MAX_CA_BUNDLE_BYTES:
        raise _invalid(f"caBundle is limited to {MAX_CA_BUNDLE_BYTES} bytes")
    try:
        ssl.create_default_context(cadata=pem)
    except (ssl.SSLError, ValueError, TypeError):  # TypeError: text that is not ASCII
        raise _invalid("caBundle must be PEM certificates") from None


class CredentialBox:
    """Seals credentials for storage: AES-256-GCM, the adapter's name as associated data (a
    sealed credential copied onto another adapter's row does not open)."""

    def __init__(self, key: Callable[[], bytes]) -> None:
        self._key = key

    def seal(self, name: str, credential: str) -> bytes:
        nonce = os.urandom(12)
        return nonce + AESGCM(self._key()).encrypt(nonce, credential.encode(), name.encode())

    def open(self, name: str, sealed: bytes) -> str:
        try:
            plain = AESGCM(self._key()).decrypt(sealed[:12], sealed[12:], name.encode())
        except (InvalidTag, ValueError):
            raise AdapterError("the stored credential cannot be opened; set it again") from None
        return plain.decode()


def secret_key_source(server_secret: Callable[[str], bytes]) -> Callable[[], bytes]:
    """The credential key, read once from the server secrets (shared by every worker)."""
    cached: list[bytes] = []

    def key() -> bytes:
        if not cached:
            cached.append(server_secret(_SEALING_KEY_NAME))
        return cached[0]

    return key


class ScannerAdapterService:
    """Register, change, remove and check adapters. Blocking methods run on worker threads."""

    def __init__(
        self,
        store: ScannerStore,
        box: CredentialBox,
        client: AdapterClient,
        events: EventBus,
        threads: Threads,
        *,
        url_guard: UrlGuard,
        default_timeout_seconds: int,
        own_urls: tuple[str, ...] = (),
    ) -> None:
        self._url_guard = url_guard
        self._own_urls = own_urls
        self._store = store
        self._box = box
        self._client = client
        self._events = events
        self._threads = threads
        self._default_timeout = default_timeout_seconds
        self._known = TtlCache(_CACHE_SECONDS, name="scanner-adapters")

    def _emit(self, action: str, actor: Actor, name: str, **details: object) -> None:
        self._known.clear()
        self._events.publish(
            AccessEvent(action, actor, "success", None, f"scanner:{name}", details)
        )

    def _row(self, name: str) -> ScannerAdapterRow:
        row = self._store.adapter(name)
        if row is None:
            raise IdentityError(f"scanner {name} not found", 404)
        return row

    def list(self) -> list[AdapterView]:
        return [_view(row) for row in self._store.adapters()]

    def get(self, name: str) -> AdapterView:
        return _view(self._row(name))

    def create(
        self, actor: Actor, name: str, settings: AdapterSettings, credential: str | None
    ) -> AdapterView:
        if not _NAME_RE.fullmatch(name):
            raise _invalid("a scanner name is 1-64 of a-z, 0-9, '.', '_' and '-'")
        clean = _validated(settings, credential, self._url_guard, self._own_urls)
        row = ScannerAdapterRow(
            name=name,
            **_asdict(clean),
            sealed_credential=self._box.seal(name, credential) if credential else None,
            created_by=actor.name,
        )
        try:
            added = self._store.create(row, MAX_ADAPTERS)
        except ConflictError as error:
            raise IdentityError(str(error), 409) from None
        except LimitExceededError as error:
            raise IdentityError(str(error), 422) from None
        self._emit("scanner:create", actor, name, **_audited(clean))
        return _view(added)

    def update(
        self,
        actor: Actor,
        name: str,
        changes: dict[str, Any],
        credential: str | None,
        *,
        credential_given: bool,
    ) -> AdapterView:
        """Apply `changes` (AdapterSettings fields); a given credential replaces the stored
        one, and switching `auth` to `none` drops it."""
        unknown = set(changes) - SETTINGS_FIELDS
        if unknown:
            raise TypeError(f"not adapter settings: {sorted(unknown)}")
        row = self._row(name)
        current = AdapterSettings(**_columns_of(row))
        merged = AdapterSettings(**{**_asdict(current), **changes})
        keeps_credential = not credential_given and merged.auth == current.auth
        if keeps_credential and row.sealed_credential is not None:
            opened = self._box_open(name, row.sealed_credential)
            clean = _validated(merged, opened, self._url_guard, self._own_urls)
            sealed: bytes | None = row.sealed_credential
        else:
            given = credential if credential_given else None
            clean = _validated(merged, given, self._url_guard, self._own_urls)
            sealed = self._box.seal(name, credential) if credential else None
        updated = self._store.update(name, {**_asdict(clean), "sealed_credential": sealed})
        if updated is None:
            raise IdentityError(f"scanner {name} not found", 404)
        changed = sorted(
            key for key in SETTINGS_FIELDS if getattr(clean, key) != getattr(current, key)
        )
        if credential_given:
            changed.append("credential")
        self._emit("scanner:update", actor, name, changed=changed, **_audited(clean))
        return _view(updated)

    def _box_open(self, name: str, sealed: bytes) -> str:
        try:
            return self._box.open(name, sealed)
        except AdapterError as error:
            raise _invalid(str(error)) from None

    def delete(self, actor: Actor, name: str) -> None:
        try:
            removed = self._store.delete(name)
        except ConflictError as error:
            raise IdentityError(str(error), 409) from None
        if removed is None:
            raise IdentityError(f"scanner {name} not found", 404)
        self._emit("scanner:delete", actor, name)

    async def ping(self, name: str) -> AdapterView:
        """Read the adapter's metadata now and store it.

        424 (Failed Dependency) when the adapter cannot be read: the registration is fine as
        far as the registry can tell, the adapter behind it is not (unreachable, refusing the
        credential, failing, or answering something else than its metadata).
        """
        config = await self._threads.run(self.config, name)
        try:
            metadata = await self._client.metadata(config, PING_TIMEOUT_SECONDS)
        except AdapterError as error:
            raise IdentityError(f"scanner {name}: {error}", 424) from None
        document = metadata.model_dump(mode="json")
        row = await self._threads.run(self._store.record_ping, name, document)
        if row is None:
            raise IdentityError(f"scanner {name} not found", 404)
        return _view(row)

    # -- what scanning uses

    def exists(self, name: str) -> bool:
        """Whether an adapter of that name is registered (cached for 2 seconds)."""
        return bool(self._known.get_or_load(name, lambda: self._store.adapter(name) is not None))

    def config(self, name: str) -> AdapterConfig:
        """The adapter's settings with its credential opened (blocking)."""
        row = self._row(name)
        credential = self._box_open(name, row.sealed_credential) if row.sealed_credential else None
        return AdapterConfig(
            name=row.name,
            url=row.url,
            headers=_auth_headers(row, credential),
            ca_pem=row.ca_bundle,
            verify_tls=not row.skip_tls_verify,
            allow_private_network=row.allow_private_network,
            timeout_seconds=row.timeout_seconds or self._default_timeout,
        )

    @property
    def client(self) -> AdapterClient:
        return self._client


def _auth_headers(row: ScannerAdapterRow, credential: str | None) -> dict[str, str]:
    if credential is None or row.auth == "none":
        return {}
    if row.auth == "bearer":
        return {"Authorization": f"Bearer {credential}"}
    if row.auth == "basic":
        pair = f"{row.username or ''}:{credential}".encode()
        return {"Authorization": "Basic " + base64.b64encode(pair).decode()}
    return {row.api_key_header or DEFAULT_API_KEY_HEADER: credential}


def _asdict(settings: AdapterSettings) -> dict[str, Any]:
    return {key: getattr(settings, key) for key in SETTINGS_FIELDS}


def _columns_of(row: ScannerAdapterRow) -> dict[str, Any]:
    return {key: getattr(row, key) for key in SETTINGS_FIELDS}


def _audited(settings: AdapterSettings) -> dict[str, object]:
    # What the audit log keeps of a registration: never the credential, nor the CA bundle's text.
    return {
        "url": settings.url,
        "auth": settings.auth,
        "skip_tls_verify": settings.skip_tls_verify,
        "allow_private_network": settings.allow_private_network,
        "ca_bundle": settings.ca_bundle is not None,
    }


# -- scanning


def token_ttl(timeout_seconds: int) -> int:
    """How long the adapter's pull token lives: the scan's time plus a minute, 5-30 minutes."""
    return max(300, min(timeout_seconds + 60, PULL_ONLY_MAX_TTL))


class AdapterScanner:
    """One registered adapter as the scan service's `ExternalScanner`."""

    def __init__(
        self,
        name: str,
        service: ScannerAdapterService,
        tokens: TokenService,
        threads: Threads,
        registry_url: str,
    ) -> None:
        self._name = name
        self._service = service
        self._tokens = tokens
        self._threads = threads
        self._registry_url = registry_url

    @property
    def name(self) -> str:
        return self._name

    async def scan(self, target: ScanTarget) -> tuple[Finding, ...]:
        try:
            return await self._scan(target)
        except AdapterError as error:
            raise ScanFailedError(f"scanner adapter {self._name}: {error}") from None
        except IdentityError as error:  # removed or unusable since the scan was queued
            raise ScanFailedError(f"scanner adapter {self._name}: {error}") from None

    async def _scan(self, target: ScanTarget) -> tuple[Finding, ...]:
        config = await self._threads.run(self._service.config, self._name)
        client = self._service.client
        metadata = await client.metadata(config, min(PING_TIMEOUT_SECONDS, config.timeout_seconds))
        report_type = metadata.report_type_for(target.media_type)
        if report_type is None:
            raise AdapterError(
                f"it does not produce a vulnerability report for {target.media_type}"
                f" (it consumes: {', '.join(metadata.vulnerability_consumes())[:300] or 'nothing'})"
            )
        token = await self._threads.run(
            self._tokens.issue_pull_only,
            target.repository,
            ADAPTER_PULLER + self._name,
            token_ttl(config.timeout_seconds),
        )
        request = scan_request_document(
            self._registry_url,
            f"Bearer {token}",
            target.repository,
            target.digest,
            target.media_type,
        )
        report = await client.scan(config, request, report_type)
        log.info(
            "scanner adapter %s reported %d vulnerabilities for %s@%s",
            self._name,
            len(report.vulnerabilities),
            target.repository,
            target.digest,
        )
        return findings_from_report(report)


class ScannerRegistry:
    """The scan service's `ScannerResolver`: registered adapters by name."""

    def __init__(
        self,
        service: ScannerAdapterService,
        tokens: TokenService,
        threads: Threads,
        registry_url: str,
    ) -> None:
        self._service = service
        self._tokens = tokens
        self._threads = threads
        self._registry_url = registry_url

    def external_for(self, scanner_name: str) -> AdapterScanner | None:
        """The adapter of that name, or None. Blocking on a cache miss (one indexed read)."""
        if not self._service.exists(scanner_name):
            return None
        return AdapterScanner(
            scanner_name, self._service, self._tokens, self._threads, self._registry_url
        )


def registry_url(public_url: str | None, listen: str, tls: bool) -> str:
    """The base URL an adapter pulls from: the configured public URL, else the listening
    address (an unspecified address stands for this host's loopback)."""
    if public_url:
        return public_url.rstrip("/")
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0"):  # noqa: S104 - naming the wildcard, not binding it
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if tls else 'http'}://{host}:{port}"


def is_adapter_pull(actor: Actor) -> bool:
    """Whether a request was made with a pull token handed to a scanner adapter. Such tokens
    are only minted by `TokenService.issue_pull_only`, so the name cannot be claimed otherwise
    (sign-ins never produce an anonymous subject of another name)."""
    return actor.kind == "anonymous" and actor.name.startswith(ADAPTER_PULLER)
