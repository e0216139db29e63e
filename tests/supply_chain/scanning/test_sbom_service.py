"""SBOM export and attachment on the application's real services (database, storage, scans),
driven step by step: scans run only when a test starts them, so a Pending report stays
Pending, and attaching is called directly, so what it returns is the decision it made."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from moorage.config import Settings, load_settings
from moorage.domain.digest import Digest
from moorage.domain.events import Actor
from moorage.domain.names import Reference
from moorage.http.app import build_app
from moorage.http.state import IAM, SERVICES
from moorage.metadata.registry.registry_records import ReferrerRecord
from moorage.scanning.sbom import CYCLONEDX_JSON
from moorage.server import prepare_data
from moorage.services.supply_chain.sbom import (
    ANNOTATION_CREATED,
    ANNOTATION_FINGERPRINT,
    ANNOTATION_GENERATION,
    SbomService,
)
from tests.support.auth import ADMIN_PASSWORD, ADMIN_USER, basic_header
from tests.support.images import Image, ImageIndex
from tests.support.osv import write_bundle
from tests.support.scan_images import BUNDLE_V1, debian, multiarch, sbom_referrer
from tests.support.wait import wait_until_async

PUSHER = Actor(name=ADMIN_USER, kind="user")
ADMIN = {"Authorization": basic_header(ADMIN_USER, ADMIN_PASSWORD)}
PROJECT = "sboms"
EMPTY_CONFIG = "application/vnd.oci.empty.v1+json"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    settings = load_settings(
        None, {"data_dir": tmp_path / "data"}, environ={"MOORAGE_ADMIN_PASSWORD": ADMIN_PASSWORD}
    )
    prepare_data(settings)
    return settings


class Registry:
    """The application without its background jobs, and a client for its API."""

    def __init__(self, app: web.Application, client: TestClient[Any, Any]) -> None:
        self.client = client
        self.iam = app[IAM]
        self.registry = app[SERVICES].registry
        self.uploads = app[SERVICES].uploads
        self._scanning: asyncio.Task[None] | None = None

    async def push(self, repository: str, image: Image) -> str:
        for blob in image.blobs:
            await self.uploads.monolithic(
                repository, Digest.parse(blob.digest), blob.size, _once(blob.data), PUSHER
            )
        return await self._manifest(repository, image.manifest.media_type, image.manifest.data)

    async def push_index(self, repository: str, index: ImageIndex) -> str:
        for image in index.images:
            await self.push(repository, image)
        return await self._manifest(repository, index.index.media_type, index.index.data)

    async def _manifest(self, repository: str, media_type: str, body: bytes) -> str:
        reference = Reference(digest=Digest.of(body))
        parsed = await self.registry.put_manifest(repository, reference, media_type, body, PUSHER)
        return str(parsed.digest)

    async def scan_settings(self, *, attach_sbom: bool) -> None:
        response = await self.client.put(
            f"/api/v1/projects/{PROJECT}/scan-settings",
            json={"scanOnPush": False, "attachSbom": attach_sbom},
            headers=ADMIN,
        )
        assert response.status == 200, await response.text()

    async def import_database(self, path: Path) -> None:
        await self.iam.threads.run(
            self.iam.vulndb.import_file, PUSHER, write_bundle(path, BUNDLE_V1)
        )
        await self.iam.scans.database_changed()

    async def sbom(self, repository: str, digest: str, query: str = "") -> tuple[int, Any]:
        response = await self.client.get(
            f"/api/v1/repositories/{repository}/manifests/{digest}/sbom{query}", headers=ADMIN
        )
        if response.content_type == "application/problem+json":
            return response.status, await response.json(content_type=None)
        return response.status, await response.read()

    def start_scanning(self) -> None:
        self._scanning = asyncio.create_task(self.iam.scans.run())

    async def stop_scanning(self) -> None:
        if self._scanning is not None:
            self._scanning.cancel()
            await asyncio.gather(self._scanning, return_exceptions=True)

    async def scanned(self, repository: str, digest: str) -> None:
        """Ask for a scan and wait until its report is complete (the scanner is running)."""
        await self.iam.scans.request_scan(repository, digest, PUSHER)
        await self.completed(digest)

    async def completed(self, digest: str) -> None:
        async def done() -> bool:
            report = await self.iam.threads.run(self.iam.scans.report, digest)
            return report is not None and report.status.completed

        await wait_until_async(done, 120, f"the scan of {digest} to complete")

    async def referrers(self, repository: str, digest: str) -> list[ReferrerRecord]:
        return await self.registry.referrers(
            repository, Digest.parse(digest), CYCLONEDX_JSON, None, 100
        )


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


def run(settings: Settings, scenario: Callable[[Registry], Awaitable[None]]) -> None:
    async def main() -> None:
        app = build_app(settings, run_jobs=False)
        async with TestClient(TestServer(app)) as client:
            registry = Registry(app, client)
            response = await client.post("/api/v1/projects", json={"name": PROJECT}, headers=ADMIN)
            assert response.status == 201, await response.text()
            try:
                await scenario(registry)
            finally:
                await registry.stop_scanning()

    asyncio.run(main())


def test_an_sbom_exists_once_the_scan_took_an_inventory(settings: Settings) -> None:
    async def scenario(registry: Registry) -> None:
        repository = f"{PROJECT}/app"
        digest = await registry.push(repository, debian())
        status, problem = await registry.sbom(repository, digest)
        assert (status, problem["status"]) == (404, 404)
        assert "has not been scanned" in problem["detail"]

        # Requested, but nothing scans yet: the report is Pending.
        await registry.iam.scans.request_scan(repository, digest, PUSHER)
        status, problem = await registry.sbom(repository, digest, "?format=spdx")
        assert status == 409
        assert "pending" in problem["detail"]

        # Without a vulnerability database the scan ends in Error, but it took the inventory:
        # the SBOM is there, with no vulnerabilities.
        registry.start_scanning()
        await registry.completed(digest)
        report = registry.iam.scans.report(digest)
        assert report is not None
        assert report.status.value == "Error"
        status, body = await registry.sbom(repository, digest)
        assert status == 200
        bom = json.loads(body)
        assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(body.decode()) is None
        assert "vulnerabilities" not in bom
        names = {component["name"] for component in bom["components"]}
        assert {"libssl3", "zlib1g", "requests", "debian"} <= names

        # A digest the repository does not hold is unknown there, even though it was scanned.
        status, problem = await registry.sbom(f"{PROJECT}/other", digest)
        assert status == 404
        assert problem["code"] == "MANIFEST_UNKNOWN"
        status, problem = await registry.sbom(repository, digest, "?format=xml")
        assert status == 400
        status, problem = await registry.sbom(repository, "sha256:abc")
        assert status == 400

    run(settings, scenario)


def test_an_index_has_no_sbom_of_its_own_but_each_platform_image_does(
    settings: Settings, tmp_path: Path
) -> None:
    async def scenario(registry: Registry) -> None:
        await registry.scan_settings(attach_sbom=True)
        await registry.import_database(tmp_path / "v1.tar.gz")
        registry.start_scanning()
        repository = f"{PROJECT}/multiarch"
        index = multiarch()
        digest = await registry.push_index(repository, index)
        await registry.scanned(repository, digest)
        status, problem = await registry.sbom(repository, digest)
        assert status == 404
        assert "index" in problem["detail"]
        assert await registry.iam.sboms.attach(repository, Digest.parse(digest)) is None
        for image in index.images:
            await registry.completed(image.manifest.digest)
            status, body = await registry.sbom(repository, image.manifest.digest)
            assert status == 200
            assert json.loads(body)["metadata"]["component"]["version"] == image.manifest.digest
            attached = await registry.iam.sboms.attach(
                repository, Digest.parse(image.manifest.digest)
            )
            assert attached is not None

    run(settings, scenario)


def test_attaching_is_idempotent_and_never_applies_to_artifacts(
    settings: Settings, tmp_path: Path
) -> None:
    async def scenario(registry: Registry) -> None:
        sboms = registry.iam.sboms
        repository = f"{PROJECT}/attach"
        image = debian()
        digest = await registry.push(repository, image)
        await registry.import_database(tmp_path / "v1.tar.gz")
        registry.start_scanning()
        await registry.scanned(repository, digest)
        subject = Digest.parse(digest)

        # The project has not asked for SBOMs.
        assert await sboms.attach(repository, subject) is None
        assert await registry.referrers(repository, digest) == []

        await registry.scan_settings(attach_sbom=True)
        first = await sboms.attach(repository, subject)
        assert first is not None
        (record,) = await registry.referrers(repository, digest)
        assert record.digest == first
        assert record.artifact_type == CYCLONEDX_JSON
        annotations = record.annotations or {}
        assert set(annotations) == {
            ANNOTATION_CREATED,
            ANNOTATION_FINGERPRINT,
            ANNOTATION_GENERATION,
        }
        report = registry.iam.scans.report(digest)
        assert report is not None
        assert annotations[ANNOTATION_GENERATION] == report.generation

        manifest = await registry.registry.read_manifest(repository, Digest.parse(first))
        document = json.loads(manifest.body)
        assert document["artifactType"] == CYCLONEDX_JSON
        assert document["config"]["mediaType"] == EMPTY_CONFIG
        assert document["config"]["size"] == 2
        assert document["subject"] == {
            "mediaType": image.manifest.media_type,
            "digest": digest,
            "size": image.manifest.size,
        }
        (layer,) = document["layers"]
        assert layer["mediaType"] == CYCLONEDX_JSON
        with await registry.registry.open_blob(Digest.parse(layer["digest"])) as blob:
            attached = blob.read()
        assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(attached.decode()) is None
        bom = json.loads(attached)
        assert bom["metadata"]["component"]["version"] == digest
        # Composition only: the image's findings are served by the API, not attached.
        assert report.findings
        assert "vulnerabilities" not in bom

        # The same content again (a re-scan, a re-match): nothing new is pushed.
        await registry.scanned(repository, digest)
        assert await sboms.attach(repository, subject) is None
        assert [r.digest for r in await registry.referrers(repository, digest)] == [first]

        # An SBOM, a signature or any other artifact never gets an SBOM.
        assert await sboms.attach(repository, Digest.parse(first)) is None
        other = sbom_referrer(image.manifest)
        other_digest = await registry.push(repository, other)
        assert await sboms.attach(repository, Digest.parse(other_digest)) is None
        assert await registry.referrers(repository, first) == []

        # Changed content (here: the registry's public URL changed, so the purls did) adds an
        # SBOM; the earlier one stays.
        moved = SbomService(
            registry.iam.scans,
            registry.registry,
            registry.uploads,
            registry.iam.threads,
            public_url="https://registry.example",
        )
        second = await moved.attach(repository, subject)
        assert second is not None
        assert second != first
        attached_now = {r.digest for r in await registry.referrers(repository, digest)}
        assert attached_now == {first, second, other_digest}  # and the one pushed by hand
        assert await moved.attach(repository, subject) is None

    run(settings, scenario)
