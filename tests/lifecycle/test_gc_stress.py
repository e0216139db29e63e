"""Online garbage collection under load (issue 13): GC runs in a loop while eight clients push,
re-push, mount, tag, delete and pull (tests/support/workload.py), on the filesystem, on S3 and
on two nodes; afterwards every manifest pulls with every blob digest-verified, nothing the
ledger holds is missing, and a final GC leaves no orphan in storage
(tests/support/invariants.py). Repeated with `kill -9` of the node running GC mid-sweep.

The harness is proven without a collector too: on a healthy registry it reports nothing, and
it reports a blob file removed behind the registry's back, a stray blob, a lost tag or referrer.

Bounded in time and in operations, never timed: GC_STRESS_SECONDS (default 120) and
GC_STRESS_OPERATIONS bound the GC runs; GC_STRESS_HARNESS_SECONDS the runs without GC.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.auth import RegistryAuth
from tests.support.cluster import Cluster
from tests.support.gc import (
    RUN_TIMEOUT,
    SUCCEEDED,
    UNSUCCESSFUL,
    GcLoop,
    RunGc,
    gc_environment,
    get_run,
    is_sweeping,
    run_gc,
    run_state,
    start_gc,
)
from tests.support.invariants import BlobListing, Report, blob_listing, check_registry
from tests.support.server import RegistryProcess, storage_environment_for
from tests.support.services import PostgresServer, RedisServer, S3Server
from tests.support.tools import require_tool
from tests.support.wait import wait_until
from tests.support.workload import Image, Ledger, Workload, WorkloadResult

STRESS_SECONDS = float(os.environ.get("GC_STRESS_SECONDS", "120"))
STRESS_OPERATIONS = int(os.environ.get("GC_STRESS_OPERATIONS", "12000"))
HARNESS_SECONDS = float(os.environ.get("GC_STRESS_HARNESS_SECONDS", "20"))
HARNESS_OPERATIONS = int(os.environ.get("GC_STRESS_HARNESS_OPERATIONS", "480"))
# Short, so what the workload drops becomes garbage during the run (and the final GC does not
# wait long for it), while a blob just uploaded or mounted is still protected by it.
GRACE_SECONDS = 2
SEED = 13
TARGETS = ("filesystem", "s3", "two-nodes")

_runs = itertools.count()


@dataclass
class Target:
    """A registry under test: its address, its storage read directly, its nodes."""

    url: str
    storage: BlobListing
    nodes: list[RegistryProcess]
    cluster: Cluster | None = None


class Services:
    """PostgreSQL, Redis and S3 for the module, each started on first use."""

    def __init__(self, stack: ExitStack) -> None:
        self._stack = stack
        self._postgres: PostgresServer | None = None
        self._redis: RedisServer | None = None
        self._s3: S3Server | None = None

    @property
    def postgres(self) -> PostgresServer:
        if self._postgres is None:
            self._postgres = self._stack.enter_context(PostgresServer())
        return self._postgres

    @property
    def redis(self) -> RedisServer:
        if self._redis is None:
            self._redis = self._stack.enter_context(RedisServer())
        return self._redis

    @property
    def s3(self) -> S3Server:
        if self._s3 is None:
            self._s3 = self._stack.enter_context(S3Server())
        return self._s3


@pytest.fixture(scope="module")
def services() -> Iterator[Services]:
    with ExitStack() as stack:
        yield Services(stack)


def start_target(kind: str, root: Path, services: Services) -> Target:
    """A fresh registry of `kind` (so the orphan check sees only this test's content), with
    the collector's settings when this build has one."""
    env = gc_environment(GRACE_SECONDS)
    if kind == "two-nodes":
        require_tool("haproxy", "redis-server")
        cluster = Cluster(root, services.postgres, services.redis, services.s3, extra_env=env)
        cluster.start()
        # Without the S3 driver each node's data/storage is the one shared directory.
        listing = blob_listing(cluster.env, root / "nodea" / "data")
        return Target(cluster.url, listing, cluster.nodes, cluster)
    data_dir = root / "data"
    environment = dict(env)
    if kind == "s3":
        s3 = services.s3
        environment.update(
            {
                "MOORAGE_STORAGE": "s3",
                "MOORAGE_S3_BUCKET": s3.create_bucket(f"stress-{os.getpid()}-{next(_runs)}"),
                "MOORAGE_S3_ENDPOINT": s3.endpoint,
                "MOORAGE_S3_REGION": s3.region,
                "MOORAGE_S3_ACCESS_KEY": s3.access_key,
                "MOORAGE_S3_SECRET_KEY": s3.secret_key,
            }
        )
    else:
        environment["MOORAGE_STORAGE"] = "filesystem"
    server = RegistryProcess(data_dir, workers=2, env=environment).start()
    effective = {**storage_environment_for(data_dir), **environment}
    return Target(server.url, blob_listing(effective, data_dir), [server])


def stop_target(target: Target) -> None:
    if target.cluster is not None:
        target.cluster.stop()
    for node in target.nodes:
        node.kill()


@pytest.fixture(params=TARGETS)
def target(request: pytest.FixtureRequest, tmp_path: Path, services: Services) -> Iterator[Target]:
    made = start_target(str(request.param), tmp_path, services)
    try:
        yield made
    finally:
        stop_target(made)


@pytest.fixture
def gc() -> RunGc:
    """How a test runs one complete garbage collection on a registry address."""
    return run_gc


def workload(target: Target, seconds: float, operations: int) -> Workload:
    return Workload(
        target.url, seconds, operations, seed=SEED, run_id=f"{os.getpid()}x{next(_runs)}"
    )


def assert_clean(result: WorkloadResult, target: Target, *, node_killed: bool = False) -> None:
    """No failure. No interrupted request either, except that on two nodes haproxy may find
    no node passing its health check for a moment on a busy machine (503); and anything,
    when a node was killed."""
    assert result.failures == [], "\n".join(result.failures[:50])
    assert result.ledger.manifests, result.stats
    if node_killed:
        return
    interruptions = {k: n for k, n in result.stats.items() if k.startswith("interrupted:")}
    if target.cluster is not None:
        interruptions.pop("interrupted:proxy-503", None)
    assert interruptions == {}, (result.stats, result.interruptions)


def assert_holds(report: Report) -> None:
    assert report.problems == [], "\n".join(report.problems[:50])


# -- the harness on a healthy registry, and that its checks bite


def test_workload_and_invariants_hold_without_gc(target: Target) -> None:
    result = workload(target, HARNESS_SECONDS, HARNESS_OPERATIONS).run()
    assert_clean(result, target)
    report = check_registry(target.url, result.ledger, target.storage)
    assert_holds(report)
    # Without a collector, storage holds what manifests reference plus what the workload
    # dropped (deleted manifests' blobs), and nothing it never uploaded.
    assert report.orphans <= result.ledger.uploaded
    print(
        f"{target.url}: {result.operations} operations in {result.seconds:.1f}s,"
        f" {dict(result.stats)}; checked {report.manifests_checked} manifests,"
        f" {report.blobs_checked} blobs; {len(report.orphans)} dropped blobs"
    )


def test_checker_reports_what_went_wrong(target: Target) -> None:
    """The checks bite: on one small healthy run, each kind of damage is reported (the
    ledger's claims first, then storage changed behind the registry's back)."""
    result = workload(target, HARNESS_SECONDS, 80).run()
    assert_clean(result, target)
    ledger = result.ledger
    assert_holds(check_registry(target.url, ledger, target.storage))
    lost_tag_and_undeleted_manifest(target, ledger)
    phantom_referrer(target, ledger)
    unknown_tag(target, ledger)

    stray = target.storage.add(f"stray blob {os.getpid()}/{next(_runs)}".encode())
    report = check_registry(target.url, ledger, target.storage)
    assert_holds(report)
    assert stray in report.orphans
    assert stray not in ledger.uploaded

    victim = sorted(report.referenced)[0]
    target.storage.remove(victim)
    report = check_registry(target.url, ledger, target.storage)
    assert any(victim in problem and "not in storage" in problem for problem in report.problems)
    assert any(victim in problem and "does not pull" in problem for problem in report.problems)


def lost_tag_and_undeleted_manifest(target: Target, ledger: Ledger) -> None:
    """A ledger that remembers a tag the registry never had, and a deletion that did not
    happen."""
    (repository, _), digest = sorted(ledger.tags.items())[0]
    lost = {**ledger.tags, (repository, "never-pushed"): digest}
    undeleted = (repository, digest)
    claims = Ledger(ledger.manifests, lost, {*ledger.deleted, undeleted}, ledger.uploaded)
    report = check_registry(target.url, claims, target.storage, pull_blobs=False)
    assert f"tag {repository}:never-pushed is missing" in report.problems
    assert any(p.startswith(f"deleted manifest {repository}@{digest}") for p in report.problems)


def phantom_referrer(target: Target, ledger: Ledger) -> None:
    """A referrer the registry never had, of an image it has."""
    repository, subject = next(
        key
        for key, image in sorted(ledger.manifests.items())
        if not image.children and not image.subject
    )
    phantom = Image(f"phantom of {subject}".encode(), (), subject=subject)
    manifests = {**ledger.manifests, (repository, phantom.digest): phantom}
    report = check_registry(
        target.url, Ledger(manifests, dict(ledger.tags)), target.storage, pull_blobs=False
    )
    assert any(p.startswith(f"referrers of {repository}@{subject}") for p in report.problems)
    assert any(
        p.startswith(f"manifest {repository}:{phantom.digest} does not pull")
        for p in report.problems
    )


def unknown_tag(target: Target, ledger: Ledger) -> None:
    """A registry tag the ledger does not know of."""
    repository, tag = sorted(ledger.tags)[0]
    untagged = Ledger(manifests=dict(ledger.manifests), uploaded=set(ledger.uploaded))
    report = check_registry(target.url, untagged, target.storage, pull_blobs=False)
    assert f"tag {repository}:{tag} exists but the ledger has none" in report.problems


@pytest.mark.tools("haproxy", "redis-server")
def test_clients_ride_out_a_node_killed_mid_run(two_nodes: Target) -> None:
    """The client side of the kill -9 variant, without GC: node a dies with SIGKILL while the
    clients work through haproxy; requests it cut are retried, and afterwards (node a back)
    everything the ledger holds is whole."""
    assert two_nodes.cluster is not None
    victim = two_nodes.cluster.a
    clients = workload(two_nodes, HARNESS_SECONDS * 3, HARNESS_OPERATIONS)
    outcome: list[WorkloadResult] = []
    runner = threading.Thread(target=lambda: outcome.append(clients.run()), name="stress-workload")
    runner.start()
    try:
        wait_until(lambda: clients.completed >= HARNESS_OPERATIONS // 4, 300, "clients at work")
        victim.kill()
    finally:
        runner.join()
    victim.start()
    [result] = outcome
    assert_clean(result, two_nodes, node_killed=True)
    report = check_registry(two_nodes.url, result.ledger, two_nodes.storage)
    assert_holds(report)
    assert report.orphans <= result.ledger.uploaded
    print(f"{result.operations} operations, {dict(result.stats)}")


# -- online GC under load


def final_gc_leaves_no_orphan(url: str, storage: BlobListing, ledger: Ledger, gc: RunGc) -> Report:
    """After the workload: GC until what the workload dropped is past the grace period and
    collected (each run must succeed); then every invariant, and no orphan."""

    def collected() -> bool:
        gc(url)
        report = check_registry(url, ledger, storage, pull_blobs=False)
        return bool(report.problems) or not report.orphans

    wait_until(collected, 600, "a final GC to leave no orphan", interval=GRACE_SECONDS)
    report = check_registry(url, ledger, storage)
    assert_holds(report)
    assert report.orphans == set()
    return report


def stress(target: Target, gc: RunGc, gc_url: str | None = None) -> WorkloadResult:
    with GcLoop(gc_url or target.url, gc) as loop:
        result = workload(target, STRESS_SECONDS, STRESS_OPERATIONS).run()
    assert loop.errors == [], loop.errors
    assert loop.runs, "no GC run completed during the workload"
    freed = Counter[str]()
    for run in loop.runs:
        freed.update(run.get("counts", {}))
    print(
        f"{target.url}: {result.operations} operations in {result.seconds:.1f}s with"
        f" {len(loop.runs)} GC runs; clients {dict(result.stats)}; GC {dict(freed)}"
    )
    return result


@pytest.mark.slow
def test_online_gc_under_concurrent_clients(target: Target, gc: RunGc) -> None:
    result = stress(target, gc)
    assert_clean(result, target)
    final_gc_leaves_no_orphan(target.url, target.storage, result.ledger, gc)


@pytest.fixture
def two_nodes(tmp_path: Path, services: Services) -> Iterator[Target]:
    made = start_target("two-nodes", tmp_path, services)
    try:
        yield made
    finally:
        stop_target(made)


def delete_all(url: str, ledger: Ledger) -> None:
    """Delete every manifest of the ledger, indexes before the children they list."""
    order = sorted(ledger.manifests, key=lambda key: (not ledger.manifests[key].children, key))
    with httpx.Client(base_url=url, auth=RegistryAuth(), timeout=60) as http:
        for repository, digest in order:
            response = http.delete(f"/v2/{repository}/manifests/{digest}")
            assert response.status_code == 202, response.text


@pytest.mark.slow
@pytest.mark.tools("haproxy", "redis-server")
def test_gc_node_killed_mid_sweep(two_nodes: Target, gc: RunGc) -> None:
    """Node a runs GC and is killed with SIGKILL while it sweeps; clients (through haproxy)
    carry on with node b, GC carries on there, node a comes back, and a final GC still leaves
    every manifest whole and no orphan."""
    target = two_nodes
    assert target.cluster is not None
    gc_node, other = target.cluster.a, target.cluster.b
    # Garbage to sweep: images pushed and deleted before the clients start.
    garbage = workload(target, HARNESS_SECONDS, 400).run()
    assert_clean(garbage, target)
    delete_all(target.url, garbage.ledger)

    clients = workload(target, STRESS_SECONDS, STRESS_OPERATIONS)
    outcome: list[WorkloadResult] = []
    runner = threading.Thread(target=lambda: outcome.append(clients.run()), name="stress-workload")
    runner.start()
    after_kill: list[dict[str, Any]] = []
    try:
        killed = kill_when_sweeping(gc_node)
        # GC goes on on the surviving node while the clients are still running.
        while runner.is_alive():
            after_kill.append(gc(other.url))
    finally:
        clients.stop.set()  # only matters when this test failed early
        runner.join()
    gc_node.start()
    [result] = outcome
    assert_clean(result, two_nodes, node_killed=True)
    ledger = Ledger()
    ledger.merge(result.ledger)
    ledger.deleted |= set(garbage.ledger.manifests) - set(ledger.manifests)
    final_gc_leaves_no_orphan(target.url, target.storage, ledger, gc)
    # The run that died with its node does not count as running any more.
    assert run_state(get_run(target.url, killed)) != "running"
    print(
        f"killed {killed} mid-sweep; {len(after_kill)} runs on the other node meanwhile;"
        f" clients {dict(result.stats)}; samples {result.interruptions[:3]}"
    )


def kill_when_sweeping(node: RegistryProcess) -> str:
    """Start GC runs on `node` until one is seen sweeping, then kill -9 the node; that run's
    id."""
    killed: list[str] = []

    def sweeping_run_killed() -> bool:
        run_id = start_gc(node.url)

        def seen() -> str | None:
            run = get_run(node.url, run_id)
            if is_sweeping(run):
                return "sweeping"
            return "ended" if run_state(run) in SUCCEEDED | UNSUCCESSFUL else None

        if wait_until(seen, RUN_TIMEOUT, f"GC run {run_id} to sweep or end") == "sweeping":
            node.kill()
            killed.append(run_id)
            return True
        return False

    wait_until(sweeping_run_killed, RUN_TIMEOUT, "a GC run seen sweeping", interval=0)
    return killed[0]
