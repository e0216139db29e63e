"""Two nodes of one deployment (one database: SQLite or PostgreSQL, one blob store, one Redis;
lock files of their own): a change made on one node holds on the other within 2 s, and sign-in
lockouts are shared.

The 2 s are the promise (caches expire by then even if an invalidation is lost): every request
that starts 2 s after the change must see it; with Redis the other node forgets at once.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.support.api import PASSWORD, api_client, create_project, create_user, set_role
from tests.support.auth import RegistryAuth
from tests.support.nodes import BACKENDS, Nodes, metadata_url
from tests.support.oci import OCI_INDEX, OCI_MANIFEST, push_image
from tests.support.server import RegistryProcess
from tests.support.services import PostgresServer, RedisServer

pytestmark = pytest.mark.tools("redis-server")

ACCEPT = {"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"}
PROMISE_SECONDS = 2.0
MAX_FAILURES = 5
WRONG = "not-the-password-at-all"


@pytest.fixture(scope="module", params=BACKENDS)
def nodes(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[RegistryProcess]]:
    with contextlib.ExitStack() as stack:
        postgres = None
        if request.param == "postgresql":
            postgres = stack.enter_context(PostgresServer())
        redis = stack.enter_context(RedisServer())
        root = tmp_path_factory.mktemp("nodes")
        yield stack.enter_context(Nodes(root, redis.url, metadata_url(request.param, postgres)))


def within_promise(check: Callable[[], bool], what: str) -> None:
    """`check` holds for every request that starts PROMISE_SECONDS after now (the bound is on
    when the change is seen, not on how long a request takes on a busy machine)."""
    deadline = time.monotonic() + PROMISE_SECONDS
    while True:
        started = time.monotonic()
        if check():
            return
        assert started <= deadline, f"{what}: still not so {PROMISE_SECONDS:g} s after the change"
        time.sleep(0.05)


def pull_status(node: RegistryProcess, repository: str, username: str | None) -> int:
    """A fresh client each time (no token kept from before the change)."""
    auth = RegistryAuth(username, PASSWORD) if username is not None else RegistryAuth(None)
    with httpx.Client(base_url=node.url, timeout=30, auth=auth) as client:
        return client.get(f"/v2/{repository}/manifests/v1", headers=ACCEPT).status_code


def image(node: RegistryProcess, public: bool = False) -> str:
    with api_client(node) as admin:
        project = create_project(admin, "shared", public=public)
    repository = f"{project}/app"
    with httpx.Client(base_url=node.url, timeout=60, auth=RegistryAuth()) as client:
        push_image(client, repository, "v1")
    return repository


def refused_within_promise(node: RegistryProcess, repository: str, username: str | None) -> None:
    within_promise(
        lambda: pull_status(node, repository, username) in (401, 403, 404),
        f"{node.url} to refuse {username or 'anonymous'} on {repository}",
    )


def test_a_membership_removed_on_one_node_is_refused_on_the_other(
    nodes: list[RegistryProcess],
) -> None:
    a, b = nodes
    repository = image(a)
    with api_client(a) as admin:
        user = create_user(admin)
        set_role(admin, repository.split("/")[0], user, "developer")
    # Both nodes have decided (and cached) that the user may pull.
    assert pull_status(b, repository, user) == 200
    assert pull_status(a, repository, user) == 200
    with api_client(a) as admin:
        removed = admin.delete(f"/projects/{repository.split('/')[0]}/members/user/{user}")
        assert removed.status_code in (200, 204), removed.text
    refused_within_promise(b, repository, user)


def test_a_user_deleted_on_one_node_is_refused_on_the_other(
    nodes: list[RegistryProcess],
) -> None:
    a, b = nodes
    repository = image(a)
    with api_client(a) as admin:
        user = create_user(admin)
        set_role(admin, repository.split("/")[0], user, "developer")
    assert pull_status(b, repository, user) == 200
    with api_client(b) as admin:
        deleted = admin.delete(f"/users/{user}")
        assert deleted.status_code in (200, 204), deleted.text
    refused_within_promise(a, repository, user)


def test_a_project_made_private_on_one_node_is_refused_to_anonymous_on_the_other(
    nodes: list[RegistryProcess],
) -> None:
    a, b = nodes
    repository = image(a, public=True)
    assert pull_status(b, repository, None) == 200
    with api_client(a) as admin:
        changed = admin.patch(f"/projects/{repository.split('/')[0]}", json={"public": False})
        assert changed.status_code == 200, changed.text
    refused_within_promise(b, repository, None)


def sign_in(node: RegistryProcess, address: str, username: str, password: str) -> int:
    with httpx.Client(
        base_url=node.url, transport=httpx.HTTPTransport(local_address=address), timeout=30
    ) as client:
        response = client.get(
            "/service/token", params={"service": "moorage"}, auth=(username, password)
        )
        return response.status_code


def locked_within_promise(node: RegistryProcess, address: str, username: str) -> None:
    """Polled with a wrong password: a right one that slipped through would clear the count
    (or make the address familiar) and hide the lock this test looks for."""
    within_promise(
        lambda: sign_in(node, address, username, WRONG) == 429,
        f"{node.url} to refuse {username} from {address}",
    )
    assert sign_in(node, address, username, PASSWORD) == 429


def test_a_lockout_earned_on_one_node_holds_on_the_other(nodes: list[RegistryProcess]) -> None:
    a, b = nodes
    with api_client(a) as admin:
        user = create_user(admin)
    # B has checked (and cached) that nothing is locked for this credential at this address.
    assert sign_in(b, "127.0.0.2", user, PASSWORD) == 200
    for _ in range(MAX_FAILURES):
        assert sign_in(a, "127.0.0.2", user, WRONG) == 401
    locked_within_promise(b, "127.0.0.2", user)


def test_failures_spread_over_both_nodes_at_once_all_count(nodes: list[RegistryProcess]) -> None:
    """Concurrent failures for one account from unfamiliar addresses, half on each node: none
    is lost, so the account locks as if they had come one by one."""
    with api_client(nodes[0]) as admin:
        user = create_user(admin)
    for node in nodes:  # both nodes cache "not locked" for the account
        assert sign_in(node, "127.0.0.3", user, PASSWORD) == 200

    def fail(index: int) -> int:
        # Each from its own address: only the account-wide counter sees all of them.
        return sign_in(nodes[index % 2], f"127.0.1.{index + 1}", user, WRONG)

    with ThreadPoolExecutor(MAX_FAILURES) as pool:
        assert list(pool.map(fail, range(MAX_FAILURES))) == [401] * MAX_FAILURES
    # Polled with the right password from a new address each time: a wrong one would add a
    # failure and hide one that was lost.
    addresses = (f"127.0.2.{n}" for n in itertools.count(1))
    for node in nodes:
        within_promise(
            lambda node=node: sign_in(node, next(addresses), user, PASSWORD) == 429,
            f"{node.url} to refuse the locked account from unfamiliar addresses",
        )
