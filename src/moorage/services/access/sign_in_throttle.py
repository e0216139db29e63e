"""Back-off for failed sign-ins that an attacker cannot turn against other people.

Counters (rows of `login_throttle`, keyed by a string):

- `ip:<address>`: every failure from one client address; at `max_failures_per_address` the
  address is locked for every credential.
- `user:<name>|<address>`, `pat:<public id>|<address>`, `robot:<name>|<address>`: failures of one
  credential from one address; at `max_failures` that pair is locked.
- `user:<name>`: password failures for an account from anywhere, against guessing spread over
  many addresses. It locks the account only for addresses the account has not signed in from
  within `familiar_days` (a `seen:<name>|<address>` row records each sign-in), so a flood from
  one address never locks out the owner at an address they use.

Personal access tokens and robot secrets carry 256 random bits: guessing them is hopeless, so
their failures never count against the account or the robot as a whole, only against the
presenting address. A lock doubles from `base_lock_seconds` up to `max_lock_seconds`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from moorage.metadata.access.iam_store import IamStore
from moorage.services.cache import TtlCache
from moorage.services.errors import ThrottledError

PAT_PREFIX: Final = "mpat_"
_MAX_NAME: Final = 200
_CACHE_SECONDS: Final = 2.0


@dataclass(frozen=True, slots=True)
class ThrottlePolicy:
    max_failures: int = 5  # per credential and address, and per account (unfamiliar addresses)
    # Per client address: higher, because many people can share one (NAT, proxies).
    max_failures_per_address: int = 20
    failure_window_seconds: float = 900
    base_lock_seconds: float = 30
    max_lock_seconds: float = 900
    familiar_days: int = 30


@dataclass(frozen=True, slots=True)
class Attempt:
    """Who is trying to sign in with what kind of secret, from where."""

    username: str
    secret: str
    client_ip: str | None

    @property
    def account(self) -> str | None:
        """The account-wide counter's key: passwords only."""
        if self.secret.startswith(PAT_PREFIX) or self.username.startswith("robot$"):
            return None
        return f"user:{self.username[:_MAX_NAME]}"

    @property
    def credential(self) -> str:
        """The key of this credential at this address."""
        address = self.client_ip or "-"
        if self.secret.startswith(PAT_PREFIX):
            public_id = self.secret[len(PAT_PREFIX) :].partition("_")[0][:32]
            return f"pat:{public_id}|{address}"
        if self.username.startswith("robot$"):
            return f"robot:{self.username[:_MAX_NAME]}|{address}"
        return f"user:{self.username[:_MAX_NAME]}|{address}"

    @property
    def address(self) -> str | None:
        return f"ip:{self.client_ip}" if self.client_ip else None

    def counters(self) -> list[str]:
        return [key for key in (self.address, self.credential, self.account) if key]


class SignInThrottle:
    def __init__(self, store: IamStore, policy: ThrottlePolicy) -> None:
        self._store = store
        self.policy = policy
        self._locks = TtlCache(_CACHE_SECONDS, name="sign-in-locks")

    def check(self, attempt: Attempt) -> None:
        """Raise ThrottledError while any counter that applies to `attempt` is locked."""
        now = datetime.now(UTC)
        for key in attempt.counters():
            if key == attempt.account and self._familiar(attempt):
                continue
            until = self._locks.get_or_load(key, functools.partial(self._locked_until, key))
            if until is not None and until > now:
                raise ThrottledError(int((until - now).total_seconds()) + 1)

    def failed(self, attempt: Attempt) -> None:
        now = datetime.now(UTC)
        for key in attempt.counters():
            self._store.record_failure(
                key,
                now,
                self.policy.failure_window_seconds,
                self.policy.max_failures_per_address
                if key == attempt.address
                else self.policy.max_failures,
                self.policy.base_lock_seconds,
                self.policy.max_lock_seconds,
            )
        # After the writes: every node (told through the cache) reloads what they locked.
        self._locks.clear()

    def succeeded(self, attempt: Attempt) -> None:
        """Clear this credential's count at this address and remember the address.

        The address's count stands until its window ends, so one valid account cannot be used
        to keep guessing others' passwords; so does the account-wide count, so signing in from
        a familiar place does not hand an attacker elsewhere a fresh set of guesses."""
        if self._store.throttle(attempt.credential) is not None:
            self._store.clear_failures(attempt.credential)
            self._locks.clear()
        # Remembered once a day at most: a sign-in costs no write when the address is known.
        if (
            attempt.account is not None
            and attempt.client_ip
            and not self._seen_within(attempt, timedelta(days=1))
        ):
            self._store.record_seen(self._seen_key(attempt), datetime.now(UTC))
            self._locks.clear()

    def forget_account(self, username: str) -> None:
        """A deleted account's counters and familiar addresses go with it: a new account of the
        same name starts with none."""
        name = username[:_MAX_NAME]
        self._store.forget_throttle([f"user:{name}"], [f"user:{name}|", f"seen:{name}|"])
        self._locks.clear()

    @staticmethod
    def _seen_key(attempt: Attempt) -> str:
        return f"seen:{attempt.username[:_MAX_NAME]}|{attempt.client_ip}"

    def _familiar(self, attempt: Attempt) -> bool:
        return self._seen_within(attempt, timedelta(days=self.policy.familiar_days))

    def _seen_within(self, attempt: Attempt, period: timedelta) -> bool:
        if attempt.account is None or not attempt.client_ip:
            return False
        key = self._seen_key(attempt)
        seen = self._locks.get_or_load(key, functools.partial(self._seen_at, key))
        return seen is not None and seen > datetime.now(UTC) - period

    def _seen_at(self, key: str) -> datetime | None:
        row = self._store.throttle(key)
        if row is None:
            return None
        seen = row.window_started_at
        return seen if seen.tzinfo else seen.replace(tzinfo=UTC)

    def _locked_until(self, key: str) -> datetime | None:
        row = self._store.throttle(key)
        if row is None or row.locked_until is None:
            return None
        locked = row.locked_until
        return locked if locked.tzinfo else locked.replace(tzinfo=UTC)
