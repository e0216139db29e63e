"""`moorage migrate-data`: an embedded install, populated through the real server, moved to
PostgreSQL (and the storage the settings name), then served from there: every manifest and
blob pulls digest-verified, credentials still sign in, the audit chain verifies, fsck is clean.
Refusals (a target that is not empty, a source that is not a registry) change nothing, and a
second run with --resume finds everything present."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.api import PASSWORD, api_client, create_project, create_user, set_role
from tests.support.auth import ADMIN_PASSWORD, RegistryAuth
from tests.support.oci import (
    OCI_INDEX,
    OCI_MANIFEST,
    Pushed,
    digest_of,
    encode,
    image_manifest,
    platform,
    push_blob_chunked,
    push_blob_object,
    push_image,
    push_manifest,
    push_multi_platform,
    random_bytes,
)
from tests.support.osv import osv_record, run_vulndb, write_bundle
from tests.support.server import RegistryProcess
from tests.support.services import PostgresServer, S3Server
from tests.support.wait import wait_until


@dataclass
class Populated:
    """What the embedded install holds, to be found again on the target."""

    manifests: dict[str, list[str]] = field(default_factory=dict)  # repository → digests
    tags: dict[str, dict[str, str]] = field(default_factory=dict)  # repository → tag → digest
    blobs: dict[str, list[str]] = field(default_factory=dict)  # repository → digests
    referrers: dict[str, str] = field(default_factory=dict)  # subject digest → repository
    user: str = ""
    robot: tuple[str, str] = ("", "")
    project: str = ""
    report: dict[str, Any] = field(default_factory=dict)


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with S3Server() as server:
        yield server


def target_env(database_url: str, s3: S3Server | None = None, bucket: str = "") -> dict[str, str]:
    """The target's settings: PostgreSQL, and S3 once the S3 driver is part of this build."""
    environment = {"MOORAGE_DATABASE_URL": database_url}
    if s3 is not None and s3_available():
        environment.update(
            {
                "MOORAGE_STORAGE": "s3",
                "MOORAGE_S3_BUCKET": s3.create_bucket(bucket),
                "MOORAGE_S3_ENDPOINT": s3.endpoint,
                "MOORAGE_S3_REGION": s3.region,
                "MOORAGE_S3_ACCESS_KEY": s3.access_key,
                "MOORAGE_S3_SECRET_KEY": s3.secret_key,
            }
        )
    return environment


def s3_available() -> bool:
    from moorage.config import Settings

    return "s3_bucket" in Settings.model_fields


