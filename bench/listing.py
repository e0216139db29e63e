"""Tag listing at scale and manifest GET, Moorage on SQLite and on PostgreSQL, against
Distribution (Debian's docker-registry, filesystem storage).

    python bench/listing.py [--sizes 10000,100000,1000000] [--distribution-max 100000]
                            [--walks 5] [--wrk-seconds 10] [--markdown FILE]

Each server gets one repository per size with one pushed image. The tags are seeded, not
pushed (a million manifest PUTs would take most of an hour): on Moorage by bulk inserts into
its `tags` table (the same rows a manifest PUT writes), on Distribution by writing its
filesystem layout (`_manifests/tags/<tag>/current/link`, which is all its tag listing reads).

Measured per size and server:
- full listing: `GET /v2/<name>/tags/list` without `n`, following `Link` to the end (Moorage
  answers up to `unpaged_listing_size` tags, 10,000 by default, per page; Distribution answers
  with every tag at once, unsorted). Median of `--walks` walks, each checked to return every
  tag once (in order, from Moorage); with the server's CPU time per walk (for Moorage on
  PostgreSQL, the cluster's CPU included).
- deep page: `GET ...?n=100&last=<a tag in the middle>`, median latency of 100 requests on one
  connection; O(page) means it stays flat as the repository grows.
Then manifest GET by tag with wrk (`-t2 -c64`) on each server, 2 rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import psutil
from yarl import URL

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support.services

from sqlalchemy import select
from tests.support.services import PostgresServer

from blobdata import OCI_MANIFEST, make_image
from client import RegistryClient, TokenAuth
from loadtools import run_wrk
from moorage.metadata.database import make_engine, write_transaction
from moorage.metadata.registry.models import utcnow
from moorage.metadata.registry.registry_records import (
    repositories_table,
    repository_manifests_table,
    tags_table,
)
from servers import DistributionServer, MoorageServer, Server, cpu_seconds, environment_info

_SEED_BATCH = 20_000


def tag_names(count: int) -> list[str]:
    # Sorted as Python sorts str: by code point, the byte order the spec's lexical order is.
    width = len(str(count - 1))
    return sorted(f"v{k:0{width}d}" for k in range(count))


def tree_cpu(pid: int) -> float:
    """User+system CPU seconds of a process and all its descendants."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            total += times.user + times.system
    return total


def server_cpu(server: Server) -> float:
    """The registry's CPU, plus its PostgreSQL cluster's when it has one (the SQLite engine
    runs inside the registry's processes)."""
    total = cpu_seconds(server)
    if isinstance(server, MoorageOn) and server.postgres is not None:
        assert server.postgres.process is not None
        total += tree_cpu(server.postgres.process.pid)
    return total


@dataclass
class MoorageOn(MoorageServer):
    """Moorage with its metadata at `database_url` (None: the embedded SQLite file)."""

    database_url: str | None = None
    postgres: PostgresServer | None = None

    def environment(self) -> dict[str, str]:
        environment = super().environment()
        if self.database_url:
            environment["MOORAGE_DATABASE_URL"] = self.database_url
        return environment

    @property
    def metadata_url(self) -> str:
        return self.database_url or f"sqlite+pysqlite:///{self.workdir / 'data' / 'moorage.db'}"


def seed_moorage(server: MoorageOn, repository: str, digest: str, tags: list[str]) -> None:
    """Tag rows as a manifest PUT writes them, in bulk (the first tag exists already)."""
    engine = make_engine(server.metadata_url, pool_size=1)
    try:
        with write_transaction(engine) as connection:
            repository_id = connection.execute(
                select(repositories_table.c.id).where(repositories_table.c.name == repository)
            ).scalar_one()
            linked = connection.execute(
                select(repository_manifests_table.c.digest).where(
                    repository_manifests_table.c.repository_id == repository_id,
                    repository_manifests_table.c.digest == digest,
                )
            ).scalar_one()
        stamp = utcnow()
        rest = tags[1:]
        for start in range(0, len(rest), _SEED_BATCH):
            rows = [
                {
                    "repository_id": repository_id,
                    "name": name,
                    "manifest_digest": linked,
                    "updated_at": stamp,
                }
                for name in rest[start : start + _SEED_BATCH]
            ]
            with write_transaction(engine) as connection:
                connection.execute(tags_table.insert(), rows)
        if engine.dialect.name == "postgresql":
            # What autovacuum does soon after a bulk load (a million tags are not pushed in a
            # minute): the visibility map lets an index-only scan skip the table's pages.
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
                connection.exec_driver_sql("VACUUM ANALYZE tags")
    finally:
        engine.dispose()


