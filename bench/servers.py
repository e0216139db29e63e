"""Start and stop the two registries under test, and sample their memory and CPU.

Both servers run from their own temporary directory on a free loopback port, in their own
session (so a Ctrl-C in the terminal reaches only the benchmark, which then stops them), and
are stopped with SIGTERM, then SIGKILL for anything left, including forked workers.

Moorage runs with its default token authentication: its `admin` account gets a password
generated for the run, and `MoorageServer.start` checks the docker token flow end to end before
the benchmark begins. Distribution runs without authentication (see docs/performance.md).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path

import psutil

LOOPBACK = "127.0.0.1"
MiB = 1 << 20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


class ServerError(RuntimeError):
    """A server failed to start or died during the run."""


@dataclass
class Server:
    """One registry process tree: a name for the table, a command, a port, a work directory."""

    workdir: Path
    label: str = "server"
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    # pid -> creation time, so a recycled pid is never mistaken for one of ours
    known: dict[int, float] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def credentials(self) -> tuple[str, str] | None:
        """(username, password) the client signs in with, or None: no authentication."""
        return None

    @property
    def authentication(self) -> str:
        """How clients authenticate, for the report header."""
        return "none"

    @property
    def log_path(self) -> Path:
        return self.workdir / "server.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def prepare(self) -> None:
        """Write whatever the server needs in its work directory before it starts."""

    def start(self, timeout: float = 60.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.prepare()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                env=self.environment(),
                start_new_session=True,
            )
        self._remember(self.process.pid)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(
                    f"{self.label} exited with {self.process.returncode}:\n{self.logs()}"
                )
            if _ping(f"{self.url}/v2/"):
                self.remember_children()
                return
            time.sleep(0.05)
        raise ServerError(f"{self.label} did not answer in {timeout:.0f}s:\n{self.logs()}")

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    def _remember(self, pid: int) -> None:
        with contextlib.suppress(psutil.Error):
            self.known.setdefault(pid, psutil.Process(pid).create_time())

    def remember_children(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.process.pid).children(recursive=True):
                self._remember(child.pid)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def logs(self, tail: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, wait, then SIGKILL every process of the tree that is still there."""
        if self.process is None:
            return
        self.remember_children()
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout)
        for pid, created in self.known.items():
            _kill_if_ours(pid, created)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)
        self.process = None


def _kill_if_ours(pid: int, created: float) -> None:
    with contextlib.suppress(psutil.Error, ProcessLookupError):
        process = psutil.Process(pid)
        # A pid can be recycled once our process is gone: kill only the very process we started.
        if process.create_time() == created and process.status() != psutil.STATUS_ZOMBIE:
            process.kill()


@dataclass
class DistributionServer(Server):
    """CNCF Distribution 2.8 as packaged by Debian (`docker-registry`)."""

    label: str = "Distribution"

    def prepare(self) -> None:
        storage = self.workdir / "storage"
        storage.mkdir(exist_ok=True)
        # The Debian default configuration, minus auth and health checks, quiet logs.
        config = f"""version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: {LOOPBACK}:{self.port}
"""
        (self.workdir / "config.yml").write_text(config)

    def command(self) -> list[str]:
        return ["docker-registry", "serve", str(self.workdir / "config.yml")]

    def environment(self) -> dict[str, str]:
        environment = dict(os.environ)
        # Distribution reads REGISTRY_* variables as configuration overrides.
        return {k: v for k, v in environment.items() if not k.startswith("REGISTRY_")}


