"""Blob transfer benchmarks of the storage drivers, each side by side in one run.

    python bench/storage.py [--only fastpath,s3] [--fast-mib 1024] [--fast-rounds 9]
                            [--s3-mib 64] [--rounds 3]

fastpath: a single-stream pull of one large blob from Moorage (filesystem driver) against a bare
          aiohttp FileResponse serving the very same file (goal: >= 0.9x). One pull takes a
          fraction of a second on two cores, so single rounds swing by a third: the verdict is
          the median of many alternating rounds of a large blob.
s3:       Moorage on moto's S3 server against Debian's docker-registry (Distribution 2.8) on the
          same moto server: push and pull MiB/s, with and without redirects to presigned URLs.
          moto keeps every object in memory: sizes are modest.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from blobdata import BlobFactory
from client import BlobReader, RegistryClient, TokenAuth
from servers import LOOPBACK, DistributionServer, MiB, MoorageServer, Server, free_port

GiB = 1 << 30
ACCESS_KEY = "bench-access"
SECRET_KEY = "bench-secret"  # noqa: S105 - moto accepts any credentials

_BARE_SERVER = """
import sys
from aiohttp import web
path = sys.argv[1]
async def serve(request):
    return web.FileResponse(path)
app = web.Application()
app.router.add_get("/{tail:.*}", serve)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[2]), print=None, access_log=None)
"""


@dataclass
class BareFileServer(Server):
    """aiohttp's FileResponse for one file, on every path: the machine's limit for a pull."""

    label: str = "bare aiohttp FileResponse"
    path: Path = Path()

    def command(self) -> list[str]:
        return [sys.executable, "-c", _BARE_SERVER, str(self.path), str(self.port)]

    def start(self, timeout: float = 30.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            self.command(), stdin=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                import socket

                with socket.create_connection((LOOPBACK, self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the bare file server did not start")


@dataclass
class MotoServer(Server):
    label: str = "moto"

    def command(self) -> list[str]:
        # The project's own moto (its virtualenv's), before any other on PATH.
        beside = Path(sys.executable).parent / "moto_server"
        moto = str(beside) if beside.exists() else (shutil.which("moto_server") or str(beside))
        return [moto, "-H", LOOPBACK, "-p", str(self.port)]

    def start(self, timeout: float = 60.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.process = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                import urllib.request

                urllib.request.urlopen(f"{self.url}/", timeout=1).read()  # noqa: S310
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"moto did not start:\n{self.logs()}")

    def create_bucket(self, name: str) -> str:
        import boto3

        boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        ).create_bucket(Bucket=name)
        return name


@dataclass
class MoorageOnS3(MoorageServer):
    endpoint: str = ""
    bucket: str = ""
    redirect: bool = False

    def environment(self) -> dict[str, str]:
        environment = super().environment()
        environment.update(
            {
                "MOORAGE_STORAGE": "s3",
                "MOORAGE_S3_BUCKET": self.bucket,
                "MOORAGE_S3_ENDPOINT": self.endpoint,
                "MOORAGE_S3_ACCESS_KEY": ACCESS_KEY,
                "MOORAGE_S3_SECRET_KEY": SECRET_KEY,
                "MOORAGE_S3_REDIRECT": "true" if self.redirect else "false",
            }
        )
        return environment


@dataclass
class DistributionOnS3(DistributionServer):
    endpoint: str = ""
    bucket: str = ""
    redirect: bool = False

    def prepare(self) -> None:
        config = f"""version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  cache:
    blobdescriptor: inmemory
  s3:
    regionendpoint: "{self.endpoint}"
    bucket: {self.bucket}
    region: us-east-1
    accesskey: {ACCESS_KEY}
    secretkey: {SECRET_KEY}
    secure: false
    v4auth: true
  redirect:
    disable: {"false" if self.redirect else "true"}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: {LOOPBACK}:{self.port}
