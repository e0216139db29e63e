"""What must hold after a workload (and after a garbage collection): read back over HTTP and
from the storage itself, never from the registry's metadata database.

- every manifest the registry lists (catalog → tags) and every untagged manifest the ledger
  holds pulls, its digest verified, with every blob it references, each digest-verified;
- the registry's tags of the workload's repositories are exactly the ledger's, and a manifest
  the ledger deleted does not come back;
- the storage (a directory, or an S3 bucket listed with boto3) holds every referenced blob;
  what it holds beyond that is reported as orphans, for the caller to judge (after a final GC
  there must be none).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx

from tests.support.auth import RegistryAuth
from tests.support.workload import OCI_MANIFEST, Ledger

PAGE = 500
ACCEPT = ", ".join(
    [
        OCI_MANIFEST,
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)


class BlobListing(Protocol):
    """Where the registry keeps committed blobs, read directly."""

    def digests(self) -> set[str]: ...

    def remove(self, digest: str) -> None: ...

    def add(self, data: bytes) -> str: ...


def _hex_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class FilesystemBlobs:
    """blobs/<algorithm>/<first two hex chars>/<hex> under the storage directory."""

    root: Path

    def _path(self, digest: str) -> Path:
        algorithm, hex_part = digest.split(":", 1)
        return self.root / algorithm / hex_part[:2] / hex_part

    def digests(self) -> set[str]:
        if not self.root.exists():
            return set()
        return {
            f"{path.parent.parent.name}:{path.name}"
            for path in self.root.glob("*/*/*")
            if path.is_file()
        }

    def remove(self, digest: str) -> None:
        self._path(digest).unlink()

    def add(self, data: bytes) -> str:
        digest = _hex_digest(data)
        path = self._path(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return digest


@dataclass
class S3Blobs:
    """The same layout as keys in a bucket, listed and changed with boto3."""

    endpoint: str
    bucket: str
    region: str
    access_key: str
    secret_key: str
    prefix: str = ""

    def _client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
        )

    def _key(self, digest: str) -> str:
        algorithm, hex_part = digest.split(":", 1)
        return f"{self.prefix}blobs/{algorithm}/{hex_part[:2]}/{hex_part}"

    def digests(self) -> set[str]:
        pages = (
            self._client()
            .get_paginator("list_objects_v2")
            .paginate(Bucket=self.bucket, Prefix=f"{self.prefix}blobs/")
        )
        found = set()
        for page in pages:
            for item in page.get("Contents", []):
                parts = item["Key"][len(self.prefix) :].split("/")
                if len(parts) == 4:
                    found.add(f"{parts[1]}:{parts[3]}")
        return found

    def remove(self, digest: str) -> None:
        self._client().delete_object(Bucket=self.bucket, Key=self._key(digest))

    def add(self, data: bytes) -> str:
        digest = _hex_digest(data)
        self._client().put_object(Bucket=self.bucket, Key=self._key(digest), Body=data)
        return digest


def blob_listing(environment: dict[str, str], data_dir: Path) -> BlobListing:
    """The blob storage a server with this (effective MOORAGE_*) environment writes to."""
    if environment.get("MOORAGE_STORAGE") == "s3":
        return S3Blobs(
            endpoint=environment["MOORAGE_S3_ENDPOINT"],
            bucket=environment["MOORAGE_S3_BUCKET"],
            region=environment["MOORAGE_S3_REGION"],
            access_key=environment["MOORAGE_S3_ACCESS_KEY"],
            secret_key=environment["MOORAGE_S3_SECRET_KEY"],
            prefix=environment.get("MOORAGE_S3_PREFIX", ""),
        )
    return FilesystemBlobs(data_dir / "storage" / "blobs")


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    referenced: set[str] = field(default_factory=set)
    stored: set[str] = field(default_factory=set)
    manifests_checked: int = 0
    blobs_checked: int = 0

    @property
    def orphans(self) -> set[str]:
        """Blobs in storage that no manifest the registry holds references."""
        return self.stored - self.referenced


def _pages(http: httpx.Client, path: str, key: str) -> Iterator[Any]:
    url: str | None = f"{path}?n={PAGE}"
    while url is not None:
        response = http.get(url)
        if response.status_code == 404:
            return  # a repository emptied meanwhile
        response.raise_for_status()
        yield from response.json().get(key) or []
        link = response.headers.get("Link")
        url = link.split(";")[0].strip().strip("<>") if link else None


class _Checker:
    def __init__(self, url: str, ledger: Ledger) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, auth=RegistryAuth(), timeout=120)
        # One client per thread that pulls blobs (a token cache each).
        self.local = threading.local()
        self.pulling: list[httpx.Client] = []
        self.ledger = ledger
        self.report = Report()

    def fetch_manifest(self, repository: str, reference: str) -> bytes | None:
        try:
            response = self.http.get(
                f"/v2/{repository}/manifests/{reference}", headers={"Accept": ACCEPT}
            )
        except httpx.TransportError as error:
            self.report.problems.append(f"manifest {repository}:{reference}: {error!r}")
            return None
        if response.status_code != 200:
            self.report.problems.append(
                f"manifest {repository}:{reference} does not pull: {response.status_code}"
            )
            return None
        digest = _hex_digest(response.content)
        if response.headers.get("Docker-Content-Digest") != digest:
            self.report.problems.append(
                f"manifest {repository}:{reference} is {digest}, the registry says"
                f" {response.headers.get('Docker-Content-Digest')}"
            )
        if reference.startswith("sha256:") and reference != digest:
            self.report.problems.append(f"manifest {repository}@{reference} has content {digest}")
        self.report.manifests_checked += 1
        return response.content

    def referenced_blobs(self, repository: str, body: bytes) -> set[tuple[str, str]]:
        document = json.loads(body)
        blobs = {(repository, d["digest"]) for d in document.get("layers", [])}
        if "config" in document:
            blobs.add((repository, document["config"]["digest"]))
        for child in document.get("manifests", []):
            child_body = self.fetch_manifest(repository, child["digest"])
            if child_body is not None:
                blobs |= self.referenced_blobs(repository, child_body)
        return blobs

    def verify_blob(self, item: tuple[str, str]) -> str | None:
        repository, digest = item
        http = getattr(self.local, "http", None)
        if http is None:
            http = self.local.http = httpx.Client(
                base_url=self.url, auth=RegistryAuth(), timeout=120, follow_redirects=True
            )
            self.pulling.append(http)
        try:
            response = http.get(f"/v2/{repository}/blobs/{digest}")
        except httpx.TransportError as error:
            # e.g. a server that finds the file gone only once it streams it drops the line
            return f"blob {digest} of {repository} does not pull: {error!r}"
        if response.status_code != 200:
            return f"blob {digest} of {repository} does not pull: {response.status_code}"
        if _hex_digest(response.content) != digest:
            return f"blob {digest} of {repository} has content {_hex_digest(response.content)}"
        return None

    def run(self, storage: BlobListing, pull_blobs: bool) -> Report:
        blobs: set[tuple[str, str]] = set()
        registry_tags: dict[tuple[str, str], str] = {}
        pulled: set[tuple[str, str]] = set()
        for repository in sorted(_pages(self.http, "/v2/_catalog", "repositories")):
            for tag in sorted(_pages(self.http, f"/v2/{repository}/tags/list", "tags")):
                body = self.fetch_manifest(repository, tag)
                if body is not None:
                    digest = _hex_digest(body)
                    registry_tags[(repository, tag)] = digest
                    pulled.add((repository, digest))
                    blobs |= self.referenced_blobs(repository, body)
        for repository, digest in sorted(set(self.ledger.manifests) - pulled):
            body = self.fetch_manifest(repository, digest)
            if body is not None:
                blobs |= self.referenced_blobs(repository, body)
        for (repository, digest), image in sorted(self.ledger.manifests.items()):
            if image.digest != digest:
                self.report.problems.append(f"ledger: {repository}@{digest} holds another body")
        self.compare_tags(registry_tags)
        self.compare_referrers()
        for repository, digest in sorted(self.ledger.deleted):
            response = self.http.head(
                f"/v2/{repository}/manifests/{digest}", headers={"Accept": ACCEPT}
            )
            if response.status_code != 404:
                self.report.problems.append(
                    f"deleted manifest {repository}@{digest} answers {response.status_code}"
                )
        if pull_blobs:
            with ThreadPoolExecutor(8) as pool:
                for problem in pool.map(self.verify_blob, sorted(blobs)):
                    if problem is not None:
                        self.report.problems.append(problem)
        self.report.blobs_checked = len(blobs)
        self.report.referenced = {digest for _, digest in blobs}
        self.report.stored = storage.digests()
        for digest in sorted(self.report.referenced - self.report.stored):
            self.report.problems.append(f"blob {digest} is referenced but not in storage")
        return self.report

    def compare_referrers(self) -> None:
        """The referrers API of every subject the ledger holds lists exactly its referrers."""
        for (repository, digest), image in sorted(self.ledger.manifests.items()):
            if image.children or image.subject is not None:
                continue
            listed = {
                descriptor["digest"]
                for descriptor in _pages(
                    self.http, f"/v2/{repository}/referrers/{digest}", "manifests"
                )
            }
            expected = self.ledger.referrers(repository, digest)
            if listed != expected:
                self.report.problems.append(
                    f"referrers of {repository}@{digest}: {sorted(listed)}, not {sorted(expected)}"
                )

    def compare_tags(self, registry_tags: dict[tuple[str, str], str]) -> None:
        ours = self.ledger.repositories
        listed = {key: digest for key, digest in registry_tags.items() if key[0] in ours}
        for key, digest in sorted(self.ledger.tags.items()):
            if key not in listed:
                self.report.problems.append(f"tag {key[0]}:{key[1]} is missing")
            elif listed[key] != digest:
                self.report.problems.append(
                    f"tag {key[0]}:{key[1]} points to {listed[key]}, not {digest}"
                )
        for key in sorted(set(listed) - set(self.ledger.tags)):
            self.report.problems.append(f"tag {key[0]}:{key[1]} exists but the ledger has none")


def check_registry(
    url: str, ledger: Ledger, storage: BlobListing, *, pull_blobs: bool = True
) -> Report:
    """Check everything the module describes; the report lists problems (empty: all holds)
    and the orphans for the caller. `pull_blobs=False` skips pulling every blob (the storage
    is still compared with what the manifests reference), for a quick look at the orphans."""
    checker = _Checker(url, ledger)
    try:
        return checker.run(storage, pull_blobs)
    finally:
        checker.http.close()
        for http in checker.pulling:
            http.close()
