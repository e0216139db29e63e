"""Credentials and the facts about them that every part of identity shares: password hashing,
the signed-in subject, secrets shown once, allow-lists (parsing, stored form) and the proofs that
tie a sign-in to the exact credential behind it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Final

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from moorage.domain.access import Action, PatternError, RepositoryGrant, validate_pattern
from moorage.domain.events import Actor
from moorage.domain.names import validate_repository_name
from moorage.metadata.access.iam_models import Robot
from moorage.services.errors import IdentityError

# Users, groups, robots and tokens are named alike.
NAME_RE: Final = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
# OWASP's argon2id parameters: 19 MiB, 2 passes, 1 lane. Bounded memory per concurrent sign-in.
_HASHER: Final = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
# One argon2 computation at a time per process: each holds 19 MiB and a core for tens of
# milliseconds, so a burst of sign-ins queues instead of multiplying memory and CPU.
_HASHING: Final = threading.Lock()
_dummy_hash: str | None = None


def hash_password(password: str) -> str:
    with _HASHING:
        return _HASHER.hash(password)


def password_matches(stored_hash: str, password: str) -> bool:
    with _HASHING:
        try:
            return bool(_HASHER.verify(stored_hash, password))
        except (VerificationError, InvalidHashError):
            return False


def unknown_user_hash() -> str:
    """A real hash to verify against for unknown users, so they cost the same time."""
    global _dummy_hash
    if _dummy_hash is None:
        _dummy_hash = hash_password(secrets.token_hex(16))
    return _dummy_hash


@dataclass(frozen=True, slots=True)
class Subject:
    """An authenticated caller."""

    kind: str  # user | robot | anonymous
    id: int | None
    name: str
    is_admin: bool = False
    limit: tuple[RepositoryGrant, ...] | None = None  # a scoped token narrows the user's access
    certificate: str | None = None
    credential: str | None = None  # e.g. "pat:ci-token", for the audit trail
    # Which exact credential signed in (password version, robot secret, token id): checked
    # again with the account, so a changed password or a rotated or revoked secret stops
    # working everywhere within the liveness cache time.
    proof: str | None = None

    def actor(self, client_ip: str | None) -> Actor:
        return Actor(self.name, self.kind, client_ip, self.certificate, self.id)


ANONYMOUS: Final = Subject("anonymous", None, "anonymous")


@dataclass(frozen=True, slots=True)
class IssuedSecret:
    """A secret shown once, with the name it belongs to."""

    name: str
    secret: str
    id: int


def hash_secret(secret: str) -> str:
    """Robot and token secrets carry 256 random bits: a fast hash suffices for them."""
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)


def parse_permissions(
    raw: Sequence[dict[str, Any]], *, project: str | None
) -> list[dict[str, Any]]:
    """Validate a robot's or token's allow-list: [{project, repositories, actions}]."""
    cleaned: list[dict[str, Any]] = []
    for item in raw:
        item_project = str(item.get("project", project or ""))
        if project is not None and item_project != project:
            raise IdentityError(
                f"a robot of project {project} cannot be granted access to {item_project}", 403
            )
        if item_project != "*":
            validate_repository_name(item_project)
        try:
            pattern = validate_pattern(str(item.get("repositories", "**")))
        except PatternError as error:
            raise IdentityError(str(error)) from None
        actions = item.get("actions") or []
        try:
            parsed = sorted({Action(a).value for a in actions})
        except ValueError as error:
            raise IdentityError(f"unknown action: {error}") from None
        if not parsed:
            raise IdentityError("a permission needs at least one action")
        cleaned.append({"project": item_project, "repositories": pattern, "actions": parsed})
    if not cleaned:
        raise IdentityError("at least one permission is required")
    return cleaned


def grants_from(permissions: Sequence[dict[str, Any]]) -> tuple[RepositoryGrant, ...]:
    return tuple(
        RepositoryGrant(
            str(p["project"]), str(p["repositories"]), frozenset(Action(a) for a in p["actions"])
        )
        for p in permissions
    )


def permissions_of(grants: Sequence[RepositoryGrant]) -> list[dict[str, Any]]:
    """The stored (and token claim) form of an allow-list; `grants_from` reads it back."""
    return [
        {
            "project": grant.project,
            "repositories": grant.pattern,
            "actions": sorted(action.value for action in grant.actions),
        }
        for grant in grants
    ]


def is_self(actor: Actor, username: str) -> bool:
    return actor.kind == "user" and actor.name == username


def password_proof(user: Any) -> str:
    changed = user.password_changed_at
    return f"password:{changed.replace(tzinfo=None).isoformat()}"


def robot_proof(robot: Robot) -> str:
    # A fingerprint of the stored hash: changes when the secret is rotated, reveals nothing.
    return "robot:" + hashlib.sha256(robot.secret_hash.encode()).hexdigest()[:16]


def expired(moment: datetime | None) -> bool:
    if moment is None:
        return False
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return aware <= datetime.now(UTC)


def with_certificate(subject: Subject, certificate: str | None) -> Subject:
    return replace(subject, certificate=certificate) if certificate else subject