@dataclass
class MoorageServer(Server):
    label: str = "Moorage"
    workers: int = 2
    admin_password: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)
    challenge: str = ""  # the WWW-Authenticate of an anonymous GET /v2/, once checked

    @property
    def credentials(self) -> tuple[str, str] | None:
        return ("admin", self.admin_password)

    @property
    def authentication(self) -> str:
        if not self.challenge:
            return "token authentication (not checked yet)"
        return f"token authentication on ({self.challenge}; the client signs in as admin)"

    def start(self, timeout: float = 60.0) -> None:
        super().start(timeout)
        self.check_token_auth()

    def check_token_auth(self) -> None:
        """Anonymous /v2/ must be challenged, and a token from the realm must open it."""
        status, headers, _ = _get(f"{self.url}/v2/")
        challenge = headers.get("WWW-Authenticate", "")
        if status != 401 or not challenge.lower().startswith("bearer "):
            raise ServerError(
                f"{self.label}: expected a 401 Bearer challenge on /v2/, got {status} {challenge!r}"
            )
        params = dict(_PARAM_RE.findall(challenge))
        if "realm" not in params:
            raise ServerError(f"{self.label}: challenge without a realm: {challenge!r}")
        query = urllib.parse.urlencode(
            {"service": params.get("service", ""), "scope": "registry:catalog:*"}
        )
        raw = f"admin:{self.admin_password}".encode()
        basic = "Basic " + base64.b64encode(raw).decode()
        status, _, body = _get(f"{params['realm']}?{query}", {"Authorization": basic})
        if status != 200:
            raise ServerError(f"{self.label}: token request as admin got {status}: {body[:300]!r}")
        token = json.loads(body)["token"]
        status, _, body = _get(f"{self.url}/v2/", {"Authorization": f"Bearer {token}"})
        if status != 200:
            raise ServerError(f"{self.label}: /v2/ with a token got {status}: {body[:300]!r}")
        path = urllib.parse.urlsplit(params["realm"]).path
        self.challenge = f"Bearer tokens from {path}, service {params.get('service')!r}"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "moorage",
            "serve",
            "--listen",
            f"{LOOPBACK}:{self.port}",
            "--data-dir",
            str(self.workdir / "data"),
            "--workers",
            str(self.workers),
            "--log-level",
            "WARNING",
        ]

    def environment(self) -> dict[str, str]:
        environment = {k: v for k, v in os.environ.items() if not k.startswith("MOORAGE_")}
        # Read once, when the first start creates the admin account in the fresh data directory.
        environment["MOORAGE_ADMIN_PASSWORD"] = self.admin_password
        return environment


_PARAM_RE = re.compile(r'(\w+)="([^"]*)"')


def _get(
    url: str, headers: dict[str, str] | None = None, timeout: float = 5.0
) -> tuple[int, Message, bytes]:
    """GET on loopback: status, headers and body, whatever the status."""
    request = urllib.request.Request(url, headers=headers or {})  # noqa: S310 - loopback only
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:  # noqa: S310 - loopback
            return reply.status, reply.headers, reply.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def _ping(url: str) -> bool:
    """The server answers /v2/: 200, or 401 when it requires authentication."""
    try:
        status, _, _ = _get(url, timeout=1.0)
    except (urllib.error.URLError, OSError):
        return False
    return status in (200, 401)


# -- sampling


@dataclass
class ProcessPeak:
    pid: int
    role: str  # "main" or "worker"
    peak_rss: int = 0


@dataclass
class ServerUsage:
    """Peak RSS per process (over the whole run) and peak total RSS per phase."""

    processes: dict[int, ProcessPeak] = field(default_factory=dict)
    phase_peaks: dict[str, int] = field(default_factory=dict)
    # PSS splits pages shared between forked processes, so its sum is the real footprint.
    peak_pss_total: int = 0

    def peak_total(self) -> int:
        """Sum of each process's own peak (an upper bound on the simultaneous total)."""
        return sum(p.peak_rss for p in self.processes.values())

    def peak_worker(self) -> int:
        workers = [p.peak_rss for p in self.processes.values() if p.role == "worker"]
        if not workers:  # a single-process server is its own worker
            workers = [p.peak_rss for p in self.processes.values()]
        return max(workers, default=0)

    def peak_workers_sum(self) -> int:
        workers = [p.peak_rss for p in self.processes.values() if p.role == "worker"]
        return sum(workers) if workers else self.peak_total()


