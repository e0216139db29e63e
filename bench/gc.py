"""Online garbage collection: scale, pushes while it runs, and Distribution's offline GC.

    python bench/gc.py [--only scale,s3,push,distribution] [--referenced 1000000]
                       [--garbage 100000] [--s3-garbage 20000] [--push-garbage 150000]
                       [--push-rounds 3] [--push-seconds 15] [--clients 8]
                       [--images 500] [--markdown FILE]

scale:        a data directory migrated, then seeded by bulk inserts into its SQLite database:
              `--referenced` blobs referenced by manifests (100 blobs each, 100 manifests a
              repository, each tagged and linked to its repository, as a push leaves them; no
              bytes in storage: collection never reads or deletes a referenced blob's bytes)
              and `--garbage` blob rows untouched for two days that nothing references, whose
              bytes are in storage (files on the filesystem). The collector then runs in this
              process (as `moorage gc --grace-seconds 0` does) and the time of each phase is
              taken from its progress callback; inside the blob phase, the time spent looking
              for candidates, marking them, deleting them from storage and dropping their rows.
s3:           the same on moto's S3 server (`--s3-garbage` objects: moto is slow to seed).
push:         a Moorage server (filesystem, 2 workers) with `--push-garbage` garbage blobs;
              `--clients` clients push small images (two blobs and a tagged manifest each) for
              `--push-seconds`, in rounds alternating without and with a collection running
              (started through the API with `graceSeconds: 0`, stopped after the round and
              resumed for the next, so it is sweeping during every measured round).
distribution: `--images` small images pushed to Moorage and to Distribution (filesystem), half
              of the manifests deleted through the API; then Distribution's offline
              `docker-registry garbage-collect` (its server stopped) against Moorage's online
              `moorage gc --grace-seconds 0` (its server running); the kept images are pulled
              back and digest-verified on Moorage afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from blobdata import OCI_MANIFEST, make_image
from client import RegistryClient, TokenAuth
from moorage.config import load_settings
from moorage.domain.events import Actor
from moorage.metadata.database import make_engine, migrate, write_transaction
from moorage.metadata.lifecycle.gc_runs_store import GcRun, GcRunsStore
from moorage.metadata.lifecycle.gc_store import GcStore
from moorage.metadata.registry.models import utcnow
from moorage.metadata.registry.registry_records import (
    blobs_table,
    manifest_blobs_table,
    manifests_table,
    repositories_table,
    repository_blobs_table,
    repository_manifests_table,
    tags_table,
)
from moorage.metadata.registry.store import MetadataStore
from moorage.metadata.staging.promotion_store import PromotionStore
from moorage.services.lifecycle.gc import PHASES
from moorage.services.lifecycle.gc_runner import build_collector, gc_options_from
from moorage.storage.factory import make_storage
from servers import DistributionServer, MoorageServer, Server, environment_info
from storage import ACCESS_KEY, SECRET_KEY, MotoServer

BLOBS_PER_MANIFEST = 100
MANIFESTS_PER_REPOSITORY = 100
_SEED_BATCH = 20_000


def _digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def garbage_bytes(index: int) -> bytes:
    return f"garbage blob {index}\n".encode()


# -- seeding


def seed_metadata(database_url: str, referenced: int, garbage: int) -> list[str]:
    """Referenced blobs with their manifests, tags and links, and garbage blob rows (old,
    unreferenced); the garbage digests (their bytes are `garbage_bytes(k)`)."""
    engine = make_engine(database_url, pool_size=1)
    try:
        migrate(engine)
        now = utcnow()
        old = now - timedelta(days=2)
        manifests = max(1, referenced // BLOBS_PER_MANIFEST)
        repositories = max(1, -(-manifests // MANIFESTS_PER_REPOSITORY))
        with write_transaction(engine) as connection:
            connection.execute(
                repositories_table.insert(),
                [{"name": f"gcbench/r{r:05d}", "created_at": old} for r in range(repositories)],
            )
            ids = dict(
                connection.execute(
                    repositories_table.select()
                    .with_only_columns(repositories_table.c.name, repositories_table.c.id)
                    .where(repositories_table.c.name.like("gcbench/%"))
                ).all()
            )
        blob_rows: list[dict[str, Any]] = []
        reference_rows: list[dict[str, Any]] = []
        link_rows: list[dict[str, Any]] = []
        manifest_rows: list[dict[str, Any]] = []
        holding_rows: list[dict[str, Any]] = []
        tag_rows: list[dict[str, Any]] = []

        def flush(force: bool = False) -> None:
            if not force and len(blob_rows) < _SEED_BATCH:
                return
            with write_transaction(engine) as connection:
                for table, rows in (
                    (blobs_table, blob_rows),
                    (manifests_table, manifest_rows),
                    (manifest_blobs_table, reference_rows),
                    (repository_manifests_table, holding_rows),
                    (repository_blobs_table, link_rows),
                    (tags_table, tag_rows),
                ):
                    if rows:
                        connection.execute(table.insert(), rows)
                        rows.clear()

        for m in range(manifests):
            repository_id = ids[f"gcbench/r{m // MANIFESTS_PER_REPOSITORY:05d}"]
            body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "bench": m}).encode()
            digest = _digest(body)
            manifest_rows.append(
                {
                    "digest": digest,
                    "media_type": OCI_MANIFEST,
                    "size": len(body),
                    "body": body,
                    "created_at": old,
                }
            )
            holding_rows.append(
                {
                    "repository_id": repository_id,
                    "digest": digest,
                    "created_at": old,
                    "touched_at": old,
                }
            )
            tag_rows.append(
                {
                    "repository_id": repository_id,
                    "name": f"t{m}",
                    "manifest_digest": digest,
                    "updated_at": old,
                }
            )
            for b in range(BLOBS_PER_MANIFEST):
                blob = _digest(f"referenced {m} {b}".encode())
                blob_rows.append(
                    {
                        "digest": blob,
                        "size": 1 << 20,
                        "created_at": old,
                        "touched_at": old,
                        "state": "live",
                    }
                )
                reference_rows.append({"manifest_digest": digest, "blob_digest": blob})
                link_rows.append(
                    {"repository_id": repository_id, "digest": blob, "created_at": old}
                )
            flush()
        flush(force=True)
        digests = []
        for k in range(garbage):
            data = garbage_bytes(k)
            digest = _digest(data)
            digests.append(digest)
            blob_rows.append(
                {
                    "digest": digest,
                    "size": len(data),
                    "created_at": old,
                    "touched_at": old,
                    "state": "live",
                }
            )
            flush()
        flush(force=True)
        with engine.connect() as connection:
            connection.exec_driver_sql("ANALYZE")
        return digests
    finally:
        engine.dispose()


def seed_files(root: Path, garbage: int) -> None:
    """The garbage blobs' bytes, where the filesystem driver keeps blobs."""
    blobs = root / "blobs" / "sha256"
    for k in range(garbage):
        data = garbage_bytes(k)
        hex_digest = hashlib.sha256(data).hexdigest()
        directory = blobs / hex_digest[:2]
        directory.mkdir(parents=True, exist_ok=True)
        (directory / hex_digest).write_bytes(data)