def seed_distribution(server: DistributionServer, repository: str, digest: str, tags: list[str]):
    base = server.workdir / "storage/docker/registry/v2/repositories" / repository
    tag_root = base / "_manifests" / "tags"
    link = digest.encode()
    for name in tags[1:]:
        current = tag_root / name / "current"
        current.mkdir(parents=True, exist_ok=True)
        (current / "link").write_bytes(link)


def seed_repositories(server: MoorageOn, count: int) -> list[str]:
    """`count` repository rows, as a first push into each writes them (the catalog lists rows)."""
    names = [f"catalog/r{k:06d}" for k in range(count)]
    engine = make_engine(server.metadata_url, pool_size=1)
    stamp = utcnow()
    try:
        for start in range(0, count, _SEED_BATCH):
            rows = [
                {"name": name, "created_at": stamp} for name in names[start : start + _SEED_BATCH]
            ]
            with write_transaction(engine) as connection:
                connection.execute(repositories_table.insert(), rows)
        if engine.dialect.name == "postgresql":
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
                connection.exec_driver_sql("VACUUM ANALYZE repositories")
    finally:
        engine.dispose()
    return names


def catalog_token(server: MoorageOn) -> str:
    """A registry token with the catalog scope, for the admin account."""
    query = urllib.parse.urlencode({"service": "moorage", "scope": "registry:catalog:*"})
    basic = base64.b64encode(f"admin:{server.admin_password}".encode()).decode()
    request = urllib.request.Request(  # noqa: S310 - loopback only
        f"{server.url}/service/token?{query}", headers={"Authorization": f"Basic {basic}"}
    )
    with urllib.request.urlopen(request, timeout=30) as reply:  # noqa: S310 - loopback only
        return str(json.loads(reply.read())["token"])


async def catalog_walk(
    session: aiohttp.ClientSession, server: Server, first: str, expected: list[str]
) -> tuple[float, int]:
    seen: list[str] = []
    pages = 0
    following: str | None = first
    started = time.perf_counter()
    while following is not None:
        async with session.get(f"{server.url}{following}") as response:
            if response.status != 200:
                raise RuntimeError(f"{server.label}: catalog got {response.status}")
            seen.extend((await response.json())["repositories"])
            link = response.headers.get("Link")
        following = link[1 : link.index(">")] if link else None
        pages += 1
    seconds = time.perf_counter() - started
    if seen != sorted(set(seen)) or [n for n in seen if n.startswith("catalog/")] != expected:
        raise RuntimeError(f"{server.label}: the catalog walk missed or repeated names")
    return seconds, pages


