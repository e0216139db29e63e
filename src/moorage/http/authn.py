"""Who is calling: credentials from the Authorization header or a verified client certificate.

- `Bearer <registry token>`: a token from /service/token, verified (ES256, pinned); its access
  claims say what it may do. The account behind it must still be live (checked, cached 2 s).
- `Bearer mpat_…` or `Basic` (password, personal access token, robot secret): checked against
  the identity service; on /v2 only when direct Basic authentication is enabled.
- A client certificate mapped to a user or robot (mutual TLS).
- Otherwise anonymous.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from aiohttp import web

from moorage.services.access.identity import (
    ANONYMOUS,
    PAT_PREFIX,
    AuthenticationError,
    IdentityService,
    Subject,
)
from moorage.services.access.tokens import TokenError, TokenService, VerifiedToken
from moorage.services.threads import Threads

_CREDENTIAL_CACHE_SECONDS: Final = 10.0
_CREDENTIAL_CACHE_SIZE: Final = 1024


class InvalidTokenError(Exception):
    """A bearer token was presented but is not valid: the client should fetch a new one."""


@dataclass(frozen=True, slots=True)
class Caller:
    subject: Subject
    token: VerifiedToken | None = None  # set when authenticated by a registry token


def parse_basic(header: str) -> tuple[str, str] | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    username, sep, password = decoded.partition(":")
    return (username, password) if sep else None


class Authenticator:
    def __init__(
        self,
        identity: IdentityService,
        tokens: TokenService,
        threads: Threads,
        *,
        certificate_identity: str = "none",
    ) -> None:
        self._identity = identity
        self._tokens = tokens
        self._threads = threads
        self._certificate_identity = certificate_identity
        # Verified Basic credentials, keyed by a hash of the header: argon2 is deliberately slow.
        self._verified: OrderedDict[str, tuple[float, Subject]] = OrderedDict()

    async def caller(
        self, request: web.Request, *, allow_basic: bool, registry_tokens: bool = True
    ) -> Caller:
        """`registry_tokens`: whether this API accepts registry tokens (the audience of a
        registry token is the registry API, /v2; the management API refuses them)."""
        header = request.headers.get("Authorization", "")
        scheme = header.split(" ", 1)[0].lower()
        if scheme == "bearer":
            value = header[7:].strip()
            if value.startswith(PAT_PREFIX):
                if not allow_basic:
                    # Direct credentials on /v2 follow the Basic setting; clients trade them
                    # at the token service instead.
                    raise InvalidTokenError("a personal access token is not a registry token")
                return Caller(await self._credentials(request, "", value))
            if not registry_tokens:
                raise InvalidTokenError(
                    "registry tokens are for the registry API (/v2) only; sign in here with a"
                    " password, a personal access token or a robot secret"
                )
            return await self._bearer(value)
        if scheme == "basic" and allow_basic:
            pair = parse_basic(header)
            if pair is None:
                raise AuthenticationError("malformed Basic credentials")
            return Caller(await self._credentials(request, *pair))
        certificate_subject = self._certificate_subject(request)
        if certificate_subject is not None:
            return Caller(certificate_subject)
        return Caller(ANONYMOUS)

    async def _bearer(self, value: str) -> Caller:
        try:
            verified = self._tokens.verify(value)
        except TokenError as error:
            raise InvalidTokenError(str(error)) from None
        live = self._identity.is_live_cached(verified.subject)
        if live is None:
            live = await self._threads.run(self._identity.is_live, verified.subject)
        if not live:
            raise InvalidTokenError("the account behind this token is gone or disabled")
        return Caller(verified.subject, verified)

    async def _credentials(self, request: web.Request, username: str, secret: str) -> Subject:
        key = hashlib.sha256(f"{username}\0{secret}".encode()).hexdigest()
        hit = self._verified.get(key)
        if hit is not None and hit[0] > time.monotonic():
            subject = hit[1]
            # A lock (user or address) stops cached credentials too; so does a revoked one.
            await self._threads.run(
                self._identity.check_not_locked, username or subject.name, secret, request.remote
            )
            if await self._threads.run(self._identity.is_live, subject):
                return subject
        subject = await self._threads.run(
            self._identity.authenticate, username, secret, request.remote
        )
        self._verified[key] = (time.monotonic() + _CREDENTIAL_CACHE_SECONDS, subject)
        while len(self._verified) > _CREDENTIAL_CACHE_SIZE:
            self._verified.popitem(last=False)
        return subject

    def _certificate_subject(self, request: web.Request) -> Subject | None:
        if self._certificate_identity == "none" or request.transport is None:
            return None
        certificate = request.transport.get_extra_info("peercert")
        if not certificate:
            return None
        name = certificate_name(certificate, self._certificate_identity)
        if name is None:
            return None
        return self._identity.subject_for_certificate(name, describe_certificate(certificate))


def certificate_name(certificate: dict[str, object], mode: str) -> str | None:
    """The account name a verified client certificate stands for (CN, or a SAN entry)."""
    if mode == "cn":
        for rdn in certificate.get("subject", ()):  # type: ignore[attr-defined]
            for key, value in rdn:
                if key == "commonName":
                    return str(value)
        return None
    if mode in ("san-email", "san-dns", "san-uri"):
        wanted = {"san-email": "email", "san-dns": "DNS", "san-uri": "URI"}[mode]
        for kind, value in certificate.get("subjectAltName", ()):  # type: ignore[attr-defined]
            if kind == wanted:
                return str(value).split("@", 1)[0] if kind == "email" else str(value)
    return None


def describe_certificate(certificate: dict[str, object]) -> str:
    parts = []
    for rdn in certificate.get("subject", ()):  # type: ignore[attr-defined]
        for key, value in rdn:
            parts.append(f"{key}={value}")
    serial = certificate.get("serialNumber")
    return ",".join(parts)[:400] + (f";serial={serial}" if serial else "")