"""
        (self.workdir / "config.yml").write_text(config)

    def environment(self) -> dict[str, str]:
        environment = super().environment()
        environment.pop("AWS_CA_BUNDLE", None)  # Distribution 2.8 panics when it is set
        return environment


def _client(server: Server) -> RegistryClient:
    credentials = server.credentials
    auth = TokenAuth(*credentials) if credentials else None
    return RegistryClient(server.url, connections=4, auth=auth)


async def _pull(client: RegistryClient, name: str, digest: str, size: int) -> float:
    """GET one blob (following a redirect), check its digest; seconds taken."""
    hasher = hashlib.sha256()
    started = time.perf_counter()
    async with client._call("GET", client.url(f"/v2/{name}/blobs/{digest}"), name) as response:
        if response.status != 200:
            raise RuntimeError(f"pull of {digest}: {response.status}")
        async for chunk in response.content.iter_any():
            hasher.update(chunk)
    elapsed = time.perf_counter() - started
    if f"sha256:{hasher.hexdigest()}" != digest:
        raise RuntimeError(f"pull of {digest}: digest mismatch")
    return elapsed


async def _push_pull_once(
    client: RegistryClient, factory: BlobFactory, size: int, label: str
) -> tuple[float, float]:
    """Push one new blob (one PATCH, as docker does) and pull it back: MiB/s of each."""
    blob = factory.make(size, f"{label}-{time.time_ns()}")
    started = time.perf_counter()
    await client.push_chunked("bench/s3", blob, size)
    push = size / MiB / (time.perf_counter() - started)
    return push, size / MiB / await _pull(client, "bench/s3", blob.digest, size)


async def bench_s3(workdir: Path, size_mib: int, rounds: int) -> list[str]:
    """Both registries run at once on their own buckets; rounds alternate between them, so a
    change in the machine's load hits both alike."""
    moto = MotoServer(workdir / "moto")
    moto.start()
    size = size_mib * MiB
    factory = BlobFactory([size])
    lines = [
        f"S3 on moto ({size_mib} MiB blobs, {rounds} rounds alternating, medians;"
        " pulls digest-verified)",
        f"{'':28} {'push MiB/s':>11} {'pull MiB/s':>11}",
    ]
    try:
        for redirect in (False, True):
            servers: dict[str, Server] = {}
            for kind in ("Distribution", "Moorage"):
                bucket = moto.create_bucket(f"{kind.lower()}-{int(redirect)}-{os.getpid()}")
                directory = workdir / f"{kind}-{int(redirect)}"
                if kind == "Moorage":
                    servers[kind] = MoorageOnS3(
                        directory, workers=1, endpoint=moto.url, bucket=bucket, redirect=redirect
                    )
                else:
                    servers[kind] = DistributionOnS3(
                        directory, endpoint=moto.url, bucket=bucket, redirect=redirect
                    )
                servers[kind].start()
            samples: dict[str, list[tuple[float, float]]] = {kind: [] for kind in servers}
            try:
                clients = {kind: _client(server) for kind, server in servers.items()}
                for _ in range(rounds):
                    for kind, client in clients.items():
                        samples[kind].append(await _push_pull_once(client, factory, size, kind))
                for client in clients.values():
                    await client.session.close()
            finally:
                for server in servers.values():
                    server.stop()
            medians = {
                kind: (
                    statistics.median(push for push, _ in values),
                    statistics.median(pull for _, pull in values),
                )
                for kind, values in samples.items()
            }
            for kind, (push, pull) in medians.items():
                label = f"{kind}, {'redirect' if redirect else 'no redirect'}"
                lines.append(f"{label:28} {push:11.1f} {pull:11.1f}")
            (d_push, d_pull), (m_push, m_pull) = medians["Distribution"], medians["Moorage"]
            lines.append(
                f"{'  Moorage/Distribution':28} {m_push / d_push:10.2f}x {m_pull / d_pull:10.2f}x"
            )
    finally:
        moto.stop()
    return lines


async def bench_fast_path(workdir: Path, size_mib: int, rounds: int) -> list[str]:
    size = size_mib * MiB
    moorage = MoorageServer(workdir / "moorage", workers=1)
    moorage.start()
    bare: BareFileServer | None = None
    try:
        blob = BlobFactory([size]).make(size, "fast-path")
        async with _client(moorage) as client:
            await client.push_chunked("bench/fast", blob, size)
            authorization = await client.authorize("bench/fast")
        hex_digest = blob.digest.partition(":")[2]
        path = workdir / "moorage" / "data" / "storage" / "blobs" / "sha256" / hex_digest[:2]
        bare = BareFileServer(workdir / "bare", path=path / hex_digest, port=free_port())
        bare.start()
        speeds: dict[str, list[float]] = {"moorage": [], "bare": []}
        for _ in range(rounds):
            for label, url, header in (
                ("bare", bare.url, None),
                ("moorage", moorage.url, authorization),
            ):
                async with BlobReader(url, authorization=header) as reader:
                    await reader.pull("bench/fast", blob.digest, size)  # warm the page cache
                    started = time.perf_counter()
                    await reader.pull("bench/fast", blob.digest, size)
                    speeds[label].append(size / GiB / (time.perf_counter() - started))
    finally:
        moorage.stop()
        if bare is not None:
            bare.stop()
    best_m, best_b = max(speeds["moorage"]), max(speeds["bare"])
    median_m, median_b = statistics.median(speeds["moorage"]), statistics.median(speeds["bare"])
    pairs = zip(speeds["moorage"], speeds["bare"], strict=True)
    median_ratio = statistics.median(m / b for m, b in pairs)
    return [
        f"Filesystem fast path: single-stream pull of {size_mib} MiB, {rounds} rounds (GiB/s)",
        f"  bare aiohttp FileResponse  best {best_b:.2f}  all "
        + ", ".join(f"{v:.2f}" for v in speeds["bare"]),
        f"  Moorage                    best {best_m:.2f}  all "
        + ", ".join(f"{v:.2f}" for v in speeds["moorage"]),
        f"  Moorage/bare (best)        {best_m / best_b:.2f}x",
        f"  Moorage/bare (medians)     {median_m / median_b:.2f}x",
        f"  Moorage/bare (median of the rounds' ratios) {median_ratio:.2f}x",
    ]


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="fastpath,s3")
    parser.add_argument("--fast-mib", type=int, default=1024)
    parser.add_argument("--fast-rounds", type=int, default=9)
    parser.add_argument("--s3-mib", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--markdown", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="moorage-bench-storage-"))
    lines: list[str] = []
    try:
        if "fastpath" in args.only:
            lines += await bench_fast_path(workdir / "fast", args.fast_mib, args.fast_rounds)
        if "s3" in args.only:
            lines += await bench_s3(workdir / "s3", args.s3_mib, args.rounds)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        args.markdown.write_text(f"```\n{text}\n```\n")


if __name__ == "__main__":
    asyncio.run(main())
