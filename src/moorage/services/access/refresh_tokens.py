"""OAuth2 refresh tokens (docker's `identitytoken`): what keeps them from outliving the
credential that obtained them.

- A refresh token is bound to the credential that signed in (its proof: password version,
  personal access token id) and carries that credential's ceiling (a token's scopes). Redeeming
  it yields a subject with the same proof and ceiling, never more.
- It is stored only as a hash, and lives at most `refresh_token_days` from the sign-in: rotation
  hands out successors in the same family, with the family's expiry.
- With rotation (the default) every redemption returns a successor and uses the presented token
  up; presenting a used token again is reuse, which revokes the whole family.
- It stops working as soon as the credential is revoked, rotated, expired or disabled, or the
  account's password changes: each redemption checks all of that against the database.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from moorage.domain.events import AccessEvent, Actor
from moorage.metadata.access.iam_store import IamStore
from moorage.metadata.access.refresh_token_store import RefreshGrant
from moorage.services.access.identity import (
    AuthenticationError,
    IdentityService,
    Subject,
    grants_from,
    hash_secret,
    password_proof,
    permissions_of,
)
from moorage.services.events import EventBus

REFRESH_PREFIX = "mrt_"


@dataclass(frozen=True, slots=True)
class Redeemed:
    subject: Subject
    successor: str | None  # the next token of the family, with rotation


class RefreshTokenService:
    def __init__(
        self,
        store: IamStore,
        identity: IdentityService,
        events: EventBus,
        *,
        lifetime_days: int,
        rotation: bool = True,
    ) -> None:
        self._store = store
        self._tokens = store.refresh_tokens
        self._identity = identity
        self._events = events
        self._lifetime = timedelta(days=lifetime_days)
        self.rotation = rotation

    def issue(self, subject: Subject) -> str | None:
        """A new family for a user who just signed in with a credential that can be checked
        again later (a password or a personal access token); None for anything else."""
        if subject.kind != "user" or subject.id is None or subject.proof is None:
            return None
        user = self._store.user_by_id(subject.id)
        if user is None:
            return None
        grant = RefreshGrant(
            user_id=subject.id,
            family=secrets.token_hex(16),
            credential=subject.credential,
            proof=subject.proof,
            account_proof=password_proof(user),
            scopes=permissions_of(subject.limit) if subject.limit is not None else None,
            expires_at=datetime.now(UTC) + self._lifetime,
        )
        return self._add(grant)

    def _add(self, grant: RefreshGrant) -> str:
        token = _new_token()
        self._tokens.add(hash_secret(token), grant)
        return token

    def redeem(self, token: str, client_ip: str | None) -> Redeemed:
        """The subject the token stands for, and its successor; AuthenticationError when the
        token is unknown, used, revoked, expired, or its credential no longer holds."""
        if not token or len(token) > 256:
            raise AuthenticationError("invalid refresh token")
        token_hash = hash_secret(token)
        presented = self._tokens.peek(token_hash)
        grant = presented.grant
        if grant is None:
            raise AuthenticationError("invalid refresh token")
        user = self._store.user_by_id(grant.user_id)
        name = user.username if user is not None else f"user#{grant.user_id}"
        if presented.reused and self.rotation:
            self._tokens.revoke_family(grant.family)
            raise self._reused(grant, name, client_ip)
        subject = Subject(
            "user",
            grant.user_id,
            name,
            bool(user and user.is_admin),
            grants_from(grant.scopes) if grant.scopes is not None else None,
            credential=grant.credential,
            proof=grant.proof,
        )
        holds = (
            user is not None
            and not user.disabled
            and password_proof(user) == grant.account_proof
            and self._identity.proof_holds(subject, user)
        )
        if not holds:
            self._tokens.revoke_family(grant.family)
            raise AuthenticationError("invalid refresh token")
        if not self.rotation:
            return Redeemed(subject, None)
        successor = _new_token()
        if not self._tokens.rotate(token_hash, hash_secret(successor)):
            raise self._reused(grant, name, client_ip)
        return Redeemed(subject, successor)

    def _reused(self, grant: RefreshGrant, name: str, client_ip: str | None) -> Exception:
        """Audit the reuse of a used token (its family is revoked by then)."""
        self._events.publish(
            AccessEvent(
                "token:refresh-reuse",
                Actor(name, "user", client_ip, None, grant.user_id),
                "denied",
                resource=f"refresh-family:{grant.family[:12]}",
                details={"credential": grant.credential, "revoked": "family"},
            )
        )
        return AuthenticationError("invalid refresh token")


def _new_token() -> str:
    return REFRESH_PREFIX + secrets.token_urlsafe(32)
