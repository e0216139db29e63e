"""Failed sign-ins back off: 5 failures within 15 minutes of one credential from one address, or
of one account's password from addresses it never signed in from, or 20 from one client address,
lock further attempts (429 TOOMANYREQUESTS with Retry-After) for 30 s, doubling. A successful
sign-in clears only its own credential's count at that address, never the address's. Nothing
one address does locks out a credential used from another address.

All clients are on loopback, but Linux routes the whole of 127.0.0.0/8 there: binding the
client socket to 127.0.0.2, 127.0.0.3, ... gives requests distinct client addresses, so the locks
per credential, per account and per address can be told apart. Each test has its own server, so
no lock leaks into another test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import count

import httpx
import pytest

from tests.support.api import PASSWORD, api_client, assert_problem
from tests.support.server import RegistryProcess
from tests.support.wait import wait_until

MAX_FAILURES = 5
MAX_FAILURES_PER_ADDRESS = 20
BASE_LOCK_SECONDS = 30
WRONG = "not-the-password-at-all"


@dataclass
class Throttled:
    server: RegistryProcess
    _clients: dict[str, httpx.Client]

    def client(self, address: str) -> httpx.Client:
        """A client whose requests come from `address` (on loopback)."""
        if address not in self._clients:
            self._clients[address] = httpx.Client(
                base_url=self.server.url,
                transport=httpx.HTTPTransport(local_address=address),
                timeout=30,
            )
        return self._clients[address]

    def sign_in(self, address: str, username: str, password: str) -> httpx.Response:
        """Docker's form: GET /service/token with Basic credentials."""
        return self.client(address).get(
            "/service/token", params={"service": "moorage"}, auth=(username, password)
        )

    def sign_in_oauth(self, address: str, username: str, password: str) -> httpx.Response:
        """The OAuth2 form newer clients use."""
        form = {"grant_type": "password", "username": username, "password": password}
        return self.client(address).post("/service/token", data={**form, "service": "moorage"})


@pytest.fixture
def throttled(start_registry: Callable[..., RegistryProcess]) -> Iterator[Throttled]:
    server = start_registry()
    # Users are created from 127.0.0.1 before any failure; the tests sign in from elsewhere.
    with api_client(server) as admin:
        for user in ("alice", "bob", "carol", "dave", "erin", "frank"):
            created = admin.post("/users", json={"username": user, "password": PASSWORD})
            assert created.status_code == 201, created.text
    state = Throttled(server, {})
    yield state
    for client in state._clients.values():
        client.close()


def fresh_addresses() -> Iterator[str]:
    """127.0.0.2, 127.0.0.3, ...: each used once is an address with one failure at most."""
    for n in count(2):
        yield f"127.0.0.{n}"