async def catalog(args: argparse.Namespace, servers: list[Server]) -> dict[str, Result]:
    """Moorage's catalog of `--repositories` repositories: the full walk and a deep page."""
    results: dict[str, Result] = {}
    moorages = [server for server in servers if isinstance(server, MoorageOn)]
    names: list[str] = []
    for server in moorages:
        names = await asyncio.to_thread(seed_repositories, server, args.repositories)
    middle = names[len(names) // 2]
    for round_index in range(args.walks):
        for server in moorages if round_index % 2 == 0 else moorages[::-1]:
            token = await asyncio.to_thread(catalog_token, server)
            result = results.setdefault(server.label, Result())
            headers = {"Authorization": f"Bearer {token}"}
            async with aiohttp.ClientSession(headers=headers) as session:
                before = server_cpu(server)
                seconds, pages = await catalog_walk(session, server, "/v2/_catalog", names)
                result.walk_cpu.append(server_cpu(server) - before)
                result.walks.append(seconds)
                result.pages = pages
                if round_index == 0:
                    deep = f"{server.url}/v2/_catalog?n=100&last={middle}"
                    for _ in range(100):
                        started = time.perf_counter()
                        async with session.get(deep) as response:
                            page = (await response.json())["repositories"]
                        result.deep_page.append(time.perf_counter() - started)
                        if len(page) != 100 or page[0] <= middle:
                            raise RuntimeError(f"{server.label}: deep catalog page wrong")
    for label, result in results.items():
        print(
            f"  catalog of {args.repositories} {label:<22}"
            f" full listing {statistics.median(result.walks) * 1e3:8.1f} ms"
            f" ({result.pages} page(s)), deep n=100 page"
            f" {statistics.median(result.deep_page) * 1e3:6.2f} ms",
            flush=True,
        )
    return results


@dataclass
class Result:
    walks: list[float] = field(default_factory=list)
    walk_cpu: list[float] = field(default_factory=list)  # the server's, and its database's
    pages: int = 0
    deep_page: list[float] = field(default_factory=list)
    manifest_rates: list[float] = field(default_factory=list)


async def walk(
    client: RegistryClient, repository: str, expected: list[str], *, ordered: bool
) -> tuple[float, int]:
    seen: list[str] = []
    pages = 0
    following: URL | None = client.url(f"/v2/{repository}/tags/list")
    started = time.perf_counter()
    while following is not None:
        tags, following = await client.tags_page(repository, following)
        seen.extend(tags)
        pages += 1
    seconds = time.perf_counter() - started
    # Distribution 2.8 answers in directory order: for it, only the set is checked.
    if (seen if ordered else sorted(seen)) != expected:
        raise RuntimeError(
            f"{client.base}: {repository}: walk returned {len(seen)} tags,"
            f" expected {len(expected)} in order"
        )
    return seconds, pages


async def deep_page(
    client: RegistryClient, repository: str, after: str, *, paged: bool
) -> list[float]:
    url = client.url(f"/v2/{repository}/tags/list").with_query({"n": "100", "last": after})
    latencies = []
    for _ in range(100):
        started = time.perf_counter()
        tags, _following = await client.tags_page(repository, url)
        latencies.append(time.perf_counter() - started)
        # Distribution 2.8 ignores n and last: its "page" is the whole list.
        if paged and (len(tags) != 100 or not tags[0] > after):
            raise RuntimeError(f"{repository}: deep page wrong: {tags[:3]}")
    return latencies


async def run(args: argparse.Namespace, servers: list[Server]) -> dict[tuple[str, int], Result]:
    results: dict[tuple[str, int], Result] = {}
    image = make_image(os.urandom(1024), "listing")
    for size in args.sizes:
        names = tag_names(size)
        repository = f"bench/tags{size}"
        for server in servers:
            if isinstance(server, DistributionServer) and size > args.distribution_max:
                continue
            auth = TokenAuth(*server.credentials) if server.credentials else None
            async with RegistryClient(server.url, connections=4, auth=auth) as client:
                await client.authorize(repository)
                await client.push_image(repository, names[0], image)
                started = time.perf_counter()
                if isinstance(server, MoorageOn):
                    await asyncio.to_thread(
                        seed_moorage, server, repository, image.manifest_digest, names
                    )
                else:
                    assert isinstance(server, DistributionServer)
                    await asyncio.to_thread(
                        seed_distribution, server, repository, image.manifest_digest, names
                    )
                print(
                    f"  {server.label:<22} seeded {size} tags in"
                    f" {time.perf_counter() - started:.1f}s",
                    flush=True,
                )
        for round_index in range(args.walks):
            ordered = servers if round_index % 2 == 0 else servers[::-1]
            for server in ordered:
                if isinstance(server, DistributionServer) and size > args.distribution_max:
                    continue
                result = results.setdefault((server.label, size), Result())
                auth = TokenAuth(*server.credentials) if server.credentials else None
                async with RegistryClient(server.url, connections=1, auth=auth) as client:
                    await client.authorize(repository)
                    before = server_cpu(server)
                    seconds, pages = await walk(
                        client, repository, names, ordered=isinstance(server, MoorageOn)
                    )
                    result.walks.append(seconds)
                    result.walk_cpu.append(server_cpu(server) - before)
                    result.pages = pages
                    if round_index == 0:
                        result.deep_page = await deep_page(
                            client,
                            repository,
                            names[size // 2],
                            paged=isinstance(server, MoorageOn),
                        )
        for server in servers:
            result = results.get((server.label, size))
            if result is None:
                continue
            print(
                f"  {size:>8} tags {server.label:<22} full listing"
                f" {statistics.median(result.walks) * 1e3:8.1f} ms ({result.pages} page(s),"
                f" {sum(result.walk_cpu) / len(result.walk_cpu) * 1e3:.1f} CPU-ms),"
                f" deep n=100 page {statistics.median(result.deep_page) * 1e3:6.2f} ms",
                flush=True,
            )
    await manifest_gets(args, servers, results, image.manifest_digest)
    return results


async def manifest_gets(
    args: argparse.Namespace,
    servers: list[Server],
    results: dict[tuple[str, int], Result],
    digest: str,
) -> None:
    repository = f"bench/tags{args.sizes[0]}"
    tag = tag_names(args.sizes[0])[0]
    for round_index in range(2):
        for server in servers if round_index % 2 == 0 else servers[::-1]:
            headers = {"Accept": OCI_MANIFEST}
            auth = TokenAuth(*server.credentials) if server.credentials else None
            async with RegistryClient(server.url, connections=1, auth=auth) as client:
                authorization = await client.authorize(repository)
            if authorization:
                headers["Authorization"] = authorization
            outcome = await run_wrk(
                f"{server.url}/v2/{repository}/manifests/{tag}",
                threads=2,
                connections=64,
                seconds=args.wrk_seconds,
                headers=headers,
            )
            if outcome.failures:
                raise RuntimeError(f"{server.label}: manifest GET failures: {outcome.notes}")
            results.setdefault((server.label, 0), Result()).manifest_rates.append(outcome.rate)
    for server in servers:
        rates = results[(server.label, 0)].manifest_rates
        print(
            f"  manifest GET {server.label:<22} {statistics.median(rates):8.0f} req/s"
            f" ({', '.join(f'{r:.0f}' for r in rates)})",
            flush=True,
        )


def render(results: dict[tuple[str, int], Result], labels: list[str], sizes: list[int]) -> str:
    lines = [
        "| Tags | Server | Full listing ms (median) | Server CPU-ms per listing | Pages"
        " | Deep page n=100 ms (median) |",
        "| ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for size in sizes:
        for label in labels:
            result = results.get((label, size))
            if result is None:
                lines.append(f"| {size:,} | {label} | not run | - | - | - |")
                continue
            wall = statistics.median(result.walks) * 1e3
            # CPU times tick in 10 ms: the mean over all walks, not a median of ticks.
            cpu = sum(result.walk_cpu) / len(result.walk_cpu) * 1e3
            deep = statistics.median(result.deep_page) * 1e3
            lines.append(
                f"| {size:,} | {label} | {wall:.1f} | {cpu:.1f} | {result.pages} | {deep:.2f} |"
            )
    lines += ["", "| Server | Manifest GET req/s (median) | Rounds |", "| --- | ---: | --- |"]
    for label in labels:
        rates = results[(label, 0)].manifest_rates
        rounds = ", ".join(f"{rate:,.0f}" for rate in rates)
        lines.append(f"| {label} | {statistics.median(rates):,.0f} | {rounds} |")
    return "\n".join(lines)


def render_catalog(results: dict[str, Result], count: int) -> str:
    lines = [
        "| Repositories | Server | Catalog walk ms (median) | Server CPU-ms per walk | Pages"
        " | Deep page n=100 ms (median) |",
        "| ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for label, result in results.items():
        wall = statistics.median(result.walks) * 1e3
        cpu = sum(result.walk_cpu) / len(result.walk_cpu) * 1e3
        deep = statistics.median(result.deep_page) * 1e3
        lines.append(
            f"| {count:,} | {label} | {wall:.1f} | {cpu:.1f} | {result.pages} | {deep:.2f} |"
        )
    return "\n".join(lines)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--distribution-max", type=int, default=100_000)
    parser.add_argument(
        "--repositories", type=int, default=100_000, help="catalog size (Moorage only; 0: skip)"
    )
    parser.add_argument("--walks", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--wrk-seconds", type=float, default=10)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--tmpdir", type=Path)
    args = parser.parse_args(argv)
    args.sizes = [int(size) for size in args.sizes.split(",")]
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    root = Path(tempfile.mkdtemp(prefix="moorage-listing-", dir=args.tmpdir))
    postgres = PostgresServer()
    servers: list[Server] = []
    try:
        postgres.start()
        servers = [
            DistributionServer(workdir=root / "distribution"),
            MoorageOn(workdir=root / "sqlite", label="Moorage SQLite", workers=args.workers),
            MoorageOn(
                workdir=root / "postgresql",
                label="Moorage PostgreSQL",
                workers=args.workers,
                database_url=postgres.create_database("listing"),
                postgres=postgres,
            ),
        ]
        for server in servers:
            server.start()
        info = environment_info(args.workers)
        results = asyncio.run(run(args, servers))
        catalogs = asyncio.run(catalog(args, servers)) if args.repositories else {}
        print()
        for key, value in info.items():
            print(f"- **{key}**: {value}")
        table = render(results, [server.label for server in servers], args.sizes)
        if catalogs:
            table += "\n\n" + render_catalog(catalogs, args.repositories)
        print(table)
        if args.markdown is not None:
            args.markdown.write_text(table + "\n")
    finally:
        for server in servers:
            server.stop()
        postgres.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
