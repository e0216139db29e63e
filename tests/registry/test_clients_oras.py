"""The `oras` Python client pushes and pulls file artifacts through the real server.

The registry requires authentication: the client signs in as the administrator (its Basic
credentials then buy a token for each challenge), and the login is written to a private
docker config, not the user's.

oras-py keeps one token per client and, when a request is refused with 401, retries with that
same token instead of asking for the challenge's scope (oras-project/oras-py#67). A push starts
with a HEAD of each blob, which earns a pull-only token, so the push would then be refused; as
with Distribution, asking for more scope on 401 is the client's job. The pushing client is
therefore handed a pull+push token up front, obtained with the same credentials; pulling goes
through the challenge flow unaided.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import httpx
import pytest

from tests.support.auth import ADMIN_PASSWORD, ADMIN_USER
from tests.support.images import fetch_blob, fetch_manifest, push_token, sha256_digest
from tests.support.server import RegistryProcess
from tests.support.tools import require_module

oras_client = require_module("oras.client")

pytestmark = pytest.mark.clients


def _client(registry: RegistryProcess, config: Path) -> oras_client.OrasClient:
    client = oras_client.OrasClient(hostname=registry.host, insecure=True)
    client.login(
        ADMIN_USER,
        ADMIN_PASSWORD,
        hostname=registry.host,
        config_path=str(config),
    )
    return client


@pytest.mark.parametrize(
    ("size", "chunked"),
    [(1234, False), (3 * 1024 * 1024 + 17, True)],
    ids=["small-monolithic", "large-chunked"],
)
def test_push_and_pull_file_artifact(
    registry: RegistryProcess,
    client: httpx.Client,
    repo: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    size: int,
    chunked: bool,
) -> None:
    # oras refuses paths outside the working directory, so push from where the file lives.
    monkeypatch.chdir(tmp_path)
    payload = os.urandom(size)
    Path("artifact.bin").write_bytes(payload)
    target = f"{registry.host}/{repo}:v1"

    config = tmp_path / "docker-config.json"
    pusher = _client(registry, config)
    pusher.auth.set_token_auth(push_token(registry.url, repo))
    response = pusher.push(
        target=target,
        files=["artifact.bin"],
        do_chunked=chunked,
        chunk_size=1024 * 1024,
        quiet=True,
    )
    assert response.status_code == 201

    manifest = fetch_manifest(client, repo, "v1")
    assert sha256_digest(manifest.content) == manifest.headers["Docker-Content-Digest"]
    (layer,) = manifest.json()["layers"]
    assert layer["annotations"]["org.opencontainers.image.title"] == "artifact.bin"
    assert layer["digest"] == "sha256:" + hashlib.sha256(payload).hexdigest()
    assert fetch_blob(client, repo, layer["digest"]) == payload

    pulled = _client(registry, config).pull(target=target, outdir=str(tmp_path / "pulled"))
    assert [Path(path).name for path in pulled] == ["artifact.bin"]
    assert Path(pulled[0]).read_bytes() == payload
