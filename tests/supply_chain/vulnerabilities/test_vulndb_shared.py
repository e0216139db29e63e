"""The vulnerability database shared by two server processes, as two nodes of one deployment.

Both nodes use one metadata database (SQLite in a shared data directory, or PostgreSQL) and one
storage (that data directory's) but each its own `vulndb_cache_dir`, as separate machines
would. Whatever one node imports or rolls back is what the other scans with; concurrent imports
are serialised by the lock in the database; a damaged cached file is fetched again; a data
directory of the previous version is adopted on first start and keeps its reports.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from moorage.metadata.database import make_engine, sqlite_url
from moorage.metadata.supply_chain.vulndb_store import VulndbStore
from tests.lifecycle.gc_support import run_gc
from tests.support.api import api_client, assert_problem, create_project
from tests.support.auth import RegistryAuth
from tests.support.images import push_image
from tests.support.osv import osv_record, write_bundle, write_osv_zip
from tests.support.scan_images import BUNDLE_V1, alpine, bundle_v2, expected, finding_key
from tests.support.server import RegistryProcess
from tests.support.services import PostgresServer
from tests.support.wait import wait_until

FAST_POLL = {"MOORAGE_VULNDB_POLL_SECONDS": "0.2"}
BINARY = {"Content-Type": "application/octet-stream"}
REPOSITORY_ROOT = Path(__file__).resolve().parents[3]


@dataclass
class Node:
    server: RegistryProcess
    cache: Path
    database: Path | str  # the SQLAlchemy URL of the shared metadata database, or data_dir
    api: httpx.Client = field(init=False)
    v2: httpx.Client = field(init=False)

    def connect(self) -> Node:
        self.api = api_client(self.server)
        self.v2 = httpx.Client(base_url=self.server.url, timeout=60, auth=RegistryAuth())
        return self

    def close(self) -> None:
        self.api.close()
        self.v2.close()

    def upload(self, path: Path) -> str:
        response = self.api.post(
            "/vulnerability-database", content=path.read_bytes(), headers=BINARY
        )
        assert response.status_code == 201, response.text
        generation: str = response.json()["generation"]
        return generation

    def status(self) -> dict[str, Any]:
        response = self.api.get("/vulnerability-database")
        assert response.status_code == 200, response.text
        document: dict[str, Any] = response.json()
        return document

    def report(self, repository: str, digest: str) -> dict[str, Any]:
        response = self.api.get(f"/repositories/{repository}/manifests/{digest}/scan")
        assert response.status_code == 200, response.text
        document: dict[str, Any] = response.json()
        return document

    def wait_report(self, repository: str, digest: str, generation: str) -> dict[str, Any]:
        last: list[Any] = [None]

        def matched() -> bool:
            response = self.api.get(f"/repositories/{repository}/manifests/{digest}/scan")
            last[0] = response.json() if response.status_code == 200 else response.text
            return response.status_code == 200 and bool(
                last[0]["status"] == "Success" and last[0]["generation"] == generation
            )

        wait_until(matched, 120, lambda: f"a report matched in {generation}; last {last[0]}")
        return dict(last[0])


def cache_env(cache: Path, database: Path | str) -> dict[str, str]:
    environment = {**FAST_POLL, "MOORAGE_VULNDB_CACHE_DIR": str(cache)}
    if isinstance(database, str):
        environment["MOORAGE_DATABASE_URL"] = database
    return environment


_DATABASES = itertools.count()


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def nodes(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Node, Node]]:
    """Two nodes on one storage (a shared data directory) and one metadata database: SQLite
    in that directory, or a PostgreSQL server."""
    data = tmp_path / "shared"
    database: Path | str = data
    if request.param == "postgresql":
        server: PostgresServer = request.getfixturevalue("postgres")
        database = server.create_database(f"vulnshare_{next(_DATABASES)}")
    first, second = (
        Node(
            RegistryProcess(data, env=cache_env(tmp_path / name, database)),
            tmp_path / name,
            database,
        )
        for name in ("cache-a", "cache-b")
    )
    try:
        first.server.start()
        second.server.start()
        yield first.connect(), second.connect()
    finally:
        for node in (first, second):
            if hasattr(node, "api"):
                node.close()
            node.server.kill()


def assert_oracle(report: dict[str, Any], name: str, generation: int) -> None:
    oracle = expected(name, generation)
    assert report["status"] == "Success", report
    found = {finding_key(finding) for finding in report["findings"]}
    assert found == {finding_key(finding) for finding in oracle["findings"]}, name


@contextmanager
def catalog(database: Path | str) -> Iterator[VulndbStore]:
    """The shared pointer store of a data directory's SQLite database, or of a URL."""
    url = database if isinstance(database, str) else sqlite_url(database / "moorage.db")
    engine = make_engine(url, pool_size=1)
    try:
        yield VulndbStore(engine)
    finally:
        engine.dispose()


