"""What the deletion tests share: clients, pushing images, pulling them digest-verified, the
audit log, fsck and the command line on a server's data directory."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from typing import Any

import httpx

from tests.support.api import eventually
from tests.support.auth import RegistryAuth
from tests.support.oci import (
    OCI_CONFIG,
    OCI_LAYER,
    OCI_MANIFEST,
    Pushed,
    assert_oci_error,
    encode,
    image_manifest,
    push_blob_object,
    push_manifest,
    random_bytes,
)
from tests.support.server import RegistryProcess, command_environment

MANIFEST_ACCEPT = {"Accept": f"{OCI_MANIFEST}, application/vnd.oci.image.index.v1+json"}


def registry_client(server: RegistryProcess, username: str, password: str) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=60, auth=RegistryAuth(username, password))


def push_with_layer(client: httpx.Client, repository: str, tag: str, layer: bytes) -> Pushed:
    """An image of a fresh config and `layer` (so tests choose which layers are shared)."""
    config = push_blob_object(client, repository, OCI_CONFIG, encode({"n": random_bytes(8).hex()}))
    blob = push_blob_object(client, repository, OCI_LAYER, layer)
    document = encode(image_manifest(config, [blob]))
    return push_manifest(client, repository, document, OCI_MANIFEST, tag)


def layers_of(client: httpx.Client, repository: str, reference: str) -> list[str]:
    response = client.get(f"/v2/{repository}/manifests/{reference}", headers=MANIFEST_ACCEPT)
    assert response.status_code == 200, response.text
    document = json.loads(response.content)
    return [document["config"]["digest"], *(layer["digest"] for layer in document["layers"])]


def pull_verified(client: httpx.Client, repository: str, reference: str) -> None:
    """The manifest and every blob it names pull, each matching its digest."""
    response = client.get(f"/v2/{repository}/manifests/{reference}", headers=MANIFEST_ACCEPT)
    assert response.status_code == 200, (repository, reference, response.text)
    digest = response.headers["Docker-Content-Digest"]
    assert "sha256:" + hashlib.sha256(response.content).hexdigest() == digest
    for blob in layers_of(client, repository, digest):
        pulled = client.get(f"/v2/{repository}/blobs/{blob}")
        assert pulled.status_code == 200, (repository, blob, pulled.text)
        assert "sha256:" + hashlib.sha256(pulled.content).hexdigest() == blob


def assert_gone(client: httpx.Client, repository: str, pushed: Pushed, blobs: list[str]) -> None:
    """Catalog, tags, the manifest (by tag and digest) and its blobs answer as for a name that
    never existed (OCI error JSON)."""
    catalog = client.get("/v2/_catalog", params={"n": 10000})
    assert catalog.status_code == 200, catalog.text
    assert repository not in catalog.json()["repositories"]
    assert_oci_error(client.get(f"/v2/{repository}/tags/list"), 404, "NAME_UNKNOWN")
    for reference in ("v1", pushed.digest):
        response = client.get(f"/v2/{repository}/manifests/{reference}", headers=MANIFEST_ACCEPT)
        assert_oci_error(response, 404, "MANIFEST_UNKNOWN")
        head = client.head(f"/v2/{repository}/manifests/{reference}", headers=MANIFEST_ACCEPT)
        assert head.status_code == 404
    for blob in blobs:
        assert_oci_error(client.get(f"/v2/{repository}/blobs/{blob}"), 404, "BLOB_UNKNOWN")


def audit_entries(
    admin: httpx.Client, project: str, action: str, count: int = 1
) -> list[dict[str, Any]]:
    """The project's audit entries of `action`, once `count` were written (they are batched)."""

    def found() -> list[dict[str, Any]]:
        response = admin.get(
            "/audit-logs", params={"project": project, "action": action, "limit": 100}
        )
        assert response.status_code == 200, response.text
        entries: list[dict[str, Any]] = response.json()
        return entries

    eventually(lambda: len(found()) >= count, what=f"{count} {action} entries in {project}")
    return found()


def moorage(
    server: RegistryProcess, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """A `moorage` command on the server's data directory (and its database and bucket)."""
    return subprocess.run(
        [sys.executable, "-m", "moorage", *args, "--data-dir", str(server.data_dir)],
        input=stdin,
        capture_output=True,
        text=True,
        env=command_environment(server.data_dir),
        timeout=300,
        check=False,
    )


def assert_fsck_clean(server: RegistryProcess) -> None:
    result = moorage(server, "fsck")
    assert result.returncode == 0, result.stdout + result.stderr