def assert_refused(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert "Retry-After" not in response.headers


def assert_locked(response: httpx.Response, at_most: int = BASE_LOCK_SECONDS + 1) -> int:
    """429 TOOMANYREQUESTS with a Retry-After in whole seconds; that number."""
    assert response.status_code == 429, response.text
    assert response.json()["errors"][0]["code"] == "TOOMANYREQUESTS"
    retry_after = int(response.headers["Retry-After"])
    assert 1 <= retry_after <= at_most, retry_after
    return retry_after


def test_failures_for_one_user_lock_that_user_from_every_address(throttled: Throttled) -> None:
    addresses = fresh_addresses()
    # Five failures, each from a different address: only the user's counter reaches five.
    for _ in range(MAX_FAILURES):
        assert_refused(throttled.sign_in(next(addresses), "alice", WRONG))
    elsewhere = next(addresses)
    # The right password is refused while locked, in both forms and on the API.
    assert_locked(throttled.sign_in(elsewhere, "alice", PASSWORD))
    assert_locked(throttled.sign_in_oauth(elsewhere, "alice", PASSWORD))
    assert_locked(throttled.sign_in(elsewhere, "alice", WRONG))
    with api_client(throttled.server, "alice", PASSWORD) as api:
        problem = api.get("/users/me")
        assert_problem(problem, 429)
        assert 1 <= int(problem.headers["Retry-After"]) <= BASE_LOCK_SECONDS + 1
    # No address is locked: another user signs in from the same addresses.
    for address in ("127.0.0.2", elsewhere):
        assert throttled.sign_in(address, "bob", PASSWORD).status_code == 200


def test_failures_from_one_address_lock_that_address_for_every_user(
    throttled: Throttled,
) -> None:
    attacker = "127.0.0.2"
    # Twenty failures from one address, spread over names (most of them no account at all) so
    # that no account reaches its own limit; a valid sign-in in between resets nothing.
    names = ["alice", "bob", "dave"] + [f"nobody-{i}" for i in range(MAX_FAILURES_PER_ADDRESS - 3)]
    for index, username in enumerate(names):
        assert_refused(throttled.sign_in(attacker, username, WRONG))
        if index == 10:
            assert throttled.sign_in(attacker, "erin", PASSWORD).status_code == 200
    # From that address, even a user who never failed is refused, with the right password.
    assert_locked(throttled.sign_in(attacker, "carol", PASSWORD))
    assert_locked(throttled.sign_in_oauth(attacker, "carol", PASSWORD))
    # From another address the same users sign in: no user reached five failures.
    for username in ("carol", "alice", "bob", "dave"):
        response = throttled.sign_in("127.0.0.3", username, PASSWORD)
        assert response.status_code == 200, (username, response.text)
    # The lock is the address's, not loopback's: the administrator on 127.0.0.1 still works.
    with api_client(throttled.server) as admin:
        assert admin.get("/users/erin").status_code == 200


def test_a_lock_ends_and_the_next_failure_locks_for_twice_as_long(throttled: Throttled) -> None:
    addresses = fresh_addresses()
    for _ in range(MAX_FAILURES):
        assert_refused(throttled.sign_in(next(addresses), "frank", WRONG))
    assert_locked(throttled.sign_in(next(addresses), "frank", PASSWORD))
    # Poll with a wrong password from one address: 429 while locked, then a checked (and
    # counted) failure once the lock has ended. A refusal by the lock is not counted.
    poller = next(addresses)
    answers: list[httpx.Response] = []

    def lock_ended() -> bool:
        answers.append(throttled.sign_in(poller, "frank", WRONG))
        return answers[-1].status_code != 429

    wait_until(lock_ended, BASE_LOCK_SECONDS + 60, "the first lock to end", interval=0.5)
    assert_refused(answers[-1])
    # That sixth failure locks again, for twice the base time.
    retry_after = assert_locked(
        throttled.sign_in(next(addresses), "frank", PASSWORD), at_most=2 * BASE_LOCK_SECONDS + 1
    )
    assert retry_after > BASE_LOCK_SECONDS
    # The poller's address has a single failure: another user signs in from it.
    assert throttled.sign_in(poller, "erin", PASSWORD).status_code == 200


def test_a_recent_successful_sign_in_does_not_bypass_the_lock(throttled: Throttled) -> None:
    addresses = fresh_addresses()
    assert throttled.sign_in(next(addresses), "carol", PASSWORD).status_code == 200
    for _ in range(MAX_FAILURES):
        assert_refused(throttled.sign_in(next(addresses), "carol", WRONG))
    # The OAuth2 form checks the lock; the Basic form must too.
    elsewhere = next(addresses)
    assert_locked(throttled.sign_in_oauth(elsewhere, "carol", PASSWORD))
    assert_locked(throttled.sign_in(elsewhere, "carol", PASSWORD))


# -- a lock cannot be turned against other people


def _pat(throttled: Throttled, username: str) -> str:
    with api_client(throttled.server, username, PASSWORD) as user:
        created = user.post("/users/me/tokens", json={"name": "laptop"})
        assert created.status_code == 201, created.text
        return str(created.json()["token"])


def _me(throttled: Throttled, address: str, token: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"}
    return throttled.client(address).get("/api/v1/users/me", headers=headers)


def test_garbage_bearer_tokens_lock_only_the_address_they_come_from(throttled: Throttled) -> None:
    alice, bob = _pat(throttled, "alice"), _pat(throttled, "bob")
    attacker, elsewhere = "127.0.0.2", "127.0.0.3"
    garbage = [f"mpat_{n:016x}_not-a-secret" for n in range(MAX_FAILURES + 1)]
    # The same public id as alice's token with a wrong secret, again and again.
    # `mpat_<public id>_<secret>`: the random secret may itself contain `_`.
    public_id = alice.split("_", 2)[1]
    forged = f"mpat_{public_id}_wrong-secret"
    for token in [*garbage, *[forged] * (MAX_FAILURES + 1)]:
        assert _me(throttled, attacker, token).status_code in (401, 429)
    # Every other credential works from every other address, and below the address's own
    # limit from the attacker's address too.
    for token in (alice, bob):
        assert _me(throttled, elsewhere, token).status_code == 200
    assert _me(throttled, attacker, bob).status_code == 200
    # Going on, the attacker's address reaches its own limit: only that address is locked.
    for n in range(MAX_FAILURES_PER_ADDRESS):
        _me(throttled, attacker, f"mpat_{n + 100:016x}_x")
    assert_problem(_me(throttled, attacker, bob), 429)
    assert _me(throttled, elsewhere, alice).status_code == 200


def test_a_flood_against_an_account_does_not_lock_its_owner_where_they_sign_in(
    throttled: Throttled,
) -> None:
    home, attacker, new_place = "127.0.0.4", "127.0.0.5", "127.0.0.6"
    assert throttled.sign_in(home, "dave", PASSWORD).status_code == 200
    for _ in range(MAX_FAILURES):
        assert_refused(throttled.sign_in(attacker, "dave", WRONG))
    assert_locked(throttled.sign_in(attacker, "dave", PASSWORD))
    # Guessing spread over addresses still locks the account where it never signed in...
    assert_locked(throttled.sign_in(new_place, "dave", PASSWORD))
    # ... but not at the address its owner uses.
    assert throttled.sign_in(home, "dave", PASSWORD).status_code == 200
    assert throttled.sign_in_oauth(home, "dave", PASSWORD).status_code == 200


def test_guessing_the_current_password_backs_off_like_a_sign_in(throttled: Throttled) -> None:
    token = _pat(throttled, "erin")
    client = throttled.client("127.0.0.7")
    headers = {"Authorization": f"Bearer {token}"}

    def change(current: str) -> httpx.Response:
        body = {"currentPassword": current, "newPassword": "a-new-long-password"}
        return client.put("/api/v1/users/me/password", json=body, headers=headers)

    for _ in range(MAX_FAILURES):
        assert_problem(change(WRONG), 403)
    locked = change(PASSWORD)
    assert_problem(locked, 429)
    assert 1 <= int(locked.headers["Retry-After"]) <= BASE_LOCK_SECONDS + 1
    # The password did not change: it still signs in where erin is known (she created her
    # token from 127.0.0.1 with it).
    assert throttled.sign_in("127.0.0.1", "erin", PASSWORD).status_code == 200


def test_a_new_account_of_a_deleted_name_inherits_no_lock_and_no_familiar_address(
    throttled: Throttled,
) -> None:
    home, attacker = "127.0.0.8", "127.0.0.9"
    assert throttled.sign_in(home, "frank", PASSWORD).status_code == 200
    for _ in range(MAX_FAILURES):
        assert_refused(throttled.sign_in(attacker, "frank", WRONG))
    with api_client(throttled.server) as admin:
        assert admin.delete("/users/frank").status_code == 204
        created = admin.post("/users", json={"username": "frank", "password": PASSWORD})
        assert created.status_code == 201, created.text
    # The new frank is not locked anywhere, not even where the old one was attacked...
    assert throttled.sign_in(attacker, "frank", PASSWORD).status_code == 200
    # ... and the old frank's address is not familiar to the new one: a flood from elsewhere
    # locks the new account there too.
    for _ in range(MAX_FAILURES):
        assert_refused(throttled.sign_in("127.0.0.10", "frank", WRONG))
    assert_locked(throttled.sign_in(home, "frank", PASSWORD))
