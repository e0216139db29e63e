"""Proxy-cache configuration: create, read, replace, patch and remove a project's upstream.

Secrets (password or token, client key) are sealed with a key the registry generates and are
never shown; every change is audited. Pulls read the configuration through a 2-second cache.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from moorage.domain.events import (
    AccessEvent,
    Actor,
    policy_denied,
)
from moorage.domain.proxy import (
    DEFAULT_TAG_TTL_SECONDS,
    DEFAULT_TIMEOUT_SECONDS,
    MAX_TAG_TTL_SECONDS,
    MAX_TIMEOUT_SECONDS,
    Flavor,
    Platform,
    ProxyConfigError,
    flavor_of,
    normalize_url,
    parse_platforms,
    validate_pem,
)
from moorage.metadata.access.iam_models import ProxyUpstreamRow
from moorage.metadata.access.iam_store import IamStore, PromotionOnlyConflictError
from moorage.metadata.registry.store import MetadataStore
from moorage.services.cache import TtlCache
from moorage.services.distribution.proxy.upstream import UpstreamEndpoint
from moorage.services.errors import IdentityError
from moorage.services.events import EventBus

log = logging.getLogger("moorage.proxy")
T = TypeVar("T")

CONFIG_CACHE_SECONDS: Final = 2.0
_KEY_NAME: Final = "proxy-credentials"


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """A proxy-cache project's configuration, as the pull path uses it."""

    endpoint: UpstreamEndpoint
    tag_ttl: timedelta
    platforms: tuple[Platform, ...] | None
    anonymous_fetch: bool


@dataclass(frozen=True, slots=True)
class ProxyView:
    """A proxy-cache project's configuration as the API shows it: never a secret."""

    project: str
    url: str
    flavor: str
    username: str | None
    credential: str  # none | password | token
    ca_bundle: bool
    client_certificate: bool
    allow_private_network: bool
    tag_ttl_seconds: int
    timeout_seconds: int
    platforms: list[str]
    anonymous_fetch: bool
    updated_by: str | None
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class ProxyInput:
    """An upstream configuration as an administrator submits it.

    `password`/`token`/`client_key` left as None keep what is stored (when the username is
    unchanged); `clear_credentials` removes the stored credential.
    """

    url: str
    flavor: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    clear_credentials: bool = False
    ca_bundle: str | None = None
    client_cert: str | None = None
    client_key: str | None = field(default=None, repr=False)
    allow_private_network: bool = False
    tag_ttl_seconds: int = DEFAULT_TAG_TTL_SECONDS
    timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS
    platforms: list[str] | None = None
    anonymous_fetch: bool = False


@dataclass(frozen=True, slots=True)
class ProxyPatch:
    """Changes to an upstream configuration (JSON merge patch): only the fields named in
    `given` change; a given None removes the value (its default applies). None for `password`
    or `token` removes the stored credential."""

    given: frozenset[str]
    url: str | None = None
    flavor: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    clear_credentials: bool | None = None
    ca_bundle: str | None = None
    client_cert: str | None = None
    client_key: str | None = field(default=None, repr=False)
    allow_private_network: bool | None = None
    tag_ttl_seconds: int | None = None
    timeout_seconds: int | None = None
    platforms: list[str] | None = None
    anonymous_fetch: bool | None = None


def patched(row: ProxyUpstreamRow, patch: ProxyPatch) -> ProxyInput:
    """The full configuration a patch of the stored one asks for (validated by `set`)."""
    given = patch.given
    if "url" in given and patch.url is None:
        raise ProxyConfigError("url cannot be removed; DELETE the proxy configuration instead")
    url = patch.url if patch.url is not None else row.url
    # The stored flavor stays unless the upstream changes; a new URL implies its own flavor.
    flavor = patch.flavor if "flavor" in given else (row.flavor if url == row.url else None)
    clear = bool(patch.clear_credentials) or (
        ("password" in given and patch.password is None)
        or ("token" in given and patch.token is None)
    )
    client_cert = patch.client_cert if "client_cert" in given else row.client_cert
    return ProxyInput(
        url=url,
        flavor=flavor,
        username=patch.username if "username" in given else row.username,
        password=patch.password,
        token=patch.token,
        clear_credentials=clear,
        ca_bundle=patch.ca_bundle if "ca_bundle" in given else row.ca_bundle,
        client_cert=client_cert,
        # None keeps the stored key while a client certificate stays; "" removes it.
        client_key=patch.client_key
        if patch.client_key is not None
        else ("" if "client_key" in given or client_cert is None else None),
        allow_private_network=_given(
            patch.allow_private_network,
            "allow_private_network",
            given,
            row.allow_private_network,
            False,
        ),
        tag_ttl_seconds=_given(
            patch.tag_ttl_seconds,
            "tag_ttl_seconds",
            given,
            row.tag_ttl_seconds,
            DEFAULT_TAG_TTL_SECONDS,
        ),
        timeout_seconds=_given(
            patch.timeout_seconds,
            "timeout_seconds",
            given,
            row.timeout_seconds,
            DEFAULT_TIMEOUT_SECONDS,
        ),
        platforms=patch.platforms if "platforms" in given else row.platforms,
        anonymous_fetch=_given(
            patch.anonymous_fetch, "anonymous_fetch", given, row.anonymous_fetch, False
        ),
    )


