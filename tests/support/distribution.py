"""Start Debian's `docker-registry` (CNCF Distribution) as an upstream for proxy tests."""

from __future__ import annotations

import contextlib
import re
import shutil
import ssl
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support.processes import kill_group, spawn, terminate
from tests.support.server import free_port
from tests.support.wait import wait_until

BINARY = shutil.which("docker-registry") or "/usr/bin/docker-registry"


def available() -> bool:
    return Path(BINARY).exists()


def htpasswd_line(username: str, password: str) -> str:
    """A bcrypt htpasswd entry (Distribution accepts only bcrypt)."""
    tool = shutil.which("htpasswd")
    if tool is not None:
        out = subprocess.run(
            [tool, "-nbB", username, password], check=True, capture_output=True, text=True
        )
        return out.stdout.strip()
    import bcrypt

    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()
    return f"{username}:{hashed}"


@dataclass
class Distribution:
    """One docker-registry process on a free loopback port, its access log in a file."""

    directory: Path
    users: dict[str, str] = field(default_factory=dict)  # htpasswd auth when not empty
    # HTTPS: (certificate, key, CA bundle that client certificates must chain to, or None)
    tls: tuple[Path, Path, Path | None] | None = None
    # what readiness checks and `client()` present: (CA bundle, client cert, client key)
    client_tls: tuple[Path, Path, Path] | None = None
    port: int = field(default_factory=free_port)
    delete_enabled: bool = True  # False: DELETE of manifests answers 405 UNSUPPORTED
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.directory / "registry.log"

    def start(self, timeout: float = 60.0) -> Distribution:
        self.directory.mkdir(parents=True, exist_ok=True)
        auth = ""
        if self.users:
            htpasswd = self.directory / "htpasswd"
            htpasswd.write_text("".join(htpasswd_line(u, p) + "\n" for u, p in self.users.items()))
            auth = f"auth:\n  htpasswd:\n    realm: upstream\n    path: {htpasswd}\n"
        tls = ""
        if self.tls is not None:
            cert, key, client_ca = self.tls
            tls = f"  tls:\n    certificate: {cert}\n    key: {key}\n"
            if client_ca is not None:
                tls += f"    clientcas:\n      - {client_ca}\n"
        config = self.directory / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: false\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.directory / 'data'}\n"
            f"  delete:\n    enabled: {'true' if self.delete_enabled else 'false'}\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n"
            f"{tls}"
            f"{auth}"
        )
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
        self.process = spawn([BINARY, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        try:
            wait_until(self._started, timeout, lambda: f"docker-registry to start:\n{self.logs()}")
        except BaseException:
            self.stop()
            raise
        return self

    def _started(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"docker-registry exited:\n{self.logs()}")
        try:
            with self.client() as client:
                return client.get("/v2/", timeout=1).status_code in (200, 401)
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.process is None:
            return
        process, self.process = self.process, None
        # On a timeout the group has been killed, which is what the caller wanted.
        with contextlib.suppress(subprocess.TimeoutExpired):
            terminate(process, timeout=10)

    def kill(self) -> None:
        if self.process is not None:
            process, self.process = self.process, None
            kill_group(process)

    def __enter__(self) -> Distribution:
        return self if self.process is not None else self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def requests(self, method: str, path: str, status: int | None = 200) -> int:
        """How many `method path` requests the access log shows with `status` (None: any)."""
        pattern = re.compile(rf'"{method} {re.escape(path)}(?:\?[^ ]*)? HTTP/1\.1" (\d+)')
        found = pattern.findall(self.logs())
        return sum(1 for code in found if status is None or int(code) == status)

    def client(self) -> httpx.Client:
        auth = next(iter(self.users.items()), None)
        if self.client_tls is None:
            return httpx.Client(base_url=self.url, timeout=60, auth=auth)
        bundle, cert, key = self.client_tls
        context = ssl.create_default_context(cafile=str(bundle))
        context.load_cert_chain(cert, key)
        return httpx.Client(base_url=self.url, timeout=60, auth=auth, verify=context)
