"""Registry tokens (Docker token authentication): short-lived ES256 JWTs.

Verification pins the algorithm, looks the key up by `kid` in the registry's own key set (never
from the token), and checks issuer, audience, expiry and not-before. Keys live in the database
so every worker and node shares them; rotation adds a key and retires the old one, which keeps
verifying until every token it signed has expired.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from moorage.domain.access import RepositoryGrant
from moorage.domain.events import AccessEvent, Actor
from moorage.metadata.access.iam_models import SigningKey
from moorage.metadata.access.iam_store import IamStore
from moorage.services.access.identity import Subject, grants_from, permissions_of
from moorage.services.events import EventBus

log = logging.getLogger("moorage.tokens")

ALGORITHM: Final = "ES256"
ISSUER: Final = "moorage"
_RELOAD_SECONDS: Final = 30.0
_VERIFIED_CACHE: Final = 4096
# Pull-only tokens handed to external scanner adapters may outlive ordinary tokens.
PULL_ONLY_MAX_TTL: Final = 1800


class TokenError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    subject: Subject
    access: dict[tuple[str, str], frozenset[str]]  # (type, name) -> actions
    expires_at: float

    def allows(self, kind: str, name: str, action: str) -> bool:
        actions = self.access.get((kind, name), frozenset())
        return action in actions or "*" in actions


def _limit_claim(value: object) -> tuple[RepositoryGrant, ...] | None:
    """The ceiling a token carries; a claim that cannot be read limits to nothing at all."""
    if value is None:
        return None
    try:
        if not isinstance(value, list):
            raise TypeError("the limit claim is a list")
        return grants_from(value)
    except (TypeError, ValueError, KeyError):
        return ()


def _new_key() -> SigningKey:
    private = ec.generate_private_key(ec.SECP256R1())
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    der = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # The key id is a fingerprint of the public key, so it cannot name a different key.
    kid = base64.b32encode(hashlib.sha256(der).digest()[:20]).decode().rstrip("=")
    return SigningKey(
        kid=kid,
        algorithm=ALGORITHM,
        private_pem=private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        public_pem=public_pem,
    )


def ensure_signing_key(store: IamStore) -> None:
    """Create the first key (at first start, before workers fork)."""
    if not any(key.retired_at is None for key in store.signing_keys()):
        store.add_signing_key(_new_key(), retire_others=False)


def rotate_signing_key(store: IamStore) -> str:
    key = _new_key()
    store.add_signing_key(key, retire_others=True)
    return key.kid


class TokenService:
    def __init__(self, store: IamStore, *, service: str, ttl_seconds: int) -> None:
        self._store = store
        self.service = service
        self.ttl_seconds = ttl_seconds
        self._lock = threading.Lock()
        self._private: tuple[str, ec.EllipticCurvePrivateKey] | None = None
        self._public: dict[str, ec.EllipticCurvePublicKey] = {}
        self._all_public: dict[str, ec.EllipticCurvePublicKey] = {}
        self._loaded_at = 0.0
        self._verified: OrderedDict[str, VerifiedToken] = OrderedDict()

    def _load(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._loaded_at < _RELOAD_SECONDS and self._private:
            return
        with self._lock:
            # A retired key verifies tokens until every token it signed has expired; its public
            # half is kept for good so signed audit checkpoints stay verifiable.
            longest = max(self.ttl_seconds, PULL_ONLY_MAX_TTL)
            cutoff = datetime.now(UTC) - timedelta(seconds=longest + 60)
            public: dict[str, ec.EllipticCurvePublicKey] = {}
            for_tokens: dict[str, ec.EllipticCurvePublicKey] = {}
            active = None
            for key in self._store.signing_keys():
                loaded = serialization.load_pem_public_key(key.public_pem)
                assert isinstance(loaded, ec.EllipticCurvePublicKey)
                public[key.kid] = loaded
                retired = key.retired_at
                if retired is not None and retired.tzinfo is None:
                    retired = retired.replace(tzinfo=UTC)
                if retired is None or retired > cutoff:
                    for_tokens[key.kid] = loaded
                if key.retired_at is None:
                    private = serialization.load_pem_private_key(key.private_pem, password=None)
                    assert isinstance(private, ec.EllipticCurvePrivateKey)
                    active = (key.kid, private)
            if active is None:
                raise TokenError("no active signing key")
            self._all_public, self._public, self._private = public, for_tokens, active
            self._loaded_at = time.monotonic()

    def rotate_key(self, events: EventBus, actor: Actor) -> str:
        """Sign with a new key from now on (every worker picks it up within 30 s)."""
        kid = rotate_signing_key(self._store)
        self._load(force=True)
        events.publish(
            AccessEvent(
                "signing-key:rotate", actor, resource=f"signing-key:{kid}", details={"kid": kid}
            )
        )
        return kid

    def public_keys(self) -> dict[str, ec.EllipticCurvePublicKey]:
        """Every key the registry ever signed with (for signed records, not tokens)."""
        self._load()
        return dict(self._all_public)

    def issue(
        self, subject: Subject, access: list[dict[str, Any]], ttl_seconds: int | None = None
    ) -> tuple[str, int, datetime]:
        """A signed token for `subject` granting exactly `access` (Docker's claim shape)."""
        self._load()
        assert self._private is not None
        kid, key = self._private
        now = datetime.now(UTC)
        ttl = self.ttl_seconds if ttl_seconds is None else ttl_seconds
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "sub": subject.name,
            "aud": self.service,
            "iat": int(now.timestamp()),
            "nbf": int(now.timestamp()) - 5,
            "exp": int(now.timestamp()) + ttl,
            "jti": secrets.token_urlsafe(12),
            "access": access,
            "moorage": {
                "kind": subject.kind,
                "id": subject.id,
                "admin": subject.is_admin,
                "credential": subject.credential,
                "proof": subject.proof,
                # The credential's ceiling travels with the token: every check made with it
                # (the catalog filter, upstream fetches, liveness) applies the same limit.
                "limit": permissions_of(subject.limit) if subject.limit is not None else None,
            },
        }
        token = jwt.encode(claims, key, algorithm=ALGORITHM, headers={"kid": kid})
        return token, ttl, now

    def issue_pull_only(self, repository: str, holder: str, ttl_seconds: int) -> str:
        """A token that can only pull `repository`, for a service the registry calls on
        (an external scanner adapter). It stands for no account: `holder` names it in the
        audit trail, and it expires within `PULL_ONLY_MAX_TTL`."""
        ttl = max(30, min(ttl_seconds, PULL_ONLY_MAX_TTL))
        subject = Subject("anonymous", None, holder, credential=holder)
        access = [{"type": "repository", "name": repository, "actions": ["pull"]}]
        token, _, _ = self.issue(subject, access, ttl)
        return token

    def verify(self, token: str) -> VerifiedToken:
        cache_key = hashlib.sha256(token.encode()).hexdigest()
        cached = self._verified.get(cache_key)
        if cached is not None and cached.expires_at > time.time():
            return cached
        verified = self._verify(token)
        with self._lock:
            self._verified[cache_key] = verified
            while len(self._verified) > _VERIFIED_CACHE:
                self._verified.popitem(last=False)
        return verified

    def _verify(self, token: str) -> VerifiedToken:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as error:
            raise TokenError(f"malformed token: {error}") from None
        if header.get("alg") != ALGORITHM:
            raise TokenError("unexpected token algorithm")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise TokenError("token has no key id")
        self._load()
        key = self._public.get(kid)
        if key is None:
            self._load(force=True)  # another process may have rotated keys
            key = self._public.get(kid)
        if key is None:
            raise TokenError("token signed by an unknown key")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=self.service,
                issuer=ISSUER,
                options={"require": ["exp", "nbf", "iat", "iss", "aud", "sub"]},
                leeway=5,
            )
        except jwt.PyJWTError as error:
            raise TokenError(f"invalid token: {error}") from None
        meta = claims.get("moorage") or {}
        if not isinstance(meta, dict):
            raise TokenError("invalid token: malformed moorage claims")
        subject = Subject(
            kind=str(meta.get("kind", "anonymous")),
            id=meta.get("id"),
            name=str(claims["sub"]),
            is_admin=bool(meta.get("admin", False)),
            limit=_limit_claim(meta.get("limit")),
            credential=meta.get("credential"),
            proof=meta.get("proof"),
        )
        access: dict[tuple[str, str], frozenset[str]] = {}
        for entry in claims.get("access") or []:
            if isinstance(entry, dict):
                kind, name = str(entry.get("type", "")), str(entry.get("name", ""))
                actions = frozenset(str(a) for a in entry.get("actions") or [])
                access[(kind, name)] = access.get((kind, name), frozenset()) | actions
        return VerifiedToken(subject, access, float(claims["exp"]))

    def sign_bytes(self, data: bytes) -> tuple[str, str]:
        """Sign with the active key (for audit checkpoints): (kid, base64 signature)."""
        self._load()
        assert self._private is not None
        kid, key = self._private
        signature = key.sign(data, ec.ECDSA(hashes.SHA256()))
        return kid, base64.b64encode(signature).decode()

    def verify_bytes(self, kid: str, data: bytes, signature: str) -> bool:
        key = self.public_keys().get(kid)
        if key is None:
            return False
        try:
            key.verify(base64.b64decode(signature), data, ec.ECDSA(hashes.SHA256()))
        except Exception:
            return False
        return True
