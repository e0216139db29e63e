"""Proxy-cache projects: their upstream configuration, and pulls through the cache.

A project with an upstream configuration is a proxy-cache project. A pull of a manifest or blob
it does not hold yet is fetched from the upstream, stored (verified against its digest) and from
then on served locally. The registry core stays free of HTTP: the upstream is reached through
the `UpstreamClient` protocol, which `moorage.http.upstream` implements over the one outbound
client factory.

- Digest pulls never go upstream once cached. A tag pull after the tag's TTL asks the upstream
  with a HEAD (which Docker Hub does not count as a pull) whether the cached manifest is still
  current; if the upstream is down, slow or rate-limited, the cached manifest is served
  (stale-if-error), logged and counted.
- Single flight: concurrent pulls of the same uncached manifest or blob cause one upstream fetch.
  Within a worker the others wait for the first; across workers a file lock per object orders
  them, and whoever gets it after the first finds the object stored.
- Fetching new content is a separate decision from pulling (`upstream-fetch`), made by the HTTP
  layer and handed in as `may_fetch`; cached content needs only `pull`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import secrets
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final, Protocol, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from moorage.domain import mediatypes as mt
from moorage.domain.digest import Digest
from moorage.domain.errors import ErrorCode, RegistryError
from moorage.domain.events import (
    SYSTEM,
    AccessEvent,
    Actor,
    EventKind,
    RegistryEvent,
    policy_denied,
)
from moorage.domain.manifest import parse_manifest
from moorage.domain.names import Reference, project_of
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
    platform_admitted,
    upstream_repository,
    validate_pem,
)
from moorage.hashing import new_resumable
from moorage.metadata.iam_models import ProxyUpstreamRow
from moorage.metadata.iam_store import IamStore, PromotionOnlyConflictError
from moorage.metadata.store import MetadataStore
from moorage.services.cache import TtlCache
from moorage.services.errors import IdentityError
from moorage.services.events import EventBus
from moorage.services.threads import Threads
from moorage.storage.base import StorageDriver

log = logging.getLogger("moorage.proxy")
T = TypeVar("T")

CONFIG_CACHE_SECONDS: Final = 2.0
# What the proxy asks the upstream for: every manifest type the registry stores.
UPSTREAM_ACCEPT: Final = (
    mt.OCI_INDEX,
    mt.OCI_MANIFEST,
    mt.DOCKER_MANIFEST_LIST,
    mt.DOCKER_MANIFEST,
)
# An index of indexes is followed this deep, no further.
_MAX_INDEX_DEPTH: Final = 2
_LOCK_POLL_SECONDS: Final = 0.05
_IMAGE_TYPES: Final = frozenset({mt.OCI_MANIFEST, mt.DOCKER_MANIFEST})
_KEY_NAME: Final = "proxy-credentials"


# -- what the upstream side provides


class UpstreamError(Exception):
    """The upstream could not provide what was asked.

    `kind`: not-found, unauthorized, denied, rate-limited, unavailable (down, timeout, 5xx) or
    invalid (an answer the proxy cannot use, e.g. a digest that does not match).
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class UpstreamManifest:
    body: bytes
    media_type: str
    digest: str | None  # Docker-Content-Digest, when the upstream sent it


@dataclass(frozen=True, slots=True)
class UpstreamHead:
    digest: str | None
    media_type: str | None


@dataclass(frozen=True, slots=True)
class UpstreamBlobHead:
    size: int | None  # Content-Length of the upstream's HEAD
    digest: str | None  # Docker-Content-Digest, when the upstream sent it


class UpstreamBlob(Protocol):
    @property
    def size(self) -> int | None: ...

    def chunks(self) -> AsyncIterator[bytes]: ...

    async def close(self) -> None: ...


class UpstreamClient(Protocol):
    async def get_manifest(
        self, repository: str, reference: str, max_bytes: int
    ) -> UpstreamManifest: ...

    async def head_manifest(self, repository: str, reference: str) -> UpstreamHead: ...

    async def open_blob(self, repository: str, digest: str) -> UpstreamBlob: ...

    async def head_blob(self, repository: str, digest: str) -> UpstreamBlobHead: ...

    async def check(self) -> None:
        """Reach the upstream's /v2/ and sign in: raises UpstreamError when that fails."""
        ...