def moorage(*arguments: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MOORAGE_")}
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-m", "moorage", *arguments],
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def populate(node: RegistryProcess) -> Populated:
    state = Populated()
    with api_client(node) as admin:
        project = create_project(admin)
        state.project = project
        state.user = create_user(admin, "keeps")
        set_role(admin, project, state.user, "developer")
        leaving = create_user(admin, "leaves")  # its id must never be handed out again
        assert admin.delete(f"/users/{leaving}").status_code == 204
        grant = {"kind": "user", "name": state.user, "pattern": "app/*", "actions": ["delete"]}
        assert admin.post(f"/projects/{project}/grants", json=grant).status_code == 201
        rules = {"rules": [{"repositories": "**", "tags": "v*"}]}
        assert admin.put(f"/projects/{project}/immutable-tag-rules", json=rules).status_code == 200
        scan_settings = admin.put(f"/projects/{project}/scan-settings", json={"scanOnPush": True})
        assert scan_settings.status_code == 200, scan_settings.text
        robot = admin.post(
            f"/projects/{project}/robots",
            json={"name": "ci", "permissions": [{"project": project, "actions": ["pull"]}]},
        )
        assert robot.status_code == 201, robot.text
        state.robot = (robot.json()["name"], robot.json()["secret"])
    with httpx.Client(base_url=node.url, timeout=60, auth=RegistryAuth()) as client:
        app, web = f"{project}/app/api", f"{project}/web"
        image = push_image(client, app, "v1", layer_count=2)
        # A layer pushed in chunks, bigger than one read of the copy.
        big = random_bytes(3 << 20)
        layer = push_blob_chunked(client, app, big, 1 << 20)
        config = push_blob_object(client, app, "application/vnd.oci.image.config.v1+json", b"{}")
        chunked = push_manifest(
            client,
            app,
            encode(
                image_manifest(
                    config,
                    [Pushed("application/vnd.oci.image.layer.v1.tar", layer, big)],
                )
            ),
            OCI_MANIFEST,
            "big",
        )
        index, children = push_multi_platform(
            client, web, [platform("linux", "amd64"), platform("linux", "arm64")], "latest"
        )
        signature = push_image(
            client, app, subject=image, artifact_type="application/vnd.dev.cosign.artifact.sig"
        )
        state.referrers[image.digest] = app
        state.manifests = {
            app: [image.digest, chunked.digest, signature.digest],
            web: [index.digest, *(child.digest for child in children)],
        }
        state.tags = {
            app: {"v1": image.digest, "big": chunked.digest},
            web: {"latest": index.digest},
        }
        state.blobs = {app: [layer, config.digest]}
    with api_client(node) as admin:
        state.report = wait_until(
            lambda: finished_report(admin, app, image.digest), 120, "the scan on push"
        )
    return state


def finished_report(admin: httpx.Client, repository: str, digest: str) -> dict[str, Any] | None:
    response = admin.get(f"/repositories/{repository}/manifests/{digest}/scan")
    if response.status_code != 200:
        return None
    report: dict[str, Any] = response.json()
    return report if report.get("status") in ("Success", "Error") else None


def assert_served(node: RegistryProcess, state: Populated) -> None:
    """Every manifest and every blob they reference, pulled and hashed by the client."""
    accept = ", ".join([OCI_MANIFEST, OCI_INDEX])
    with httpx.Client(base_url=node.url, timeout=60, auth=RegistryAuth()) as client:
        for repository, digests in state.manifests.items():
            for digest in digests:
                response = client.get(
                    f"/v2/{repository}/manifests/{digest}", headers={"Accept": accept}
                )
                assert response.status_code == 200, response.text
                assert digest_of(response.content) == digest
                document = response.json()
                for descriptor in [document.get("config"), *document.get("layers", [])]:
                    if descriptor is None:
                        continue
                    blob = client.get(f"/v2/{repository}/blobs/{descriptor['digest']}")
                    assert blob.status_code == 200, blob.text
                    expected = descriptor["digest"].removeprefix("sha256:")
                    assert hashlib.sha256(blob.content).hexdigest() == expected
        for repository, tags in state.tags.items():
            listed = client.get(f"/v2/{repository}/tags/list").json()["tags"]
            assert sorted(listed) == sorted(tags)
            for tag, digest in tags.items():
                head = client.head(f"/v2/{repository}/manifests/{tag}", headers={"Accept": accept})
                assert head.headers["Docker-Content-Digest"] == digest
        for subject, repository in state.referrers.items():
            referrers = client.get(f"/v2/{repository}/referrers/{subject}").json()["manifests"]
            assert len(referrers) == 1


def test_an_embedded_install_moves_to_postgresql_and_serves_everything(
    postgres: PostgresServer, s3: S3Server, tmp_path: Path
) -> None:
    source = RegistryProcess(tmp_path / "embedded").start()
    try:
        state = populate(source)
    finally:
        source.stop()
    generation = import_vulnerability_database(tmp_path / "embedded", tmp_path)
    env = target_env(postgres.create_database("migrated"), s3, "migrated")
    target_dir = tmp_path / "target"

    moved = moorage(
        "migrate-data", "--from", str(tmp_path / "embedded"), "--data-dir", str(target_dir), env=env
    )
    assert moved.returncode == 0, moved.stdout + moved.stderr
    assert "migration complete" in moved.stdout
    assert postgres.password not in moved.stdout + moved.stderr

    fsck = moorage("fsck", "--data-dir", str(target_dir), env=env)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert "0 problem(s) found" in fsck.stdout
    audit = moorage("audit", "verify", "--data-dir", str(target_dir), env=env)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    status = moorage("vulndb", "status", "--data-dir", str(target_dir), env=env)
    assert status.returncode == 0, status.stdout + status.stderr
    assert generation in status.stdout

    with RegistryProcess(target_dir, env=env).start() as target:
        assert_served(target, state)
        # Credentials sign in as before: the administrator, a user, a robot.
        for name, secret in [("admin", ADMIN_PASSWORD), (state.user, PASSWORD), state.robot]:
            with api_client(target, name, secret) as signed_in:
                assert signed_in.get("/users/me" if "$" not in name else "/roles").status_code == (
                    200
                ), name
        with api_client(target) as admin:
            # The scan report came along as it was.
            app = f"{state.project}/app/api"
            assert finished_report(admin, app, state.tags[app]["v1"]) == state.report
            # Sequences continue after the copied ids: new rows do not collide.
            create_user(admin, "after")
            create_project(admin, "after")
            # The immutable tag rule came along.
            with httpx.Client(base_url=target.url, timeout=60, auth=RegistryAuth()) as client:
                app = f"{state.project}/app/api"
                again = push_image(client, app)
                refused = client.put(
                    f"/v2/{app}/manifests/v1",
                    content=again.body,
                    headers={"Content-Type": OCI_MANIFEST},
                )
                assert refused.status_code == 403, refused.text
        assert moorage("audit", "verify", "--data-dir", str(target_dir), env=env).returncode == 0

    # Running again finds everything present: nothing is copied twice, nothing breaks.
    resumed = moorage(
        "migrate-data",
        "--from",
        str(tmp_path / "embedded"),
        "--data-dir",
        str(target_dir),
        "--resume",
        env=env,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr


def test_a_target_that_is_not_empty_is_refused_and_left_alone(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    source = RegistryProcess(tmp_path / "embedded").start()
    source.stop()
    env = target_env(postgres.create_database("occupied"))
    # The target has served already: an admin account, keys, audit entries.
    RegistryProcess(tmp_path / "target", env=env).start().stop()
    refused = moorage(
        "migrate-data",
        "--from",
        str(tmp_path / "embedded"),
        "--data-dir",
        str(tmp_path / "target"),
        env=env,
    )
    assert refused.returncode != 0
    assert "not empty" in refused.stderr
    assert postgres.password not in refused.stdout + refused.stderr


@pytest.mark.parametrize("problem", ["no-database", "no-target-url", "same-storage"])
def test_sources_and_targets_that_would_lose_data_are_refused(
    postgres: PostgresServer, tmp_path: Path, problem: str
) -> None:
    embedded = tmp_path / "embedded"
    if problem != "no-database":
        RegistryProcess(embedded).start().stop()
    else:
        embedded.mkdir()
    env = (
        {}
        if problem == "no-target-url"
        else target_env(postgres.create_database(f"r_{problem.replace('-', '_')}"))
    )
    target = embedded if problem == "same-storage" else tmp_path / "target"
    refused = moorage("migrate-data", "--from", str(embedded), "--data-dir", str(target), env=env)
    assert refused.returncode != 0, refused.stdout
    assert "Error" in refused.stderr


def test_a_corrupt_blob_is_reported_and_not_copied(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    embedded = tmp_path / "embedded"
    with (
        RegistryProcess(embedded).start() as source,
        httpx.Client(base_url=source.url, timeout=60, auth=RegistryAuth()) as client,
    ):
        image = push_image(client, "t/corrupt", "v1")
    layer = image_manifest_layers(image)[0]
    hexdigest = layer.removeprefix("sha256:")
    stored = embedded / "storage" / "blobs" / "sha256" / hexdigest[:2] / hexdigest
    stored.write_bytes(b"not what the digest says")
    env = target_env(postgres.create_database("corrupt"))
    moved = moorage(
        "migrate-data", "--from", str(embedded), "--data-dir", str(tmp_path / "target"), env=env
    )
    assert moved.returncode == 1
    assert f"blob {layer} does not match its digest" in moved.stderr
    fsck = moorage("fsck", "--data-dir", str(tmp_path / "target"), env=env)
    assert f"blob {layer} is recorded but missing from storage" in fsck.stdout


def image_manifest_layers(image: Pushed) -> list[str]:
    import json

    return [layer["digest"] for layer in json.loads(image.body)["layers"]]


def import_vulnerability_database(data_dir: Path, scratch: Path) -> str:
    """`moorage vulndb import` on a stopped embedded install; the new generation's id."""
    record = osv_record("PYSEC-1", "PyPI", "demo", fixed="1.0")
    bundle = write_bundle(scratch / "bundle.tar.gz", {"PyPI": [record]})
    output = run_vulndb(data_dir, "import", str(bundle))
    found = re.search(r"generation (\S+) is current", output)
    assert found is not None, output
    return found.group(1)


def test_fsck_finds_a_vulnerability_database_generation_missing_from_storage(
    tmp_path: Path,
) -> None:
    embedded = tmp_path / "embedded"
    RegistryProcess(embedded).start().stop()
    generation = import_vulnerability_database(embedded, tmp_path)
    assert moorage("fsck", "--data-dir", str(embedded), env={}).returncode == 0
    blobs = list((embedded / "storage" / "blobs").rglob("*"))
    stored = [path for path in blobs if path.is_file()]
    assert len(stored) == 1  # the generation is the only blob of this install
    stored[0].unlink()
    fsck = moorage("fsck", "--data-dir", str(embedded), env={})
    assert fsck.returncode == 1
    assert f"vulnerability database generation {generation}" in fsck.stdout
    assert "missing from storage" in fsck.stdout