def _given(value: T | None, name: str, given: frozenset[str], current: T, default: T) -> T:
    """The patched value: unchanged when not given, the default when given as null."""
    if name not in given:
        return current
    return default if value is None else value


class SecretBox:
    """Encrypts stored upstream secrets (AES-256-GCM, bound to the project) with a key the
    registry generates and every worker shares."""

    def __init__(self, load_key: Callable[[], bytes]) -> None:
        self._load_key = load_key
        self._aead: AESGCM | None = None

    def _cipher(self) -> AESGCM:
        if self._aead is None:
            key = hashlib.sha256(b"moorage proxy credentials\0" + self._load_key()).digest()
            self._aead = AESGCM(key)
        return self._aead

    def seal(self, project_id: int, value: str) -> bytes:
        nonce = secrets.token_bytes(12)
        return nonce + self._cipher().encrypt(nonce, value.encode(), str(project_id).encode())

    def open(self, project_id: int, sealed: bytes | None) -> str | None:
        if not sealed:
            return None
        try:
            plain = self._cipher().decrypt(sealed[:12], sealed[12:], str(project_id).encode())
        except InvalidTag:
            log.error("a stored upstream credential of project %d cannot be decrypted", project_id)
            return None
        return plain.decode()


class ProxyService:
    """Create, read, replace and remove proxy configurations; every change is audited."""

    def __init__(self, store: IamStore, metadata: MetadataStore, events: EventBus) -> None:
        self._store = store
        self._events = events
        self._box = SecretBox(lambda: metadata.server_secret(_KEY_NAME))
        self._configs = TtlCache(CONFIG_CACHE_SECONDS, name="proxy-configs")
        # Why a project may not become a proxy cache (a virtual project), or None.
        self.refuse_configuration: Callable[[str], str | None] = lambda _project: None

    def _project_id(self, name: str) -> int:
        row = self._store.project_by_name(name)
        if row is None:
            raise IdentityError(f"project {name} not found", 404)
        return row.id

    def get(self, project: str) -> ProxyView:
        self._project_id(project)
        row = self._store.proxy_upstream_of(project)
        if row is None:
            raise IdentityError(f"project {project} is not a proxy-cache project", 404)
        return _view(project, row)

    def set(self, actor: Actor, project: str, given: ProxyInput) -> ProxyView:
        project_id = self._project_id(project)
        refusal = self.refuse_configuration(project)
        if refusal is not None:
            raise IdentityError(refusal, 409)
        current = self._store.proxy_upstream_of(project)
        try:
            values = self._values(project_id, given, current)
        except ProxyConfigError as error:
            raise IdentityError(str(error)) from None
        try:
            row = self._store.set_proxy_upstream(project_id, {**values, "updated_by": actor.name})
        except PromotionOnlyConflictError:
            raise self._refused(actor, project, promotion_only_refusal(project)) from None
        self._configs.clear()
        self._events.publish(
            AccessEvent(
                "proxy:configure",
                actor,
                "success",
                project,
                f"project:{project}",
                {
                    "url": row.url,
                    "flavor": row.flavor,
                    "username": row.username,
                    # Only whether a credential is set, never the credential.
                    "credential": row.credential_kind,
                    "tls": _tls_summary(row),
                    "allow_private_network": row.allow_private_network,
                    "tag_ttl_seconds": row.tag_ttl_seconds,
                    "platforms": row.platforms or [],
                    "anonymous_fetch": row.anonymous_fetch,
                },
            )
        )
        return _view(project, row)

    def patch(self, actor: Actor, project: str, changes: ProxyPatch) -> ProxyView:
        """Change some fields of the configuration; validated, stored and audited as `set`."""
        self._project_id(project)
        current = self._store.proxy_upstream_of(project)
        if current is None:
            raise IdentityError(f"project {project} is not a proxy-cache project", 404)
        try:
            given = patched(current, changes)
        except ProxyConfigError as error:
            raise IdentityError(str(error)) from None
        return self.set(actor, project, given)

    def _refused(self, actor: Actor, project: str, message: str) -> IdentityError:
        self._events.publish(
            policy_denied(
                actor,
                project,
                f"project:{project}",
                point="configure:proxy",
                policy="promotion-only",
                reason=message,
            )
        )
        return IdentityError(message, 409)

    def remove(self, actor: Actor, project: str) -> None:
        project_id = self._project_id(project)
        if not self._store.delete_proxy_upstream(project_id):
            raise IdentityError(f"project {project} is not a proxy-cache project", 404)
        self._configs.clear()
        self._events.publish(
            AccessEvent("proxy:remove", actor, "success", project, f"project:{project}", {})
        )

    def _values(
        self, project_id: int, given: ProxyInput, current: ProxyUpstreamRow | None
    ) -> dict[str, object]:
        url = normalize_url(given.url, allow_private=given.allow_private_network)
        flavor = flavor_of(url, given.flavor)
        if not 0 <= given.tag_ttl_seconds <= MAX_TAG_TTL_SECONDS:
            raise ProxyConfigError(f"tag_ttl_seconds must be 0 to {MAX_TAG_TTL_SECONDS}")
        if not 1 <= given.timeout_seconds <= MAX_TIMEOUT_SECONDS:
            raise ProxyConfigError(f"timeout_seconds must be 1 to {MAX_TIMEOUT_SECONDS}")
        platforms = parse_platforms(given.platforms)
        if given.password is not None and given.token is not None:
            raise ProxyConfigError("give a password or a token, not both")
        if given.password is not None and not given.username:
            raise ProxyConfigError("a password needs a username")
        same_user = current is not None and current.username == given.username
        kind: str
        credential: bytes | None
        if given.clear_credentials:
            kind, credential = "none", None
        elif given.password is not None:
            kind, credential = "password", self._box.seal(project_id, given.password)
        elif given.token is not None:
            kind, credential = "token", self._box.seal(project_id, given.token)
        elif current is not None and same_user and current.credential_kind != "none":
            kind, credential = current.credential_kind, current.credential
        else:
            kind, credential = "none", None
        client_cert = validate_pem(given.client_cert, "client_cert")
        client_key: bytes | None
        if given.client_key is not None:
            key_pem = validate_pem(given.client_key, "client_key")
            client_key = self._box.seal(project_id, key_pem) if key_pem else None
        else:
            client_key = current.client_key if current is not None and client_cert else None
        if client_cert and not client_key:
            raise ProxyConfigError("client_cert needs client_key")
        return {
            "url": url,
            "flavor": str(flavor),
            "username": given.username or None,
            "credential_kind": kind,
            "credential": credential,
            "ca_bundle": validate_pem(given.ca_bundle, "ca_bundle"),
            "client_cert": client_cert,
            "client_key": client_key if client_cert else None,
            "allow_private_network": given.allow_private_network,
            "tag_ttl_seconds": given.tag_ttl_seconds,
            "timeout_seconds": given.timeout_seconds,
            "platforms": [str(p) for p in platforms] if platforms else None,
            "anonymous_fetch": given.anonymous_fetch,
        }

    def config_of(self, project: str) -> ProxyConfig | None:
        """The project's proxy configuration (cached 2 s per worker), or None."""

        def load() -> ProxyConfig | None:
            row = self._store.proxy_upstream_of(project)
            return self._config(project, row) if row is not None else None

        return self._configs.get_or_load(project, load)

    def cached_config_of(self, project: str) -> tuple[bool, ProxyConfig | None]:
        """(True, config or None) from the per-worker cache, without loading."""
        return self._configs.peek(project)

    def _config(self, project: str, row: ProxyUpstreamRow) -> ProxyConfig:
        secret = self._box.open(row.project_id, row.credential)
        version = hashlib.sha256(
            f"{row.project_id}\0{row.updated_at.isoformat()}\0{row.url}".encode()
        ).hexdigest()[:16]
        endpoint = UpstreamEndpoint(
            project=project,
            url=row.url,
            flavor=Flavor(row.flavor),
            username=row.username,
            password=secret if row.credential_kind == "password" else None,
            token=secret if row.credential_kind == "token" else None,
            ca_bundle=row.ca_bundle,
            client_cert=row.client_cert,
            client_key=self._box.open(row.project_id, row.client_key),
            allow_private_network=row.allow_private_network,
            timeout_seconds=row.timeout_seconds,
            version=version,
        )
        platforms = tuple(parse_platforms(row.platforms) or ()) or None
        return ProxyConfig(
            endpoint, timedelta(seconds=row.tag_ttl_seconds), platforms, row.anonymous_fetch
        )


def promotion_only_refusal(project: str) -> str:
    return (
        f"project {project} is promotion-only, and a proxy cache would bring upstream content"
        " into it without a promotion; make it an ordinary project first (PUT"
        f" /api/v1/projects/{project}/stage with promotionOnly false) or proxy through another"
        " project"
    )


def _tls_summary(row: ProxyUpstreamRow) -> str:
    parts = [name for name, value in (("ca", row.ca_bundle), ("client", row.client_cert)) if value]
    return "+".join(parts) or "default"


def _view(project: str, row: ProxyUpstreamRow) -> ProxyView:
    return ProxyView(
        project=project,
        url=row.url,
        flavor=row.flavor,
        username=row.username,
        credential=row.credential_kind,
        ca_bundle=row.ca_bundle is not None,
        client_certificate=row.client_cert is not None,
        allow_private_network=row.allow_private_network,
        tag_ttl_seconds=row.tag_ttl_seconds,
        timeout_seconds=row.timeout_seconds,
        platforms=list(row.platforms or []),
        anonymous_fetch=row.anonymous_fetch,
        updated_by=row.updated_by,
        updated_at=row.updated_at if row.updated_at.tzinfo else row.updated_at.replace(tzinfo=UTC),
    )