@dataclass(frozen=True, slots=True)
class UpstreamEndpoint:
    """What a client needs to reach one upstream. Secrets are kept out of repr."""

    project: str
    url: str
    flavor: Flavor
    username: str | None
    password: str | None = field(repr=False)
    token: str | None = field(repr=False)
    ca_bundle: str | None
    client_cert: str | None
    client_key: str | None = field(repr=False)
    allow_private_network: bool
    timeout_seconds: int
    version: str  # changes whenever the configuration changes: clients are cached by it


class UpstreamClients(Protocol):
    def client(self, endpoint: UpstreamEndpoint) -> UpstreamClient: ...


# -- configuration


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
        self._configs = TtlCache(CONFIG_CACHE_SECONDS)
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


# -- single flight


class SingleFlight:
    """One leader per key inside this process; the others wait for it to finish."""

    def __init__(self) -> None:
        self._running: dict[str, asyncio.Future[None]] = {}

    def join(self, key: str) -> asyncio.Future[None] | None:
        """The running flight's future to wait on, or None: the caller now leads `key` and
        must call `finish(key)`."""
        running = self._running.get(key)
        if running is not None:
            return running
        self._running[key] = asyncio.get_running_loop().create_future()
        return None

    def finish(self, key: str) -> None:
        running = self._running.pop(key, None)
        if running is not None and not running.done():
            running.set_result(None)


class FileLocks:
    """Cross-process exclusive locks over a fixed set of lock files (workers share the data
    directory). Keys are spread over the files by hash, so the files never grow in number;
    two keys that share a file merely take turns."""

    STRIPES: Final = 4096

    def __init__(self, directory: Path) -> None:
        self._directory = directory

    def _path(self, key: str) -> Path:
        stripe = int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") % self.STRIPES
        return self._directory / f"{stripe:04x}.lock"

    def try_acquire(self, key: str) -> int | None:
        self._directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._path(key), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return None
            raise
        return fd

    @staticmethod
    def release(fd: int) -> None:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


# -- the pull path


@dataclass
class ProxyStats:
    """Counters of the proxy's work in this worker (logged; exported with metrics later)."""

    counts: Counter[str] = field(default_factory=Counter)

    def count(self, what: str) -> None:
        self.counts[what] += 1


# Whether the caller may bring new content in. Called with True when the pull fails without
# it (the HTTP side may then ask an anonymous client to sign in), False when a cached copy
# will be served anyway.
MayFetch = Callable[[bool], Awaitable[bool]]


class LiveBlob:
    """A blob being fetched from the upstream: its chunks go to the client as they arrive and
    to storage; the copy is committed only when the whole blob matches its digest."""

    def __init__(
        self,
        size: int,
        chunks: AsyncGenerator[bytes, None],
        source: UpstreamBlob,
        finish: Callable[[], None],
    ) -> None:
        self.size = size
        self._chunks = chunks
        self._source = source
        self._finish = finish

    def chunks(self) -> AsyncIterator[bytes]:
        return self._chunks

    async def aclose(self) -> None:
        """Stop (when not finished): the partial copy is discarded, the fetch ends."""
        try:
            await self._chunks.aclose()
            await self._source.close()
        finally:
            self._finish()


