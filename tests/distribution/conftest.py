"""Fixtures the distribution tests share: a Distribution upstream per module, and clients of the
module's own Moorage (each module defines `server`, as its scenarios need)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support.api import api_client
from tests.support.auth import RegistryAuth
from tests.support.distribution import Distribution
from tests.support.server import RegistryProcess


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Distribution]:
    with Distribution(tmp_path_factory.mktemp("upstream")).start() as registry:
        yield registry


@pytest.fixture
def admin(server: RegistryProcess) -> Iterator[httpx.Client]:
    with api_client(server) as http:
        yield http


@pytest.fixture
def puller(server: RegistryProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=120, auth=RegistryAuth()) as http:
        yield http
