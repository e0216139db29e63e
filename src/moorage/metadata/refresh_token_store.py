"""SQL access for OAuth2 refresh tokens: families of single-use tokens, stored as hashes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from moorage.metadata.database import write_session
from moorage.metadata.iam_models import RefreshToken


@dataclass(frozen=True, slots=True)
class RefreshGrant:
    """What a refresh token stands for: the credential that signed in, and its ceiling."""

    user_id: int
    family: str
    credential: str | None
    proof: str
    account_proof: str
    scopes: list[dict[str, Any]] | None
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class Redemption:
    """The outcome of presenting a token: `grant` when it was live (now used up), or when it
    had been used before (`reused`: its family is revoked by then); None when unknown,
    revoked or expired."""

    grant: RefreshGrant | None
    reused: bool = False


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _grant(row: RefreshToken) -> RefreshGrant:
    return RefreshGrant(
        row.user_id,
        row.family,
        row.credential,
        row.proof,
        row.account_proof,
        row.scopes,
        _aware(row.expires_at),
    )


class RefreshTokenStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    def add(self, token_hash: str, grant: RefreshGrant) -> None:
        with write_session(self._engine) as session:
            # Expired tokens (and the used ones kept for reuse detection) leave here.
            session.execute(delete(RefreshToken).where(RefreshToken.expires_at < datetime.now(UTC)))
            session.add(
                RefreshToken(
                    token_hash=token_hash,
                    user_id=grant.user_id,
                    family=grant.family,
                    credential=grant.credential,
                    proof=grant.proof,
                    account_proof=grant.account_proof,
                    scopes=grant.scopes,
                    expires_at=grant.expires_at,
                    revoked=False,
                )
            )

    def redeem(self, token_hash: str) -> Redemption:
        """Use a token up, in one transaction: a second redemption of the same token, however
        close in time, sees it used and revokes its whole family."""
        with write_session(self._engine) as session:
            row = session.get(RefreshToken, token_hash)
            if row is None or row.revoked:
                return Redemption(None)
            if _aware(row.expires_at) <= datetime.now(UTC):
                return Redemption(None)
            if row.used_at is not None:
                self._revoke(session, row.family)
                return Redemption(_grant(row), reused=True)
            row.used_at = datetime.now(UTC)
            return Redemption(_grant(row))

    def peek(self, token_hash: str) -> Redemption:
        """A live token's grant, leaving it usable (for clients that cannot rotate)."""
        with self._sessions() as session:
            row = session.get(RefreshToken, token_hash)
            if row is None or row.revoked or _aware(row.expires_at) <= datetime.now(UTC):
                return Redemption(None)
            return Redemption(_grant(row))

    def grants(self, user_id: int) -> list[RefreshGrant]:
        """Every stored token of an account (used or not), oldest first."""
        with self._sessions() as session:
            rows = session.scalars(
                select(RefreshToken)
                .where(RefreshToken.user_id == user_id)
                .order_by(RefreshToken.created_at)
            )
            return [_grant(row) for row in rows]

    def revoke_family(self, family: str) -> None:
        with write_session(self._engine) as session:
            self._revoke(session, family)

    @staticmethod
    def _revoke(session: Session, family: str) -> None:
        session.execute(
            update(RefreshToken).where(RefreshToken.family == family).values(revoked=True)
        )