class ProxyCache:
    def __init__(
        self,
        proxies: ProxyService,
        clients: UpstreamClients,
        storage: StorageDriver,
        metadata: MetadataStore,
        threads: Threads,
        events: EventBus,
        locks: FileLocks,
        *,
        max_manifest_bytes: int,
        max_blob_bytes: int,
    ) -> None:
        self._proxies = proxies
        self._clients = clients
        self._storage = storage
        self._metadata = metadata
        self._threads = threads
        self._events = events
        self._locks = locks
        self._flights = SingleFlight()
        self._max_manifest_bytes = max_manifest_bytes
        self._max_blob_bytes = max_blob_bytes
        self.stats = ProxyStats()

    async def config_for(self, project: str) -> ProxyConfig | None:
        hit, config = self._proxies.cached_config_of(project)
        if hit:
            return config
        return await self._threads.run(self._proxies.config_of, project)

    async def check(self, config: ProxyConfig) -> None:
        """Reach the upstream and sign in (UpstreamError when that fails)."""
        await self._clients.client(config.endpoint).check()

    def _upstream_name(self, config: ProxyConfig, repository: str) -> str:
        name = upstream_repository(config.endpoint.project, repository, config.endpoint.flavor)
        if name is None:
            raise RegistryError(
                ErrorCode.NAME_UNKNOWN,
                f"{repository} is the proxy-cache project itself; pull"
                f" {config.endpoint.project}/<upstream repository>",
            )
        return name

    # -- manifests

    async def ensure_manifest(
        self,
        config: ProxyConfig,
        repository: str,
        reference: Reference,
        actor: Actor,
        may_fetch: MayFetch,
    ) -> None:
        """Make sure the manifest `reference` names is stored and, for a tag, fresh enough."""
        upstream = self._upstream_name(config, repository)
        if reference.digest is not None:
            digest = str(reference.digest)
            if await self._threads.run(self._metadata.resolve_digest, repository, digest):
                return  # a digest never changes: no upstream traffic once cached
            await self._fetch_once(
                f"manifest:{repository}@{digest}",
                lambda: self._resolve_digest_local(repository, digest),
                lambda: self._require_fetch(may_fetch, repository, digest, actor),
                lambda: self._fetch_manifest(config, repository, upstream, digest, None, actor),
            )
            return
        tag = reference.tag
        assert tag is not None
        record = await self._threads.run(self._metadata.resolve_tag, repository, tag)
        if record is None:
            await self._fetch_once(
                f"manifest:{repository}:{tag}",
                lambda: self._tag_present(repository, tag),
                lambda: self._require_fetch(may_fetch, repository, tag, actor),
                lambda: self._fetch_manifest(config, repository, upstream, tag, tag, actor),
            )
            return
        checked = await self._threads.run(self._metadata.tag_checked_at, repository, tag)
        now = datetime.now(UTC)
        if checked is not None and now - checked < config.tag_ttl:
            self.stats.count("tag-fresh")
            return
        # One check per stale tag at a time in this worker; the others serve what the check
        # leaves in the cache.
        key = f"check:{repository}:{tag}"
        waiting = self._flights.join(key)
        if waiting is not None:
            await asyncio.shield(waiting)
            return
        try:
            await self._revalidate(
                config, repository, upstream, tag, record.digest, actor, may_fetch
            )
        finally:
            self._flights.finish(key)

    async def _revalidate(
        self,
        config: ProxyConfig,
        repository: str,
        upstream: str,
        tag: str,
        cached_digest: str,
        actor: Actor,
        may_fetch: MayFetch,
    ) -> None:
        client = self._clients.client(config.endpoint)
        try:
            head = await client.head_manifest(upstream, tag)
        except UpstreamError as error:
            self._serve_stale(repository, tag, error)
            return
        self.stats.count("tag-revalidated")
        if head.digest == cached_digest:
            await self._threads.run(
                self._metadata.mark_tag_checked, repository, tag, datetime.now(UTC)
            )
            self._events.publish(
                RegistryEvent(
                    EventKind.TAG_REVALIDATED, repository, cached_digest, tag, actor=actor
                )
            )
            return
        if not await may_fetch(False):
            log.info(
                "tag %s:%s changed upstream; the caller may not fetch it, serving the cached copy",
                repository,
                tag,
            )
            return
        try:
            await self._fetch_once(
                f"manifest:{repository}:{tag}",
                lambda: self._tag_is(repository, tag, head.digest),
                _permitted,
                lambda: self._fetch_manifest(config, repository, upstream, tag, tag, actor),
            )
        except RegistryError as error:
            # The upstream changed the tag but the new manifest could not be fetched.
            self._serve_stale(repository, tag, UpstreamError("fetch-failed", error.message))

    def _serve_stale(self, repository: str, tag: str, error: UpstreamError) -> None:
        self.stats.count(f"stale-served:{error.kind}")
        log.warning(
            "upstream check of %s:%s failed (%s: %s); serving the cached manifest"
            " (stale-if-error, %d so far in this worker)",
            repository,
            tag,
            error.kind,
            error,
            sum(v for k, v in self.stats.counts.items() if k.startswith("stale-served:")),
        )

    async def _resolve_digest_local(self, repository: str, digest: str) -> bool:
        found = await self._threads.run(self._metadata.resolve_digest, repository, digest)
        return found is not None

    async def _tag_present(self, repository: str, tag: str) -> bool:
        found = await self._threads.run(self._metadata.resolve_tag, repository, tag)
        return found is not None

    async def _tag_is(self, repository: str, tag: str, digest: str | None) -> bool:
        found = await self._threads.run(self._metadata.resolve_tag, repository, tag)
        return found is not None and found.digest == digest

    async def _require_fetch(
        self, may_fetch: MayFetch, repository: str, what: str, actor: Actor
    ) -> None:
        if await may_fetch(True):
            return
        self.stats.count("fetch-refused")
        message = (
            f"{repository} {what} is not cached, and bringing new content in from the upstream"
            " needs the upstream-fetch permission"
        )
        self._events.publish(
            AccessEvent(
                "access:denied",
                actor,
                "denied",
                project_of(repository),
                f"{repository}:{what}"[:500],
                {"action": "upstream-fetch", "reason": message},
            )
        )
        raise RegistryError(ErrorCode.DENIED, message)

    async def _fetch_once(
        self,
        key: str,
        present: Callable[[], Awaitable[bool]],
        permit: Callable[[], Awaitable[None]],
        fetch: Callable[[], Awaitable[None]],
    ) -> None:
        """Run `fetch` unless another request of any worker is fetching (or has fetched) the
        same object: then wait for it and re-check. Only a request that would fetch itself
        needs the permission (`permit` raises without it): waiting for another's fetch serves
        what is cached."""
        for _ in range(3):
            waiting = self._flights.join(key)
            if waiting is not None:
                await asyncio.shield(waiting)
                if await present():
                    return
                continue
            try:
                fd = await self._cross_process_lock(key)
                try:
                    if await present():
                        return
                    await permit()
                    await fetch()
                    return
                finally:
                    FileLocks.release(fd)
            finally:
                self._flights.finish(key)
        await permit()
        await fetch()

    async def _cross_process_lock(self, key: str) -> int:
        while True:
            fd = await self._threads.run(self._locks.try_acquire, key)
            if fd is not None:
                return fd
            await asyncio.sleep(_LOCK_POLL_SECONDS)

    async def _fetch_manifest(
        self,
        config: ProxyConfig,
        repository: str,
        upstream: str,
        reference: str,
        tag: str | None,
        actor: Actor,
        depth: int = 0,
    ) -> None:
        client = self._clients.client(config.endpoint)
        fetched = await self._upstream(
            client.get_manifest(upstream, reference, self._max_manifest_bytes),
            f"manifest {reference} of {upstream}",
            ErrorCode.MANIFEST_UNKNOWN,
        )
        self.stats.count("manifest-fetched")
        wanted = Digest.parse(reference) if tag is None else None
        digest = Digest.of(fetched.body, wanted.algorithm if wanted else "sha256")
        announced = fetched.digest
        if (wanted is not None and digest != wanted) or (
            announced is not None
            and announced.startswith(f"{digest.algorithm}:")
            and announced != str(digest)
        ):
            raise RegistryError(
                ErrorCode.DIGEST_INVALID,
                f"the upstream's manifest {reference} of {upstream} does not match its digest;"
                " nothing was stored",
                status=502,
            )
        manifest = parse_manifest(fetched.body, fetched.media_type, digest)
        if manifest.is_index and depth < _MAX_INDEX_DEPTH:
            for child in manifest.children:
                if not platform_admitted(config.platforms, child.platform):
                    continue
                child_digest = str(child.digest)
                if await self._resolve_digest_local(repository, child_digest):
                    continue
                await self._fetch_manifest(
                    config, repository, upstream, child_digest, None, actor, depth + 1
                )
        await self._threads.run(
            lambda: self._metadata.put_manifest(
                repository, manifest, fetched.body, tag, cached_at=datetime.now(UTC)
            )
        )
        self._events.publish(
            RegistryEvent(
                EventKind.MANIFEST_CACHED,
                repository,
                str(digest),
                tag,
                manifest.media_type,
                manifest.size,
                actor,
            )
        )
        if not manifest.is_index and not await self._threads.run(
            self._metadata.blobs_missing_from, repository, str(digest)
        ):
            # Its blobs were all cached already (layers shared with another image).
            self._events.publish(
                RegistryEvent(
                    EventKind.IMAGE_CACHED,
                    repository,
                    str(digest),
                    media_type=manifest.media_type,
                    actor=actor,
                )
            )

    async def _upstream(self, call: Awaitable[T], what: str, missing: ErrorCode) -> T:
        """Await an upstream call; its failure becomes a clear registry error."""
        try:
            return await call
        except UpstreamError as error:
            raise upstream_failure(error, what, missing) from None

    # -- blobs

    async def ensure_blob(
        self,
        config: ProxyConfig,
        repository: str,
        digest: Digest,
        actor: Actor,
        may_fetch: MayFetch,
        *,
        stream: bool,
    ) -> LiveBlob | None:
        """None when the blob is (now) stored and linked to `repository`; else, with `stream`,
        a LiveBlob this request must send to its client (it leads the upstream fetch)."""
        text = str(digest)
        if await self._present_blob(repository, text):
            return None
        upstream = self._upstream_name(config, repository)
        # Keyed by repository: a blob stored for another repository is never handed out here
        # on its digest alone (that would let a digest stand in for pull on that repository).
        key = f"blob:{repository}@{text}"
        for _ in range(3):
            waiting = self._flights.join(key)
            if waiting is not None:
                await asyncio.shield(waiting)
                if await self._present_blob(repository, text):
                    return None
                continue
            fd: int | None = None
            try:
                fd = await self._cross_process_lock(key)
                if await self._present_blob(repository, text):
                    FileLocks.release(fd)
                    self._flights.finish(key)
                    return None
                await self._require_fetch(may_fetch, repository, text, actor)
                live = await self._start_blob(config, repository, upstream, digest, actor, fd, key)
            except BaseException:
                if fd is not None:
                    FileLocks.release(fd)
                self._flights.finish(key)
                raise
            if stream:
                return live
            await _drain(live)
            return None
        raise RegistryError(
            ErrorCode.BLOB_UNKNOWN, f"blob {digest} could not be fetched from the upstream"
        )

    async def head_blob(
        self,
        config: ProxyConfig,
        repository: str,
        digest: Digest,
        actor: Actor,
        may_fetch: MayFetch,
    ) -> int | None:
        """None when the blob is stored and linked to `repository`; else its size as the
        upstream's HEAD states it. Nothing is downloaded or stored: a HEAD only asks."""
        text = str(digest)
        if await self._present_blob(repository, text):
            return None
        upstream = self._upstream_name(config, repository)
        # Asking the upstream reveals what it holds: the same permission as fetching.
        await self._require_fetch(may_fetch, repository, text, actor)
        client = self._clients.client(config.endpoint)
        head = await self._upstream(
            client.head_blob(upstream, text), f"blob {digest} of {upstream}", ErrorCode.BLOB_UNKNOWN
        )
        self.stats.count("blob-head")
        if head.digest is not None and head.digest != text:
            raise RegistryError(
                ErrorCode.DIGEST_INVALID,
                f"the upstream answered for blob {digest} with the digest {head.digest[:100]}",
                status=502,
            )
        if head.size is None or head.size > self._max_blob_bytes:
            raise RegistryError(
                ErrorCode.SIZE_INVALID,
                f"the upstream's blob {digest} has no length or exceeds {self._max_blob_bytes}"
                " bytes",
                status=502,
            )
        return head.size

    async def _present_blob(self, repository: str, digest: str) -> bool:
        """Whether the blob is linked to `repository`, or can be without upstream traffic:
        another repository of the same proxy project holds it (so it came from the same
        upstream) and a manifest cached in this repository references it."""
        size = await self._threads.run(self._metadata.blob_size_in_repository, repository, digest)
        if size is not None:
            return True
        size = await self._threads.run(
            self._metadata.cached_blob_size, repository, digest, project_of(repository)
        )
        if size is None:
            return False
        await self._threads.run(self._metadata.link_blob, repository, digest, size)
        self.stats.count("blob-linked")
        await self._images_completed(repository, digest, None)
        return True

    async def _images_completed(self, repository: str, blob: str, actor: Actor | None) -> None:
        """Announce the cached images this blob completed (scan on push scans them)."""
        completed = await self._threads.run(self._metadata.manifests_completed_by, repository, blob)
        for digest, media_type in completed:
            if media_type in _IMAGE_TYPES:
                self._events.publish(
                    RegistryEvent(
                        EventKind.IMAGE_CACHED,
                        repository,
                        digest,
                        media_type=media_type,
                        actor=actor or SYSTEM,
                    )
                )

    async def fill_image(
        self,
        config: ProxyConfig,
        repository: str,
        digest: str,
        actor: Actor,
        may_fetch: MayFetch,
    ) -> int:
        """Fetch every blob a cached manifest (and the cached children of an index) references
        that is not cached yet, through the same single flight as pulls; how many there were."""
        fetched = 0
        pending, seen = [digest], set[str]()
        while pending:
            current = pending.pop()
            if current in seen:
                continue
            seen.add(current)
            record = await self._threads.run(self._metadata.resolve_digest, repository, current)
            body = await self._threads.run(self._metadata.manifest_body, current)
            if record is None or body is None:
                continue
            parsed = parse_manifest(body, record.media_type, Digest.parse(current))
            pending.extend(str(child.digest) for child in parsed.children)
            missing = await self._threads.run(
                self._metadata.blobs_missing_from, repository, current
            )
            for blob in missing:
                await self.ensure_blob(
                    config, repository, Digest.parse(blob), actor, may_fetch, stream=False
                )
                fetched += 1
        return fetched

    async def _start_blob(
        self,
        config: ProxyConfig,
        repository: str,
        upstream: str,
        digest: Digest,
        actor: Actor,
        fd: int,
        key: str,
    ) -> LiveBlob:
        client = self._clients.client(config.endpoint)
        source = await self._upstream(
            client.open_blob(upstream, str(digest)),
            f"blob {digest} of {upstream}",
            ErrorCode.BLOB_UNKNOWN,
        )
        if source.size is None or source.size > self._max_blob_bytes:
            await source.close()
            raise RegistryError(
                ErrorCode.SIZE_INVALID,
                f"the upstream's blob {digest} has no length or exceeds {self._max_blob_bytes}"
                " bytes",
                status=502,
            )
        self.stats.count("blob-fetched")
        size = source.size
        finished = False

        def finish() -> None:
            nonlocal finished
            if not finished:
                finished = True
                FileLocks.release(fd)
                self._flights.finish(key)

        return LiveBlob(
            size, self._copy(source, repository, digest, size, actor, finish), source, finish
        )

    async def _copy(
        self,
        source: UpstreamBlob,
        repository: str,
        digest: Digest,
        size: int,
        actor: Actor,
        finish: Callable[[], None],
    ) -> AsyncGenerator[bytes, None]:
        upload_id = f"proxy-{secrets.token_hex(16)}"
        committed = False
        try:
            await self._threads.run(self._storage.create_upload, upload_id)
            writer = await self._threads.run(self._storage.open_upload, upload_id)
            try:
                hasher = new_resumable(digest.algorithm)
                # The last chunk is held back until the blob is verified, committed and
                # linked: a client that received every byte can pull it from the cache at once,
                # and a client of a blob that does not match never gets a complete body.
                held = b""
                try:
                    async for chunk in source.chunks():
                        if writer.size + len(chunk) > size:
                            raise RegistryError(
                                ErrorCode.SIZE_INVALID,
                                f"the upstream sent more than the {size} bytes of blob {digest}",
                                status=502,
                            )
                        writer.write(chunk)
                        hasher.update(chunk)
                        if held:
                            yield held
                        held = chunk
                except UpstreamError as error:
                    raise upstream_failure(
                        error, f"blob {digest}", ErrorCode.BLOB_UNKNOWN
                    ) from None
                actual = Digest(digest.algorithm, hasher.hexdigest())
                if writer.size != size or actual != digest:
                    self.stats.count("digest-mismatch")
                    log.error(
                        "upstream blob %s of %s arrived as %s (%d of %d bytes); discarded",
                        digest,
                        repository,
                        actual,
                        writer.size,
                        size,
                    )
                    raise RegistryError(
                        ErrorCode.DIGEST_INVALID,
                        f"the upstream's blob does not match {digest}; nothing was stored",
                        status=502,
                    )
                await self._threads.run(writer.commit, digest)
                committed = True
            finally:
                writer.close()
            await self._threads.run(self._metadata.link_blob, repository, str(digest), size)
            self._events.publish(
                RegistryEvent(
                    EventKind.BLOB_CACHED, repository, str(digest), size=size, actor=actor
                )
            )
            await self._images_completed(repository, str(digest), actor)
            if held:
                yield held
        finally:
            await source.close()
            if not committed:
                with contextlib.suppress(OSError):
                    await self._threads.run(self._storage.delete_upload, upload_id)
            finish()


async def _drain(live: LiveBlob) -> None:
    try:
        async for _ in live.chunks():
            pass
    finally:
        await live.aclose()


async def _permitted() -> None:
    """The permission was already checked."""


def upstream_failure(error: UpstreamError, what: str, missing: ErrorCode) -> RegistryError:
    """The registry error a client sees for an upstream failure: it names the cause."""
    if error.kind == "not-found":
        return RegistryError(missing, f"{what} is not cached and the upstream does not have it")
    if error.kind == "rate-limited":
        return RegistryError(
            ErrorCode.TOOMANYREQUESTS,
            f"{what} is not cached and the upstream is rate-limiting this proxy: {error}",
        )
    if error.kind in ("unauthorized", "denied"):
        return RegistryError(
            ErrorCode.DENIED,
            f"{what} is not cached and the upstream refused this proxy's credentials: {error}",
            status=502,
        )
    return RegistryError(
        missing, f"{what} is not cached and the upstream is unavailable: {error}", status=502
    )
