"""Refresh tokens (docker's `identitytoken`) never outlive the credential that obtained them.

They are bound to that credential and its ceiling, stored only as hashes, rotated on every use
(presenting a used one again revokes the whole family), bounded in lifetime, and dead as soon as
the credential is revoked, the account disabled or its password changed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from moorage.domain.events import DomainEvent
from moorage.metadata.access.iam_store import IamStore
from moorage.metadata.access.refresh_token_store import RefreshGrant
from moorage.metadata.database import make_engine, migrate
from moorage.services.access.identity import AuthenticationError, IdentityService, Subject
from moorage.services.access.refresh_tokens import RefreshTokenService
from moorage.services.events import EventBus
from tests.support.api import PASSWORD, api_client, create_user, eventually, unique
from tests.support.backends import database_text, fresh_database_url, server_database_url
from tests.support.oci import bearer, token_claims
from tests.support.server import RegistryProcess

NEW_PASSWORD = "another-long-enough-password"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    with RegistryProcess(tmp_path_factory.mktemp("refresh") / "data").start() as process:
        yield process


@pytest.fixture
def admin(server: RegistryProcess) -> Iterator[httpx.Client]:
    with api_client(server) as client:
        yield client


def oauth(server: RegistryProcess, **form: str) -> httpx.Response:
    return httpx.post(f"{server.url}/service/token", data={"service": "moorage", **form})


def sign_in(server: RegistryProcess, username: str, secret: str, scope: str = "") -> str:
    """A refresh token from the password grant with offline access, as `docker login` asks."""
    form = {"grant_type": "password", "username": username, "password": secret}
    response = oauth(server, **form, access_type="offline", client_id="docker", scope=scope)
    assert response.status_code == 200, response.text
    return str(response.json()["refresh_token"])


def redeem(server: RegistryProcess, token: str, scope: str = "") -> httpx.Response:
    return oauth(server, grant_type="refresh_token", refresh_token=token, scope=scope)


def new_pat(server: RegistryProcess, username: str, scopes: list[dict[str, object]] | None) -> str:
    with api_client(server, username, PASSWORD) as user:
        created = user.post("/users/me/tokens", json={"name": unique("t"), "scopes": scopes})
        assert created.status_code == 201, created.text
        return str(created.json()["token"])


def test_every_use_rotates_and_a_reused_token_revokes_its_family(
    server: RegistryProcess, admin: httpx.Client
) -> None:
    username = create_user(admin)
    first = sign_in(server, username, PASSWORD)
    used = redeem(server, first)
    assert used.status_code == 200, used.text
    second = used.json()["refresh_token"]
    assert second != first
    third_answer = redeem(server, second)
    assert third_answer.status_code == 200
    third = third_answer.json()["refresh_token"]

    # Someone presents the first token again: it was used, so the family is revoked, and the
    # legitimate holder's newest token stops working too.
    replay = redeem(server, first)
    assert replay.status_code == 401, replay.text
    assert redeem(server, third).status_code == 401

    def reuse_audited() -> bool:
        entries = admin.get("/audit-logs", params={"action": "token:refresh-reuse"}).json()
        return any(entry["actor"] == username and entry["result"] == "denied" for entry in entries)

    eventually(reuse_audited, what="the reuse in the audit log")
    # The account itself is fine: signing in again starts a new family.
    assert redeem(server, sign_in(server, username, PASSWORD)).status_code == 200


def test_two_redemptions_of_one_token_at_once_leave_no_live_family(
    server: RegistryProcess, admin: httpx.Client
) -> None:
    username = create_user(admin)
    token = sign_in(server, username, PASSWORD)
    answers: list[httpx.Response] = []
    start = threading.Barrier(4)

    def race() -> None:
        start.wait()
        answers.append(redeem(server, token))

    threads = [threading.Thread(target=race) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [answer for answer in answers if answer.status_code == 200]
    assert len(winners) == 1, [answer.status_code for answer in answers]
    # The losers were reuse: the winner's successor belongs to a revoked family.
    assert redeem(server, winners[0].json()["refresh_token"]).status_code == 401


def test_a_refresh_token_of_a_revoked_personal_access_token_dies_at_once(
    server: RegistryProcess, admin: httpx.Client
) -> None:
    username = create_user(admin)
    pat = new_pat(server, username, None)
    refresh = sign_in(server, username, pat, scope=f"repository:{username}/app:pull")
    answer = redeem(server, refresh, scope="registry:catalog:*")
    assert answer.status_code == 200
    access_token = answer.json()["access_token"]
    assert httpx.get(f"{server.url}/v2/", headers=bearer(access_token)).status_code == 200

    with api_client(server, username, PASSWORD) as user:
        (listed,) = user.get("/users/me/tokens").json()
        assert user.delete(f"/users/me/tokens/{listed['name']}").status_code == 204
    # The refresh token is checked against the database on every use: no grace period.
    assert redeem(server, answer.json()["refresh_token"]).status_code == 401
    # Registry tokens it produced stop working within the liveness cache time.
    eventually(
        lambda: httpx.get(f"{server.url}/v2/", headers=bearer(access_token)).status_code == 401,
        what="the registry token of a revoked credential to be refused",
    )


@pytest.mark.parametrize("credential", ["password", "pat"])
def test_a_password_change_ends_every_refresh_token_of_the_account(
    server: RegistryProcess, admin: httpx.Client, credential: str
) -> None:
    username = create_user(admin)
    secret = PASSWORD if credential == "password" else new_pat(server, username, None)
    refresh = sign_in(server, username, secret)
    with api_client(server, username, PASSWORD) as user:
        changed = user.put(
            "/users/me/password",
            json={"currentPassword": PASSWORD, "newPassword": NEW_PASSWORD},
        )
        assert changed.status_code in (200, 204), changed.text
    assert redeem(server, refresh).status_code == 401


def test_a_disabled_account_loses_its_refresh_tokens_for_good(
    server: RegistryProcess, admin: httpx.Client
) -> None:
    username = create_user(admin)
    refresh = sign_in(server, username, PASSWORD)
    assert admin.patch(f"/users/{username}", json={"disabled": True}).status_code == 200
    assert redeem(server, refresh).status_code == 401
    assert admin.patch(f"/users/{username}", json={"disabled": False}).status_code == 200
    # The failed redemption revoked the family: enabling the account again does not revive it.
    assert redeem(server, refresh).status_code == 401


def test_a_scoped_credential_refreshes_into_its_scope_only(
    server: RegistryProcess, admin: httpx.Client
) -> None:
    username = create_user(admin)
    project = unique("p")
    assert admin.post("/projects", json={"name": project}).status_code == 201
    member = f"/projects/{project}/members/user/{username}"
    assert admin.put(member, json={"role": "project-admin"}).status_code == 200
    pat = new_pat(
        server, username, [{"project": project, "repositories": "app", "actions": ["pull"]}]
    )
    refresh = sign_in(server, username, pat)
    answer = redeem(
        server,
        refresh,
        scope=f"repository:{project}/app:pull,push,delete repository:{project}/other:pull",
    )
    assert answer.status_code == 200, answer.text
    assert token_claims(answer.json()["access_token"])["access"] == [
        {"type": "repository", "name": f"{project}/app", "actions": ["pull"]}
    ]
    # The successor keeps the same ceiling.
    again = redeem(server, answer.json()["refresh_token"], scope=f"repository:{project}/x:push")
    assert again.status_code == 200
    assert token_claims(again.json()["access_token"])["access"] == []


def test_robots_get_no_refresh_tokens(server: RegistryProcess, admin: httpx.Client) -> None:
    project = unique("p")
    assert admin.post("/projects", json={"name": project}).status_code == 201
    robot = admin.post(
        f"/projects/{project}/robots",
        json={"name": "ci", "permissions": [{"project": project, "actions": ["pull"]}]},
    ).json()
    form = {"grant_type": "password", "username": robot["name"], "password": robot["secret"]}
    answer = oauth(server, **form, access_type="offline")
    assert answer.status_code == 200, answer.text
    assert "refresh_token" not in answer.json()


def test_refresh_tokens_are_stored_only_as_hashes(
    server: RegistryProcess, admin: httpx.Client
) -> None:
    username = create_user(admin)
    token = sign_in(server, username, PASSWORD)
    dump = database_text(server_database_url(server.data_dir))
    assert "refresh_tokens: (" in dump
    assert token not in dump
    assert token.removeprefix("mrt_") not in dump


def test_without_rotation_a_token_is_reusable_but_still_bound_to_its_credential(
    start_registry: Callable[..., RegistryProcess],
) -> None:
    server = start_registry(env={"MOORAGE_REFRESH_TOKEN_ROTATION": "false"})
    with api_client(server) as admin:
        username = create_user(admin)
    pat = new_pat(server, username, None)
    refresh = sign_in(server, username, pat)
    for _ in range(3):
        answer = redeem(server, refresh)
        assert answer.status_code == 200, answer.text
        assert "refresh_token" not in answer.json()
    with api_client(server, username, PASSWORD) as user:
        (listed,) = user.get("/users/me/tokens").json()
        assert user.delete(f"/users/me/tokens/{listed['name']}").status_code == 204
    assert redeem(server, refresh).status_code == 401


# -- the service over a real database: lifetime bounds


@pytest.fixture
def service(metadata_url: str) -> tuple[RefreshTokenService, IamStore, list[DomainEvent]]:
    engine = make_engine(metadata_url, pool_size=2)
    store = IamStore(engine)
    events: list[DomainEvent] = []
    bus = EventBus()
    bus.subscribe(events.append)
    identity = IdentityService(store, bus)
    return RefreshTokenService(store, identity, bus, lifetime_days=30), store, events


def _signed_in(store: IamStore) -> Subject:
    from moorage.services.access.identity import hash_password, password_proof

    user = store.create_user(unique("u"), None, hash_password(PASSWORD), False)
    return Subject("user", user.id, user.username, proof=password_proof(user))


def test_successors_keep_the_familys_expiry(
    service: tuple[RefreshTokenService, IamStore, list[DomainEvent]],
) -> None:
    refresh, store, _ = service
    subject = _signed_in(store)
    token = refresh.issue(subject)
    assert token is not None
    before = datetime.now(UTC)
    successor = refresh.redeem(token, "127.0.0.1").successor
    assert successor is not None
    expiries = [grant.expires_at for grant in store.refresh_tokens.grants(subject.id or 0)]
    assert len(expiries) == 2
    assert len(set(expiries)) == 1
    # The family ends 30 days after the sign-in, however often it rotates.
    (expiry,) = set(expiries)
    assert before + timedelta(days=29) < expiry <= before + timedelta(days=30)


def test_an_expired_token_is_refused(
    service: tuple[RefreshTokenService, IamStore, list[DomainEvent]],
) -> None:
    refresh, store, _ = service
    subject = _signed_in(store)
    user = store.user_by_id(subject.id or 0)
    assert user is not None
    grant = RefreshGrant(
        user_id=user.id,
        family="f" * 32,
        credential=None,
        proof=subject.proof or "",
        account_proof=subject.proof or "",
        scopes=None,
        expires_at=datetime.now(UTC) - timedelta(seconds=1),
    )
    store.refresh_tokens.add("0" * 64, grant)
    assert store.refresh_tokens.peek("0" * 64).grant is None
    assert not store.refresh_tokens.rotate("0" * 64, "1" * 64)
    with pytest.raises(AuthenticationError):
        refresh.redeem("mrt_" + "x" * 40, None)
    with pytest.raises(AuthenticationError):
        refresh.redeem("", None)
    with pytest.raises(AuthenticationError):
        refresh.redeem("x" * 10_000, None)


def test_only_credentials_that_can_be_checked_again_get_a_refresh_token(
    service: tuple[RefreshTokenService, IamStore, list[DomainEvent]],
) -> None:
    refresh, store, _ = service
    subject = _signed_in(store)
    # A certificate sign-in has no proof to check later; robots and anonymous have no family.
    assert (
        refresh.issue(Subject("user", subject.id, subject.name, credential="certificate")) is None
    )
    assert refresh.issue(Subject("robot", 1, "robot$x", proof="robot:abc")) is None
    assert refresh.issue(Subject("anonymous", None, "anonymous")) is None


def test_the_upgrade_drops_refresh_tokens_bound_to_no_credential_and_keeps_the_rest(
    metadata_backend: str, tmp_path: Path
) -> None:
    """Refresh tokens written before they recorded their credential cannot be honoured safely;
    the migration removes them and nothing else."""
    from sqlalchemy import text

    engine = make_engine(fresh_database_url(metadata_backend, tmp_path), pool_size=2)
    migrate(engine, "0012")
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO users (id, username, password_hash, is_admin, disabled, created_at,"
                " password_changed_at) VALUES (7, 'old', 'hash', false, false, :now, :now)"
            ),
            {"now": datetime.now(UTC)},
        )
        connection.execute(
            text(
                "INSERT INTO refresh_tokens (token_hash, user_id, expires_at, created_at)"
                " VALUES ('abc', 7, :later, :now)"
            ),
            {"now": datetime.now(UTC), "later": datetime.now(UTC) + timedelta(days=5)},
        )
    migrate(engine)
    store = IamStore(engine)
    user = store.user_by_id(7)
    assert user is not None
    assert user.username == "old"
    assert store.refresh_tokens.grants(7) == []
    # The new columns work on the upgraded table.
    subject = Subject("user", 7, "old", proof="password:x")
    grant = RefreshGrant(7, "f" * 32, None, "password:x", "password:x", None, datetime.now(UTC))
    store.refresh_tokens.add("1" * 64, grant)
    assert [g.user_id for g in store.refresh_tokens.grants(subject.id or 0)] == [7]
