"""Running garbage collection against a server and looking at what its storage holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from moorage.config import Settings
from moorage.domain.digest import Digest
from moorage.storage.base import StorageDriver
from moorage.storage.factory import make_storage
from tests.support.server import storage_environment_for, stored_keys
from tests.support.wait import wait_until

FINISHED = ("finished", "stopped", "failed", "interrupted")


def run_gc(admin: httpx.Client, timeout: float = 120.0, **options: Any) -> dict[str, Any]:
    """Start a run through the API and wait for it to end; the finished run."""
    started = admin.post("/system/gc", json=options)
    assert started.status_code == 202, started.text
    run_id = started.json()["id"]
    finished: dict[str, Any] = {}

    def done() -> bool:
        response = admin.get(f"/system/gc/runs/{run_id}")
        assert response.status_code == 200, response.text
        finished.update(response.json())
        return finished["status"] in FINISHED

    wait_until(done, timeout, lambda: f"garbage collection {run_id} to finish: {finished}")
    return finished


def stored_blobs(data_dir: Path) -> set[str]:
    """The digests of every blob in the server's storage (files, or keys in its bucket)."""
    found = set()
    for key in stored_keys(data_dir, "blobs"):
        parts = key.split("/")
        found.add(f"{parts[0]}:{parts[-1]}")
    return found


def storage_of(data_dir: Path) -> StorageDriver:
    """The server's storage driver, opened in this process (to plant what a crash leaves)."""
    fields: dict[str, Any] = {"data_dir": data_dir}
    for key, value in storage_environment_for(data_dir).items():
        fields[key.removeprefix("MOORAGE_").lower()] = value
    return make_storage(Settings(**fields))


def plant_blob(data_dir: Path, data: bytes) -> str:
    """Commit bytes to storage as a blob without telling the metadata (an orphan)."""
    import hashlib

    digest = Digest("sha256", hashlib.sha256(data).hexdigest())
    storage = storage_of(data_dir)
    storage.create_upload("planted-orphan")
    writer = storage.open_upload("planted-orphan")
    try:
        writer.write(data)
        writer.commit(digest)
    finally:
        writer.close()
    return str(digest)