class Sampler:
    """Polls RSS of every process of each server every `interval` seconds in a thread."""

    def __init__(self, servers: list[Server], interval: float = 0.1) -> None:
        self._servers = servers
        self._interval = interval
        self._usage = {server.label: ServerUsage() for server in servers}
        self._phase = "startup"
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._tree: dict[str, list[psutil.Process]] = {}
        self._tree_age = 0.0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def set_phase(self, phase: str) -> None:
        with self._lock:
            self._phase = phase

    def usage(self, label: str) -> ServerUsage:
        with self._lock:
            return self._usage[label]

    def _refresh_tree(self) -> None:
        self._tree = {}
        for server in self._servers:
            if server.process is None:
                continue
            try:
                main = psutil.Process(server.process.pid)
                self._tree[server.label] = [main, *main.children(recursive=True)]
            except psutil.Error:
                self._tree[server.label] = []
            server.remember_children()
        self._tree_age = time.monotonic()

    def _run(self) -> None:
        while not self._stop.is_set():
            if time.monotonic() - self._tree_age > 1.0:
                self._refresh_tree()
            self.sample_once()
            self._stop.wait(self._interval)

    def sample_once(self) -> None:
        for server in self._servers:
            main_pid = server.process.pid if server.process is not None else -1
            total = 0
            pss_total = 0
            readings: list[tuple[int, int]] = []
            for process in self._tree.get(server.label, []):
                try:
                    memory = process.memory_full_info()
                except psutil.Error:
                    continue
                readings.append((process.pid, memory.rss))
                total += memory.rss
                pss_total += getattr(memory, "pss", memory.rss)
            with self._lock:
                usage = self._usage[server.label]
                for pid, rss in readings:
                    peak = usage.processes.get(pid)
                    if peak is None:
                        role = "main" if pid == main_pid else "worker"
                        peak = usage.processes[pid] = ProcessPeak(pid, role)
                    peak.peak_rss = max(peak.peak_rss, rss)
                usage.phase_peaks[self._phase] = max(usage.phase_peaks.get(self._phase, 0), total)
                usage.peak_pss_total = max(usage.peak_pss_total, pss_total)


def cpu_seconds(server: Server) -> float:
    """User+system CPU time of the server's live processes (workers included)."""
    if server.process is None:
        return 0.0
    total = 0.0
    try:
        main = psutil.Process(server.process.pid)
        processes = [main, *main.children(recursive=True)]
    except psutil.Error:
        return 0.0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            total += times.user + times.system
    return total


# -- environment


def _first_line(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else "unavailable"


def environment_info(workers: int) -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    from moorage import __version__ as moorage_version

    try:
        import aiohttp

        aiohttp_version = aiohttp.__version__
    except ImportError:
        aiohttp_version = "missing"
    repository = Path(__file__).resolve().parent.parent
    commit = _first_line(["git", "-C", str(repository), "rev-parse", "--short", "HEAD"])
    dirty = _first_line(["git", "-C", str(repository), "status", "--porcelain", "--", "src"])
    source = f"git {commit}" + (" + uncommitted changes in src/" if dirty != "unavailable" else "")
    memory = psutil.virtual_memory().total / (1 << 30)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return {
        "CPU": f"{cpu} ({os.cpu_count()} cores), {memory:.1f} GiB RAM",
        "OS": f"{platform.system()} {platform.release()}",
        "Python": platform.python_version(),
        "Distribution": _first_line(["docker-registry", "--version"]),
        "Moorage": f"{moorage_version}, {source} (--workers {workers}, aiohttp {aiohttp_version})",
        "Load average at start": load,
        "wrk": _first_line(["wrk", "--version"]) if shutil.which("wrk") else "missing",
        "ab": _first_line(["ab", "-V"]) if shutil.which("ab") else "missing",
    }
