"""SQL access for OAuth2 refresh tokens: families of single-use tokens, stored as hashes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from moorage.metadata.access.iam_models import RefreshToken
from moorage.metadata.database import write_session


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
    """What a presented token stands for: `grant` (None when unknown, revoked or expired), and
    whether it was used before (`reused`)."""

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


def _row(token_hash: str, grant: RefreshGrant) -> RefreshToken:
    return RefreshToken(
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


class RefreshTokenStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    def add(self, token_hash: str, grant: RefreshGrant) -> None:
        with write_session(self._engine, serialise_on=()) as session:
            # Expired tokens (and the used ones kept for reuse detection) leave here.
            session.execute(delete(RefreshToken).where(RefreshToken.expires_at < datetime.now(UTC)))
            session.add(_row(token_hash, grant))

    def peek(self, token_hash: str) -> Redemption:
        """What a token stands for, without using it up: None when unknown, revoked or
        expired; `reused` when it was used before."""
        with self._sessions() as session:
            row = session.get(RefreshToken, token_hash)
            if row is None or row.revoked or _aware(row.expires_at) <= datetime.now(UTC):
                return Redemption(None)
            return Redemption(_grant(row), reused=row.used_at is not None)

    def rotate(self, token_hash: str, successor_hash: str) -> bool:
        """Use a token up and store its successor, in one transaction; False when it was used
        (or revoked) meanwhile, and then the whole family is revoked.

        The successor is written in the transaction that uses its predecessor up, so a
        concurrent redemption of the same token, however close in time, sees it used, and its
        revocation of the family covers the successor too.
        """
        with write_session(self._engine, serialise_on=()) as session:
            # The row lock makes a concurrent rotation (another node) wait, then see it used.
            row = session.get(RefreshToken, token_hash, with_for_update=True)
            if row is None:
                return False
            if row.revoked or row.used_at is not None:
                self._revoke(session, row.family)
                return False
            if _aware(row.expires_at) <= datetime.now(UTC):
                return False
            row.used_at = datetime.now(UTC)
            session.add(_row(successor_hash, _grant(row)))
            return True

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
        with write_session(self._engine, serialise_on=()) as session:
            self._revoke(session, family)

    @staticmethod
    def _revoke(session: Session, family: str) -> None:
        session.execute(
            update(RefreshToken).where(RefreshToken.family == family).values(revoked=True)
        )
