"""Running the online garbage collector from tests, through its API (see docs/lifecycle.md):
`POST /api/v1/system/gc` starts a run, `GET /api/v1/system/gc/runs/{id}` reports it.

Through haproxy, a request may be refused by haproxy itself (503, no node passing its health
check for a moment on a busy machine): it reached no node, so it is sent again."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.support.auth import ADMIN_PASSWORD, ADMIN_USER
from tests.support.wait import wait_until

GC_PATH = "/api/v1/system/gc"
# A run's `status`: running until one of these.
SUCCEEDED = frozenset({"finished"})
UNSUCCESSFUL = frozenset({"failed", "stopped", "interrupted"})
# The phase that deletes blobs from storage (the sweep), and the one after it.
SWEEP_PHASES = frozenset({"blobs", "orphans"})
# A run that takes longer than this is a hang, not a slow machine.
RUN_TIMEOUT = 600.0

RunGc = Callable[[str], dict[str, Any]]


def gc_environment(grace_seconds: int) -> dict[str, str]:
    """Server settings for a collector under stress: a short grace period, so blobs a
    workload drops become garbage within the run (and fresh ones are still protected); small
    batches, so a run interleaves with the clients' pushes (and a sweep lasts long enough to
    be caught mid-way); a short lease, so a run whose node was killed is taken over soon."""
    return {
        "MOORAGE_GC_GRACE_SECONDS": str(grace_seconds),
        "MOORAGE_GC_BATCH_SIZE": "10",
        "MOORAGE_GC_LEASE_SECONDS": "5",
    }


def _api(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, auth=(ADMIN_USER, ADMIN_PASSWORD), timeout=60)


def _refused_by_proxy(response: httpx.Response) -> bool:
    """haproxy's own 503 (every Moorage response names its server)."""
    return response.status_code == 503 and response.headers.get("Server") != "moorage"


def run_state(run: dict[str, Any]) -> str:
    return str(run["status"])


def start_gc(url: str, *, delete_untagged: bool = False) -> str:
    """Start a run on the node at `url`; its id. While another run holds the deployment's
    lock (409), wait for that one to end and try again."""

    def started() -> str | None:
        with _api(url) as api:
            response = api.post(GC_PATH, json={"dryRun": False, "deleteUntagged": delete_untagged})
        if response.status_code == 409 or _refused_by_proxy(response):
            return None
        assert response.status_code == 202, response.text
        return str(response.json()["id"])

    return wait_until(started, RUN_TIMEOUT, "another GC run to end", interval=0.2)


def get_run(url: str, run_id: str) -> dict[str, Any]:
    def answered() -> httpx.Response | None:
        with _api(url) as api:
            response = api.get(f"{GC_PATH}/runs/{run_id}")
        return None if _refused_by_proxy(response) else response

    response = wait_until(answered, RUN_TIMEOUT, f"an answer about GC run {run_id}", interval=0.2)
    assert response.status_code == 200, response.text
    run: dict[str, Any] = response.json()
    return run


def run_gc(url: str) -> dict[str, Any]:
    """One complete GC run (no untagged-manifest deletion); its final report. Fails unless
    the run succeeded."""
    run_id = start_gc(url)

    def finished() -> dict[str, Any] | None:
        run = get_run(url, run_id)
        return run if run_state(run) in SUCCEEDED | UNSUCCESSFUL else None

    run = wait_until(finished, RUN_TIMEOUT, f"GC run {run_id} to finish", interval=0.2)
    assert run_state(run) in SUCCEEDED, run
    return run


def is_sweeping(run: dict[str, Any]) -> bool:
    """Whether a running run is deleting blobs (for killing its node mid-sweep)."""
    if run_state(run) != "running":
        return False
    return run["phase"] in SWEEP_PHASES or int(run["counts"].get("blobs", 0)) > 0


@dataclass
class GcLoop:
    """Runs GC back to back in a thread until stopped; keeps each run's report and any
    error (a failed run is an error: the test fails on it)."""

    url: str
    run: RunGc = run_gc
    runs: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.runs.append(self.run(self.url))
            except Exception as error:  # reported by the test
                self.errors.append(repr(error))
                return

    def __enter__(self) -> GcLoop:
        self._thread = threading.Thread(target=self._loop, name="gc-loop", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(RUN_TIMEOUT)