def stored_generations(database: Path | str) -> dict[str, str]:
    """generation id -> digest of its blob, as the metadata database records them."""
    with catalog(database) as store:
        return {item.id: item.digest for item in store.generations()}


def blob_path(data_dir: Path, digest: str) -> Path:
    algorithm, hex_digest = digest.split(":", 1)
    return data_dir / "storage" / "blobs" / algorithm / hex_digest[:2] / hex_digest


def sha256_of(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def scanned_project(node: Node) -> str:
    project = create_project(node.api, "vulnshare")
    response = node.api.put(f"/projects/{project}/scan-settings", json={"scanOnPush": True})
    assert response.status_code == 200, response.text
    return project


def test_an_import_on_one_node_is_what_the_other_scans_with_and_a_rollback_goes_everywhere(
    nodes: tuple[Node, Node], tmp_path: Path
) -> None:
    a, b = nodes
    data_dir = a.server.data_dir
    first = a.upload(write_bundle(tmp_path / "v1.tar.gz", BUNDLE_V1))

    # Node B has never seen the generation: it fetches it from storage for its first scan.
    project = scanned_project(b)
    repository = f"{project}/alpine"
    digest = push_image(b.v2, repository, alpine(), "latest")
    report = b.wait_report(repository, digest, first)
    assert_oracle(report, "alpine", 1)
    assert a.report(repository, digest) == report
    stored = stored_generations(a.database)
    assert list(stored) == [first]
    assert sha256_of(b.cache / "cache" / f"{first}.sqlite") == stored[first]
    assert sha256_of(a.cache / "cache" / f"{first}.sqlite") == stored[first]
    assert sha256_of(blob_path(data_dir, stored[first])) == stored[first]

    # An upload on B re-matches once for the deployment, whichever node notices first.
    second = b.upload(write_bundle(tmp_path / "v2.tar.gz", bundle_v2()))
    assert a.status()["current"]["id"] == second
    rematched = a.wait_report(repository, digest, second)
    assert_oracle(rematched, "alpine", 2)
    assert rematched["rematches"] == report["rematches"] + 1
    assert rematched["finishedAt"] == report["finishedAt"]  # matched again, not scanned again
    assert [item["id"] for item in a.status()["history"]] == [second, first]
    both = stored_generations(a.database)
    assert set(both) == {first, second}

    # A rollback on B is A's current generation at once, and the reports follow it.
    rolled = b.api.post("/vulnerability-database/rollback")
    assert rolled.status_code == 200, rolled.text
    assert rolled.json()["id"] == first
    status = a.status()
    assert status["current"]["id"] == first
    assert [item["id"] for item in status["history"]] == [first]
    back = a.wait_report(repository, digest, first)
    assert_oracle(back, "alpine", 1)
    assert b.report(repository, digest) == back

    # The dropped generation is gone from the table; its file is garbage the next collection
    # removes, while the kept generation's stays.
    stored_after = stored_generations(a.database)
    assert list(stored_after) == [first]
    assert blob_path(data_dir, both[second]).exists()
    collected = run_gc(a.api, graceSeconds=0)
    assert collected["status"] == "finished"
    assert not blob_path(data_dir, both[second]).exists()
    assert blob_path(data_dir, both[first]).is_file()
    assert_problem(a.api.post("/vulnerability-database/rollback"), 409)


def vulndb_command(
    data_dir: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MOORAGE_")}
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "moorage", "vulndb", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
        check=False,
    )


def lock_is_free(database: Path | str) -> bool:
    with catalog(database) as store:
        if not store.claim_lock("probe", 5):
            return False
        store.release_lock("probe")
        return True


def test_imports_on_both_nodes_at_once_are_serialised_and_nothing_is_corrupted(
    nodes: tuple[Node, Node], tmp_path: Path
) -> None:
    a, b = nodes
    data_dir = a.server.data_dir
    zips = [
        write_osv_zip(
            tmp_path / f"race{n}.zip",
            [osv_record(f"TEST-RACE-{n}", "PyPI", f"race-package-{n}", fixed="1.0")],
        )
        for n in range(6)
    ]
    made: list[str] = []
    api_statuses: list[int] = []
    failures: list[str] = []
    guard = threading.Lock()

    def cli(node: Node, path: Path) -> None:
        result = vulndb_command(
            data_dir, "import", "--wait", "240", str(path), env=cache_env(node.cache, node.database)
        )
        found = re.search(r"generation (\S+) is current", result.stdout)
        with guard:
            if result.returncode != 0 or found is None:
                failures.append(result.stdout + result.stderr)
            else:
                made.append(found.group(1))

    def upload(node: Node, path: Path) -> None:
        with api_client(node.server) as admin:
            response = admin.post(
                "/vulnerability-database", content=path.read_bytes(), headers=BINARY
            )
        with guard:
            api_statuses.append(response.status_code)
            if response.status_code == 201:
                made.append(response.json()["generation"])
            elif response.status_code != 409:  # busy: another node's import holds the lock
                failures.append(response.text)

    work = [
        threading.Thread(target=cli, args=(a, zips[0])),
        threading.Thread(target=cli, args=(b, zips[1])),
        threading.Thread(target=cli, args=(a, zips[2])),
        threading.Thread(target=cli, args=(b, zips[3])),
        threading.Thread(target=upload, args=(a, zips[4])),
        threading.Thread(target=upload, args=(b, zips[5])),
    ]
    for thread in work:
        thread.start()
    for thread in work:
        thread.join()
    assert failures == []
    assert len(made) >= 4  # every CLI import waited for its turn
    assert len(made) == len(set(made))

    # One after the other: ids are made under the lock, so the history is in id order.
    kept = sorted(made, reverse=True)[:4]
    for node in (a, b):
        status = node.status()
        assert [item["id"] for item in status["history"]] == kept
        assert status["current"]["id"] == kept[0]
    stored = stored_generations(a.database)
    assert sorted(stored, reverse=True) == kept
    for generation, digest in stored.items():
        assert sha256_of(blob_path(data_dir, digest)) == digest, generation
    assert lock_is_free(a.database)
    for node in (a, b):
        leftovers = [path.name for path in (node.cache / "cache").glob(".fetch-*")]
        assert leftovers == []
        cached = sorted(path.stem for path in (node.cache / "cache").glob("*.sqlite"))
        assert set(cached) <= set(kept)
        for generation in cached:
            path = node.cache / "cache" / f"{generation}.sqlite"
            assert sha256_of(path) == stored[generation]

    # Both nodes scan with the newest generation.
    project = scanned_project(a)
    for node in (a, b):
        repository = f"{project}/alpine-{node.server.port}"
        digest = push_image(node.v2, repository, alpine(), "latest")
        assert node.wait_report(repository, digest, kept[0])["generation"] == kept[0]


def test_a_damaged_cached_file_is_fetched_again_and_a_damaged_blob_is_never_used(
    nodes: tuple[Node, Node], tmp_path: Path
) -> None:
    a, b = nodes
    data_dir = a.server.data_dir
    generation = a.upload(write_bundle(tmp_path / "v1.tar.gz", BUNDLE_V1))
    project = scanned_project(a)
    repository = f"{project}/alpine"
    digest = push_image(a.v2, repository, alpine(), "latest")
    first = a.wait_report(repository, digest, generation)
    assert_oracle(first, "alpine", 1)
    a.close()
    a.server.kill()  # node B is left alone to do every scan

    # B's cached copy is damaged while B is down: B notices when it opens it, and fetches it.
    cached = b.cache / "cache" / f"{generation}.sqlite"
    b.server.stop()
    if not cached.exists():  # B had not needed it yet: give it a damaged copy all the same
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_bytes(
            blob_path(data_dir, stored_generations(a.database)[generation]).read_bytes()
        )
    damaged = bytearray(cached.read_bytes())
    damaged[len(damaged) // 2 : len(damaged) // 2 + 4096] = b"\x00" * 4096
    cached.write_bytes(bytes(damaged))
    b.server.start()
    assert b.api.post(f"/repositories/{repository}/manifests/{digest}/scan").status_code == 202
    wait_until(
        lambda: (
            b.report(repository, digest)["finishedAt"] != first["finishedAt"]
            and b.report(repository, digest)["status"] == "Success"
        ),
        120,
        "the rescan on B",
    )
    again = b.report(repository, digest)
    assert again["generation"] == generation
    assert_oracle(again, "alpine", 1)
    stored = stored_generations(a.database)
    assert sha256_of(cached) == stored[generation]
    assert "does not match its digest: fetching it again" in b.server.logs()

    # A blob damaged in storage is refused: no scan reads it, the report says why.
    b.server.stop()
    blob = blob_path(data_dir, stored[generation])
    content = bytearray(blob.read_bytes())
    content[100:104] = b"XXXX"
    blob.write_bytes(bytes(content))
    cached.unlink()
    b.server.start()
    assert b.api.post(f"/repositories/{repository}/manifests/{digest}/scan").status_code == 202
    wait_until(lambda: b.report(repository, digest)["status"] == "Error", 120, "the refused rescan")
    assert "no vulnerability database" in b.report(repository, digest)["error"]
    assert not cached.exists()
    assert list((b.cache / "cache").glob(".fetch-*")) == []
    assert "in storage does not match its digest" in b.server.logs()


# -- upgrading from the version that kept the generations under <data_dir>/vulndb


def previous_version_source(target: Path) -> Path | None:
    """The source tree of the version before the shared vulnerability database (the parent of
    the commit whose migration created `vulndb_pointer`), or None outside a git checkout."""
    found = subprocess.run(
        ["git", "log", "--format=%H", "-S", "vulndb_pointer", "--reverse", "--", "src/moorage"],
        cwd=REPOSITORY_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    commits = found.stdout.split()
    if found.returncode != 0 or not commits:
        return None
    target.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", "--format=tar", f"{commits[0]}^", "src"],
        cwd=REPOSITORY_ROOT,
        capture_output=True,
        check=True,
    )
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target / "src"


def test_a_data_directory_of_the_previous_version_is_adopted_with_its_reports(
    tmp_path: Path,
) -> None:
    old_source = previous_version_source(tmp_path / "previous")
    if old_source is None:
        pytest.skip("the previous version's source needs a git checkout")
    data_dir = tmp_path / "data"
    old_env = {**FAST_POLL, "PYTHONPATH": str(old_source)}

    # The previous version: a scanned image, two imported generations, node-local files.
    old = RegistryProcess(data_dir, env=old_env).start()
    try:
        node = Node(old, data_dir / "vulndb", data_dir).connect()
        project = scanned_project(node)
        repository = f"{project}/alpine"
        digest = push_image(node.v2, repository, alpine(), "latest")
        generations = []
        for number, bundle in enumerate((BUNDLE_V1, bundle_v2()), start=1):
            imported = vulndb_command(
                data_dir,
                "import",
                str(write_bundle(tmp_path / f"v{number}.tar.gz", bundle)),
                env={"PYTHONPATH": str(old_source)},
            )
            assert imported.returncode == 0, imported.stderr
            found = re.search(r"generation (\S+) is current", imported.stdout)
            assert found is not None
            generations.append(found.group(1))
        first, second = generations
        before = node.wait_report(repository, digest, second)
        assert_oracle(before, "alpine", 2)
        status_before = node.status()
        node.close()
    finally:
        old.stop()
    assert (data_dir / "vulndb" / "CURRENT").is_file()

    # This version adopts the files on first start and serves the same reports.
    new = RegistryProcess(data_dir, env=dict(FAST_POLL)).start()
    try:
        node = Node(new, data_dir / "vulndb", data_dir).connect()
        assert node.status() == status_before
        assert node.report(repository, digest) == before
        assert not (data_dir / "vulndb" / "CURRENT").exists()
        assert (data_dir / "vulndb" / "CURRENT.adopted").is_file()
        assert not (data_dir / "vulndb" / "generations").exists()
        stored = stored_generations(data_dir)
        assert set(stored) == {first, second}
        for generation, blob_digest in stored.items():
            assert sha256_of(blob_path(data_dir, blob_digest)) == blob_digest
            assert sha256_of(data_dir / "vulndb" / "cache" / f"{generation}.sqlite") == blob_digest

        # A rollback goes to the adopted earlier generation; the report is matched once more.
        rolled = node.api.post("/vulnerability-database/rollback")
        assert rolled.status_code == 200, rolled.text
        assert rolled.json()["id"] == first
        after = node.wait_report(repository, digest, first)
        assert_oracle(after, "alpine", 1)
        assert after["rematches"] == before["rematches"] + 1
        assert after["finishedAt"] == before["finishedAt"]
        node.close()
    finally:
        new.stop()
    status = vulndb_command(data_dir, "status")
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith(f"* {first}")


def test_the_commands_adopt_a_previous_layout_too(tmp_path: Path) -> None:
    """`moorage vulndb` run first after an upgrade (no server started yet) adopts the files."""
    from moorage.vulnerability.database import VulnerabilityDatabase

    data_dir = tmp_path / "data"
    legacy = VulnerabilityDatabase(data_dir / "vulndb")  # the file layout, as written before
    first = legacy.import_path(write_bundle(tmp_path / "v1.tar.gz", BUNDLE_V1)).generation
    second = legacy.import_path(write_bundle(tmp_path / "v2.tar.gz", bundle_v2())).generation
    third = legacy.import_path(write_bundle(tmp_path / "v3.tar.gz", BUNDLE_V1)).generation
    legacy.rollback()  # the layout's own history: [second, first]
    assert [info.id for info in legacy.status().history] == [second, first]

    status = vulndb_command(data_dir, "status", "--json")
    assert status.returncode == 0, status.stderr
    document = json.loads(status.stdout)
    assert document["current"]["id"] == second
    assert [item["id"] for item in document["history"]] == [second, first]
    assert third not in stored_generations(data_dir)
    # Once adopted, the shared store is the truth: the old files are not read again.
    assert not (data_dir / "vulndb" / "CURRENT").exists()
    rolled = vulndb_command(data_dir, "rollback")
    assert rolled.returncode == 0, rolled.stderr
    assert f"generation {first} is current again" in rolled.stdout
    refused = vulndb_command(data_dir, "rollback")
    assert refused.returncode == 1
    assert "no earlier generation" in refused.stderr


def test_fsck_finds_a_generation_missing_from_storage(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    imported = vulndb_command(
        data_dir, "import", str(write_bundle(tmp_path / "v1.tar.gz", BUNDLE_V1))
    )
    assert imported.returncode == 0, imported.stderr

    def fsck() -> subprocess.CompletedProcess[str]:
        environment = {k: v for k, v in os.environ.items() if not k.startswith("MOORAGE_")}
        return subprocess.run(
            [sys.executable, "-m", "moorage", "fsck", "--data-dir", str(data_dir)],
            capture_output=True,
            text=True,
            env=environment,
            timeout=120,
            check=False,
        )

    assert fsck().returncode == 0
    ((generation, digest),) = stored_generations(data_dir).items()
    blob_path(data_dir, digest).unlink()
    found = fsck()
    assert found.returncode == 1
    assert f"vulnerability database generation {generation}" in found.stdout
