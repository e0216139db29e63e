"""Clients every lifecycle test module uses on its own `server` fixture (a module-scoped
registry each module starts with the settings it needs)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support.api import api_client
from tests.support.auth import RegistryAuth
from tests.support.server import RegistryProcess


@pytest.fixture
def admin(server: RegistryProcess) -> Iterator[httpx.Client]:
    """The management API as the administrator."""
    with api_client(server) as http:
        yield http


@pytest.fixture
def v2(server: RegistryProcess) -> Iterator[httpx.Client]:
    """The registry API as the administrator (token auth, as docker does)."""
    with httpx.Client(base_url=server.url, timeout=60, auth=RegistryAuth()) as http:
        yield http
