from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

import httpx
import pytest

from tests.support.api import api_client
from tests.support.auth import RegistryAuth
from tests.support.cluster import cluster_requested, deployment
from tests.support.processes import kill_all
from tests.support.server import RegistryProcess
from tests.support.tools import require_tool

_names = itertools.count()

# `metadata_url`: in-process store tests on SQLite and on PostgreSQL.
pytest_plugins = ["tests.support.backends"]


def pytest_runtest_setup(item: pytest.Item) -> None:
    """`@pytest.mark.tools("skopeo", ...)`: skip without the tools, fail under scripts/test."""
    for marker in item.iter_markers("tools"):
        require_tool(*marker.args)


def pytest_sessionfinish(session: pytest.Session) -> None:
    # A server a test forgot to stop does not outlive the run.
    kill_all()


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    """One server shared by the tests that only need a registry; use unique repository names.
    With MOORAGE_TEST_CLUSTER=1 it is a two-node deployment behind haproxy instead (on
    PostgreSQL, S3 and Redis), and the tests run against haproxy's address."""
    if cluster_requested():
        with deployment(tmp_path_factory.mktemp("cluster")) as cluster:
            yield cast(RegistryProcess, cluster)
        return
    with RegistryProcess(tmp_path_factory.mktemp("shared") / "data").start() as server:
        yield server


@pytest.fixture
def start_registry(tmp_path: Path) -> Iterator[Callable[..., RegistryProcess]]:
    """Start a private server (own data directory) for tests that restart, kill or configure it."""
    started: list[RegistryProcess] = []

    def start(**kwargs: object) -> RegistryProcess:
        server = RegistryProcess(tmp_path / f"data{len(started)}", **kwargs)  # type: ignore[arg-type]
        started.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in started:
            server.kill()


@pytest.fixture
def client(registry: RegistryProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=registry.url, timeout=60, auth=RegistryAuth()) as http:
        yield http


@pytest.fixture
def repo(request: pytest.FixtureRequest) -> str:
    """A repository name no other test uses."""
    base = request.node.name.lower().replace("[", "-").replace("]", "")
    cleaned = "".join(c if c.isalnum() else "-" for c in base).strip("-")[:60].strip("-")
    return f"t/{cleaned or 'repo'}-{next(_names)}"


@pytest.fixture(scope="session")
def api_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    """A server for the management API tests; their refused sign-ins back off only here."""
    with RegistryProcess(tmp_path_factory.mktemp("api") / "data").start() as server:
        yield server


@pytest.fixture
def admin_api(api_registry: RegistryProcess) -> Iterator[httpx.Client]:
    """The management API (/api/v1) as the administrator, with Basic authentication."""
    with api_client(api_registry) as http:
        yield http