def seed_bucket(endpoint: str, bucket: str, garbage: int, threads: int = 16) -> None:
    """The garbage blobs' bytes as objects, at the S3 driver's keys."""
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )

    def put(k: int) -> None:
        data = garbage_bytes(k)
        hex_digest = hashlib.sha256(data).hexdigest()
        client.put_object(
            Bucket=bucket, Key=f"blobs/sha256/{hex_digest[:2]}/{hex_digest}", Body=data
        )

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(put, range(garbage)))


# -- timing the collector from inside


@dataclass
class Timings:
    """Seconds spent in named calls, and the wall time covered by (parallel) storage deletes."""

    seconds: dict[str, float] = field(default_factory=dict)
    intervals: list[tuple[float, float]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, name: str, started: float, ended: float) -> None:
        with self.lock:
            self.seconds[name] = self.seconds.get(name, 0.0) + ended - started
            if name == "delete_blobs":
                self.intervals.append((started, ended))

    def delete_wall(self) -> float:
        covered, reach = 0.0, float("-inf")
        for started, ended in sorted(self.intervals):
            if ended > reach:
                covered += ended - max(started, reach)
                reach = ended
        return covered


class Timed:
    """Forwards every call to `inner`, timing those named in `timed`."""

    def __init__(self, inner: Any, timings: Timings, timed: set[str]) -> None:
        self._inner = inner
        self._timings = timings
        self._timed = timed

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._inner, name)
        if name not in self._timed:
            return value

        def call(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return value(*args, **kwargs)
            finally:
                self._timings.add(name, started, time.perf_counter())

        return call


@dataclass
class ScaleResult:
    label: str
    referenced: int
    garbage: int
    counts: dict[str, int]
    status: str
    phases: dict[str, float]
    cpu: dict[str, float]
    timings: Timings
    total: float
    total_cpu: float
    left_in_storage: int


def collect(environ: dict[str, str], label: str, referenced: int, garbage: int) -> ScaleResult:
    """One collection in this process with grace 0, its phases and its calls timed."""
    settings = load_settings(None, None, environ)
    engine = make_engine(settings.resolved_database_url, pool_size=2)
    timings = Timings()
    try:
        metadata = MetadataStore(engine)
        runs = GcRunsStore(engine, timedelta(seconds=settings.gc_lease_seconds))
        storage = make_storage(settings)
        store = Timed(GcStore(engine), timings, {"garbage_blobs", "mark_deleting", "drop_deleted"})
        timed_storage = Timed(storage, timings, {"delete_blobs"})
        collector = build_collector(
            store,  # type: ignore[arg-type]
            runs,
            timed_storage,  # type: ignore[arg-type]
            metadata,
            PromotionStore(engine, metadata),
        )
        options = gc_options_from(settings)
        options = replace(options, grace=timedelta(0))
        actor = Actor(name="bench", kind="system")
        record = collector.start(options, actor, "cli")
        entered: dict[str, tuple[float, float]] = {}

        def progress(_run: GcRun, phase: str, _counts: dict[str, int]) -> None:
            entered.setdefault(phase, (time.perf_counter(), time.process_time()))

        started, started_cpu = time.perf_counter(), time.process_time()
        finished = collector.run(record, options, actor, lambda _event: None, progress)
        ended, ended_cpu = time.perf_counter(), time.process_time()
        marks = [entered.get(phase) for phase in PHASES] + [(ended, ended_cpu)]
        phases: dict[str, float] = {}
        cpu: dict[str, float] = {}
        for index, phase in enumerate(PHASES):
            mark = marks[index]
            if mark is None:
                continue
            following = next(m for m in marks[index + 1 :] if m is not None)
            phases[phase] = following[0] - mark[0]
            cpu[phase] = following[1] - mark[1]
        left = sum(1 for _ in storage.list_blobs())
        return ScaleResult(
            label,
            referenced,
            garbage,
            dict(finished.counts),
            finished.status,
            phases,
            cpu,
            timings,
            total=ended - started,
            total_cpu=ended_cpu - started_cpu,
            left_in_storage=left,
        )
    finally:
        engine.dispose()


def scale_filesystem(workdir: Path, referenced: int, garbage: int) -> ScaleResult:
    data = workdir / "data"
    data.mkdir(parents=True)
    environ = {"MOORAGE_DATA_DIR": str(data)}
    database = f"sqlite+pysqlite:///{data / 'moorage.db'}"
    began = time.perf_counter()
    seed_metadata(database, referenced, garbage)
    seed_files(data / "storage", garbage)
    print(
        f"  seeded the filesystem directory in {time.perf_counter() - began:.0f}s", file=sys.stderr
    )
    return collect(environ, "filesystem", referenced, garbage)


def scale_s3(workdir: Path, referenced: int, garbage: int) -> ScaleResult:
    moto = MotoServer(workdir / "moto")
    moto.start()
    try:
        bucket = moto.create_bucket(f"gcbench-{os.getpid()}")
        data = workdir / "data"
        data.mkdir(parents=True)
        environ = {
            "MOORAGE_DATA_DIR": str(data),
            "MOORAGE_STORAGE": "s3",
            "MOORAGE_S3_BUCKET": bucket,
            "MOORAGE_S3_ENDPOINT": moto.url,
            "MOORAGE_S3_ACCESS_KEY": ACCESS_KEY,
            "MOORAGE_S3_SECRET_KEY": SECRET_KEY,
        }
        began = time.perf_counter()
        seed_metadata(f"sqlite+pysqlite:///{data / 'moorage.db'}", referenced, garbage)
        seed_bucket(moto.url, bucket, garbage)
        print(
            f"  seeded moto and the metadata in {time.perf_counter() - began:.0f}s", file=sys.stderr
        )
        return collect(environ, "S3 (moto)", referenced, garbage)
    finally:
        moto.stop()


def render_scale(results: list[ScaleResult]) -> list[str]:
    lines = [
        "GC at scale (in process, grace 0; SQLite metadata; referenced blobs have rows,",
        "manifests, tags and links but no bytes in storage: GC never touches them)",
        f"{'':34}" + "".join(f"{r.label:>16}" for r in results),
    ]

    def row(name: str, values: list[str]) -> None:
        lines.append(f"{name:34}" + "".join(f"{v:>16}" for v in values))

    row("referenced blobs", [f"{r.referenced:,}" for r in results])
    row("unreferenced blobs (with bytes)", [f"{r.garbage:,}" for r in results])
    row("run status", [r.status for r in results])
    row("blobs deleted", [f"{r.counts.get('blobs', 0):,}" for r in results])
    row("objects left in storage", [f"{r.left_in_storage:,}" for r in results])
    mark = ("leftovers", "untagged", "records", "manifests", "links")
    row(
        "mark s (phases before blobs)",
        [f"{sum(r.phases.get(p, 0.0) for p in mark):.1f}" for r in results],
    )
    row("  CPU s", [f"{sum(r.cpu.get(p, 0.0) for p in mark):.1f}" for r in results])
    row("  of which links s", [f"{r.phases.get('links', 0.0):.1f}" for r in results])
    row("blobs phase s (sweep)", [f"{r.phases.get('blobs', 0.0):.1f}" for r in results])
    row("  CPU s", [f"{r.cpu.get('blobs', 0.0):.1f}" for r in results])
    for name, key in (
        ("  finding candidates s", "garbage_blobs"),
        ("  marking 'deleting' s", "mark_deleting"),
        ("  dropping rows s", "drop_deleted"),
    ):
        row(name, [f"{r.timings.seconds.get(key, 0.0):.1f}" for r in results])
    row("  storage deletes s (wall)", [f"{r.timings.delete_wall():.1f}" for r in results])
    row(
        "orphans phase s (storage listing)",
        [f"{r.phases.get('orphans', 0.0):.1f}" for r in results],
    )
    row("whole run s", [f"{r.total:.1f}" for r in results])
    row("  CPU s (this process)", [f"{r.total_cpu:.1f}" for r in results])
    row(
        "sweep deletes/s (blobs phase)",
        [
            f"{r.counts.get('blobs', 0) / max(r.phases.get('blobs', 0.0), 1e-9):,.0f}"
            for r in results
        ],
    )
    row(
        "sweep deletes per CPU s",
        [f"{r.counts.get('blobs', 0) / max(r.cpu.get('blobs', 0.0), 1e-9):,.0f}" for r in results],
    )
    row(
        "storage deletes/s (wall)",
        [f"{r.counts.get('blobs', 0) / max(r.timings.delete_wall(), 1e-9):,.0f}" for r in results],
    )
    row(
        "deletes/s of the whole run",
        [f"{r.counts.get('blobs', 0) / r.total:,.0f}" for r in results],
    )
    return lines


# -- pushes while a collection runs


class Api:
    """The admin API of a Moorage server (basic authentication, as `moorage` users do)."""

    def __init__(self, server: MoorageServer) -> None:
        self._base = f"{server.url}/api/v1"
        basic = base64.b64encode(f"admin:{server.admin_password}".encode()).decode()
        self._headers = {"Authorization": f"Basic {basic}", "Content-Type": "application/json"}

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        request = urllib.request.Request(  # noqa: S310 - loopback only
            self._base + path,
            data=json.dumps(body).encode() if body is not None else None,
            headers=self._headers,
            method=method,
        )
        with urllib.request.urlopen(request, timeout=60) as reply:  # noqa: S310 - loopback
            return json.loads(reply.read())

    def wait(self, run_id: str, done: Callable[[dict[str, Any]], bool], timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            run = self.call("GET", f"/system/gc/runs/{run_id}")
            if done(run) or time.monotonic() > deadline:
                return run
            time.sleep(0.2)


def _client(server: Server, connections: int = 4) -> RegistryClient:
    credentials = server.credentials
    auth = TokenAuth(*credentials) if credentials else None
    return RegistryClient(server.url, connections=connections, auth=auth)


async def push_for(server: Server, clients: int, seconds: float, label: str) -> tuple[int, int]:
    """`clients` clients each pushing new small images until `seconds` are over: (images
    pushed, failures)."""
    pushed = failed = 0
    deadline = time.monotonic() + seconds

    async def one(index: int) -> None:
        nonlocal pushed, failed
        async with _client(server, 4) as client:
            n = 0
            while time.monotonic() < deadline:
                image = make_image(os.urandom(512), f"{label}-{index}-{n}")
                try:
                    await client.push_image(f"push/c{index}", f"{label}-{n}", image)
                    pushed += 1
                except Exception as error:  # a failure is counted and shown, not fatal
                    failed += 1
                    print(f"  push failed: {error}", file=sys.stderr)
                n += 1

    await asyncio.gather(*(one(k) for k in range(clients)))
    return pushed, failed


_VIA = {
    "api": "through the API (a thread of a server worker)",
    "cli": "with `moorage gc` (a process of its own)",
}


@dataclass
class PushRound:
    gc: bool
    seconds: float
    images: int
    failures: int
    gc_deleted: int = 0
    gc_phase: str = ""


def start_gc(
    api: Api,
    server: MoorageServer,
    via: str,
    resume: str | None,
    processes: list[subprocess.Popen[bytes]],
) -> Any:
    """Start (or resume) a run through the API (in a server worker's thread), or with
    `moorage gc` (a process of its own on the same data directory); its record."""
    if via == "api":
        body: dict[str, Any] = {"resume": resume} if resume else {"graceSeconds": 0}
        return api.call("POST", "/system/gc", body)
    command = [sys.executable, "-m", "moorage", "gc", "--json"]
    command += ["--resume", resume] if resume else ["--grace-seconds", "0"]
    command += ["--data-dir", str(server.workdir / "data")]
    processes.append(
        subprocess.Popen(
            command,
            env=server.environment(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        runs = api.call("GET", "/system/gc/runs?limit=1")
        if runs and runs[0]["status"] == "running" and runs[0]["id"] != resume:
            return runs[0]
        time.sleep(0.2)
    raise RuntimeError("moorage gc did not start a run")


async def bench_push(
    workdir: Path, garbage: int, rounds: int, seconds: float, clients: int, via: str
) -> list[str]:
    server = MoorageServer(workdir / "moorage", workers=2)
    server.start()
    server.stop()
    data = server.workdir / "data"
    began = time.perf_counter()
    seed_metadata(f"sqlite+pysqlite:///{data / 'moorage.db'}", 1000, garbage)
    seed_files(data / "storage", garbage)
    print(
        f"  seeded {garbage:,} garbage blobs in {time.perf_counter() - began:.0f}s", file=sys.stderr
    )
    server.start()
    api = Api(server)
    results: list[PushRound] = []
    run_id: str | None = None
    processes: list[subprocess.Popen[bytes]] = []
    try:
        await push_for(server, clients, 3, "warmup")
        for _ in range(rounds):
            for with_gc in (False, True):
                before = 0
                phase = ""
                if with_gc:
                    run = start_gc(api, server, via, run_id, processes)
                    run_id = run["id"]
                    run = api.wait(
                        run["id"],
                        lambda r: (
                            (r["phase"] == "blobs" and r["counts"].get("blobs", 0) > 0)
                            or r["status"] != "running"
                        ),
                        300,
                    )
                    before = run["counts"].get("blobs", 0)
                started = time.perf_counter()
                images, failures = await push_for(server, clients, seconds, f"r{len(results)}")
                elapsed = time.perf_counter() - started
                deleted = 0
                if with_gc:
                    assert run_id is not None
                    run = api.call("GET", f"/system/gc/runs/{run_id}")
                    deleted = run["counts"].get("blobs", 0) - before
                    phase = run["phase"] if run["status"] == "running" else run["status"]
                    api.call("POST", f"/system/gc/runs/{run_id}/stop")
                    api.wait(run_id, lambda r: r["status"] != "running", 120)
                    for process in processes:
                        process.wait(120)
                    processes.clear()
                results.append(PushRound(with_gc, elapsed, images, failures, deleted, phase))
    finally:
        server.stop()
    lines = [
        f"Push throughput while GC runs (Moorage, filesystem, 2 workers; {clients} clients"
        f" pushing small images of 2 blobs + a tagged manifest; {seconds:.0f} s rounds"
        f" alternating; GC started/resumed {_VIA[via]}, graceSeconds 0, {garbage:,}"
        " garbage blobs)",
        f"{'round':8}{'GC':>5}{'images/s':>10}{'failures':>10}{'GC deletes/s':>14}"
        f"{'GC phase at end':>17}",
    ]
    for index, r in enumerate(results):
        lines.append(
            f"{index:<8}{'yes' if r.gc else 'no':>5}{r.images / r.seconds:10.1f}{r.failures:10}"
            + (f"{r.gc_deleted / r.seconds:14,.0f}{r.gc_phase:>17}" if r.gc else "")
        )
    without = [r.images / r.seconds for r in results if not r.gc]
    with_gc = [r.images / r.seconds for r in results if r.gc]
    pairs = [w / n for n, w in zip(without, with_gc, strict=True)]
    lines.append(
        f"median images/s: without GC {statistics.median(without):.1f}, with GC"
        f" {statistics.median(with_gc):.1f}; median of the rounds' ratios"
        f" {statistics.median(pairs):.2f} (goal >= 0.8)"
    )
    return lines


# -- Distribution's offline collection


def _distribution_blobs(server: DistributionServer) -> int:
    root = server.workdir / "storage/docker/registry/v2/blobs"
    return sum(1 for _ in root.glob("sha256/*/*/data"))


def _moorage_blobs(server: MoorageServer) -> int:
    return sum(1 for _ in (server.workdir / "data/storage/blobs/sha256").glob("*/*"))


async def _push_images(server: Server, images: list[Any]) -> float:
    started = time.perf_counter()
    semaphore = asyncio.Semaphore(8)
    async with _client(server, 16) as client:

        async def one(index: int, image: Any) -> None:
            async with semaphore:
                await client.push_image("gc/app", f"t{index}", image)

        await asyncio.gather(*(one(k, image) for k, image in enumerate(images)))
    return time.perf_counter() - started


def _delete_manifests(server: Server, digests: list[str]) -> None:
    """DELETE each manifest by digest (Moorage: with a token that grants delete)."""
    headers: dict[str, str] = {}
    if isinstance(server, MoorageServer):
        query = urllib.parse.urlencode(
            {"service": "moorage", "scope": "repository:gc/app:pull,push,delete"}
        )
        basic = base64.b64encode(f"admin:{server.admin_password}".encode()).decode()
        request = urllib.request.Request(  # noqa: S310 - loopback only
            f"{server.url}/service/token?{query}", headers={"Authorization": f"Basic {basic}"}
        )
        with urllib.request.urlopen(request, timeout=30) as reply:  # noqa: S310 - loopback
            headers["Authorization"] = f"Bearer {json.loads(reply.read())['token']}"
    for digest in digests:
        request = urllib.request.Request(  # noqa: S310 - loopback only
            f"{server.url}/v2/gc/app/manifests/{digest}", headers=headers, method="DELETE"
        )
        with urllib.request.urlopen(request, timeout=30) as reply:  # noqa: S310 - loopback
            if reply.status != 202:
                raise RuntimeError(f"DELETE {digest}: {reply.status}")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed(command: list[str], environ: dict[str, str] | None = None) -> tuple[float, float, str]:
    """Run a command: its wall seconds, its CPU seconds, its output."""
    started, started_cpu = time.perf_counter(), _children_cpu()
    done = subprocess.run(
        command, capture_output=True, text=True, env=environ, check=False, timeout=1800
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{command[:3]} failed: {done.stderr[-2000:]}")
    return elapsed, _children_cpu() - started_cpu, done.stdout


async def bench_distribution(workdir: Path, count: int) -> list[str]:
    images = [make_image(os.urandom(512), f"dist-{k}") for k in range(count)]
    gone = [image.manifest_digest for image in images[::2]]
    moorage = MoorageServer(workdir / "moorage", workers=2)
    distribution = DistributionServer(workdir / "distribution")
    rows: dict[str, tuple[int, int, float, float]] = {}
    try:
        moorage.start()
        distribution.start()
        for server in (moorage, distribution):
            await _push_images(server, images)
            await asyncio.to_thread(_delete_manifests, server, gone)
        # Distribution: offline, its server stopped first.
        distribution.stop()
        before = _distribution_blobs(distribution)
        config = str(distribution.workdir / "config.yml")
        elapsed, cpu, _ = _timed(
            ["docker-registry", "garbage-collect", config], distribution.environment()
        )
        removed = before - _distribution_blobs(distribution)
        rows["Distribution (offline, stopped)"] = (before, removed, elapsed, cpu)
        # Moorage: online, its server serving; the command's start-up alone, for reference.
        environ = moorage.environment()
        data_dir = str(moorage.workdir / "data")
        elapsed, cpu, _ = _timed([sys.executable, "-m", "moorage", "gc", "--help"], environ)
        rows["  (moorage gc --help: start-up)"] = (0, 0, elapsed, cpu)
        before = _moorage_blobs(moorage)
        elapsed, cpu, out = _timed(
            [
                sys.executable,
                "-m",
                "moorage",
                "gc",
                "--grace-seconds",
                "0",
                "--json",
                "--data-dir",
                data_dir,
            ],
            environ,
        )
        counts = json.loads(out.strip().splitlines()[-1])["counts"]
        removed = before - _moorage_blobs(moorage)
        if removed != counts.get("blobs", 0) + counts.get("orphans", 0):
            print(f"  moorage gc counts {counts} but {removed} files went", file=sys.stderr)
        rows["Moorage (online, serving)"] = (before, removed, elapsed, cpu)
        # The kept images are still whole on Moorage.
        async with _client(moorage, 8) as client:
            for k, image in enumerate(images):
                if k % 2 == 0:
                    continue
                await client.get_manifest("gc/app", f"t{k}", OCI_MANIFEST)
                await client.verify_blob("gc/app", image.layer.digest, image.layer.size)
                await client.verify_blob("gc/app", image.config.digest, image.config.size)
    finally:
        moorage.stop()
        distribution.stop()
    lines = [
        f"Offline vs online GC: {count} small images (a 512-byte layer and a config each)"
        f" pushed to both, {len(gone)} manifests deleted through the API",
        f"{'':34}{'blobs before':>13}{'removed':>9}{'wall s':>9}{'CPU s':>9}",
    ]
    for label, (before, removed, elapsed, cpu) in rows.items():
        lines.append(f"{label:34}{before:13}{removed:9}{elapsed:9.2f}{cpu:9.2f}")
    lines.append(
        "(Distribution stores manifests as blobs too, so it removes 3 per deleted image and"
        " Moorage 2; Moorage's time includes the interpreter's start and migration check;"
        " both are whole processes on a shared machine: the CPU column is what they used;"
        " every kept image was pulled back and digest-verified on Moorage afterwards)"
    )
    return lines


# -- main


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="scale,s3,push,distribution")
    parser.add_argument("--referenced", type=int, default=1_000_000)
    parser.add_argument("--garbage", type=int, default=100_000)
    parser.add_argument("--s3-referenced", type=int, default=1_000_000)
    parser.add_argument("--s3-garbage", type=int, default=20_000)
    parser.add_argument("--push-garbage", type=int, default=150_000)
    parser.add_argument("--push-rounds", type=int, default=3)
    parser.add_argument("--push-seconds", type=float, default=15.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--push-gc", choices=("api", "cli"), default="api")
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--markdown", type=Path, help="also write the results here")
    return parser.parse_args(argv)


@contextlib.contextmanager
def _workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="moorage-bench-gc-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    only = set(args.only.split(","))
    info = environment_info(2)
    lines = [f"{key}: {value}" for key, value in info.items() if key not in ("wrk", "ab")]
    with _workdir() as workdir:
        scale: list[ScaleResult] = []
        if "scale" in only:
            scale.append(scale_filesystem(workdir / "fs", args.referenced, args.garbage))
        if "s3" in only:
            scale.append(scale_s3(workdir / "s3", args.s3_referenced, args.s3_garbage))
        if scale:
            lines += ["", *render_scale(scale)]
            print("\n".join(lines[-20:]), file=sys.stderr)
        if "push" in only:
            lines += [
                "",
                *asyncio.run(
                    bench_push(
                        workdir / "push",
                        args.push_garbage,
                        args.push_rounds,
                        args.push_seconds,
                        args.clients,
                        args.push_gc,
                    )
                ),
            ]
        if "distribution" in only:
            lines += ["", *asyncio.run(bench_distribution(workdir / "dist", args.images))]
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        args.markdown.write_text(f"```\n{text}\n```\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
