"""The scenarios, run against each server in turn with the same client code.

Each scenario has an untimed setup per server and a timed part that is repeated; repeats
alternate which server goes first (D, M, then M, D, ...) so that noise from other work on the
machine lands on both. The value reported is the median of the repeats.

Servers with credentials (Moorage) are used with docker's token flow. Tokens are fetched during
the untimed setup of each sample (one per repository, before the clock starts, also for wrk, ab
and the blob readers), except in the small-image pushes: each sample there is a new client that
signs in as it goes, one token per repository, as real clients do.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
import resource
import statistics
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from yarl import URL

from blobdata import OCI_MANIFEST, Blob, BlobFactory, Image, make_image
from client import BlobReader, ProtocolError, RegistryClient, TokenAuth
from loadtools import LoadResult, ToolError, run_ab_head, run_wrk
from plan import MiB, Plan
from servers import Sampler, Server, ServerError, cpu_seconds

T = TypeVar("T")


@dataclass
class Sample:
    value: float
    seconds: float
    work: float  # what the value counts: bytes, requests, pages, images
    server_cpu: float = 0.0
    client_cpu: float = 0.0
    notes: list[str] = field(default_factory=list)


@dataclass
class Outcome:
    samples: list[Sample] = field(default_factory=list)
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def value(self) -> float | None:
        if self.error is not None or not self.samples:
            return None
        return statistics.median(s.value for s in self.samples)

    def cpu_per_work(self) -> float | None:
        work = sum(s.work for s in self.samples)
        if self.error is not None or not work:
            return None
        return sum(s.server_cpu for s in self.samples) / work


Results = dict[str, dict[str, Outcome]]


class ScenarioFailed(RuntimeError):
    pass


async def bounded(
    items: Iterable[T], concurrency: int, action: Callable[[T], Awaitable[None]]
) -> None:
    """Run `action` over `items` with at most `concurrency` in flight; first error cancels all."""
    iterator = iter(items)

    async def lane() -> None:
        for item in iterator:
            await action(item)

    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(lane())


def _child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Bench:
    def __init__(
        self,
        plan: Plan,
        servers: list[Server],
        sampler: Sampler,
        *,
        only: set[str] | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        self.plan = plan
        self.servers = servers
        self.sampler = sampler
        self.only = only
        self.log = log
        self.results: Results = {}
        self._factory: BlobFactory | None = None

    # -- plumbing

    @property
    def factory(self) -> BlobFactory:
        if self._factory is None:
            p = self.plan
            sizes = [p.mono_size, p.chunked_size, p.single_size, p.many_size]
            started = time.perf_counter()
            self._factory = BlobFactory(sizes)
            self.log(
                f"  generated {max(sizes) // MiB} MiB of random data and prefix digests"
                f" in {time.perf_counter() - started:.1f}s"
            )
        return self._factory

    def outcome(self, key: str, server: Server) -> Outcome:
        return self.results.setdefault(key, {}).setdefault(server.label, Outcome())

    def _check_alive(self) -> None:
        for server in self.servers:
            if not server.alive():
                raise ServerError(f"{server.label} died:\n{server.logs()}")

    def order(self, round_index: int) -> list[Server]:
        return list(self.servers) if round_index % 2 == 0 else list(reversed(self.servers))

    async def timed(
        self,
        key: str,
        server: Server,
        run: Callable[[], Awaitable[Sample]],
        *,
        flush_first: bool = False,
    ) -> None:
        """One timed repetition, with the server's and the client's CPU time around it.

        `flush_first` writes all dirty pages to disk before the clock starts: Distribution never
        fsyncs, so without it the writeback of its pushes would land in whatever is measured
        next (often a Moorage push, which waits on fsync).
        """
        outcome = self.outcome(key, server)
        if outcome.error is not None:
            return
        if flush_first:
            await asyncio.to_thread(os.sync)
        self.sampler.set_phase(key)
        server_before, client_before = cpu_seconds(server), time.process_time() + _child_cpu()
        try:
            sample = await run()
        except (ProtocolError, ToolError, TimeoutError, OSError) as error:
            outcome.error = f"{type(error).__name__}: {error}"[:600]
            self.log(f"  {server.label:<12} ERROR {outcome.error}")
            return
        sample.server_cpu = cpu_seconds(server) - server_before
        sample.client_cpu = time.process_time() + _child_cpu() - client_before
        outcome.samples.append(sample)
        extra = f" ({'; '.join(sample.notes)})" if sample.notes else ""
        value = f"{sample.value:,.1f}" if sample.value >= 100 else f"{sample.value:.4g}"
        self.log(
            f"  {server.label:<12} {value:>10}  in {sample.seconds:6.2f}s"
            f"  server CPU {sample.server_cpu:5.2f}s  client CPU {sample.client_cpu:5.2f}s{extra}"
        )

    # -- authentication (untimed unless a scenario says otherwise)

    @staticmethod
    def new_auth(server: Server) -> TokenAuth | None:
        """Token authentication with no token yet, like a new docker client (None: no auth)."""
        credentials = server.credentials
        return TokenAuth(*credentials) if credentials is not None else None

    def client(
        self, server: Server, connections: int, auth: TokenAuth | None = None
    ) -> RegistryClient:
        """A client for `server`, sharing `auth`'s tokens, or signing in afresh if none given."""
        if auth is None:
            auth = self.new_auth(server)
        return RegistryClient(server.url, connections=connections, auth=auth)

    async def signed_in(self, server: Server, name: str) -> TokenAuth | None:
        """Token authentication that already holds a fresh token for repository `name`."""
        auth = self.new_auth(server)
        if auth is not None:
            async with self.client(server, 1, auth) as client:
                await client.authorize(name)
        return auth

    async def authorization(self, server: Server, name: str) -> str | None:
        """An Authorization header value for `name`, fetched now (None: none needed)."""
        auth = self.new_auth(server)
        if auth is None:
            return None
        async with self.client(server, 1, auth) as client:
            return await client.authorize(name)

    async def auth_headers(self, server: Server, name: str) -> dict[str, str]:
        value = await self.authorization(server, name)
        return {"Authorization": value} if value is not None else {}

    def wanted(self, *keys: str) -> bool:
        return self.only is None or any(key in self.only for key in keys)

    async def run(self) -> Results:
        steps: list[tuple[tuple[str, ...], Callable[[], Awaitable[None]]]] = [
            (("mono_push",), self.mono_push),
            (("chunked_push",), self.chunked_push),
            (("single_pull",), self.single_pull),
            (("many_pull",), self.many_pull),
            (("manifest_get", "blob_head"), self.manifest_and_head),
            (("tags_walk", "tags_pages", "tags_create"), self.tags),
            (("small_images",), self.small_images),
        ]
        for keys, step in steps:
            if not self.wanted(*keys):
                continue
            try:
                await step()
            except (ProtocolError, ToolError, ScenarioFailed, TimeoutError, OSError) as error:
                # A failed setup marks the step's metrics as failed; the run goes on.
                message = f"{type(error).__name__}: {error}"[:600]
                self.log(f"  ERROR in {step.__name__}: {message}")
                for key in keys:
                    for server in self.servers:
                        outcome = self.outcome(key, server)
                        if outcome.error is None and not outcome.samples:
                            outcome.error = message
            self._check_alive()
        self.sampler.set_phase("end")
        return self.results

    # -- 1. monolithic push

    async def mono_push(self) -> None:
        p = self.plan
        self.log(
            f"\n[1] monolithic push: {p.mono_blobs} x {p.mono_size // MiB} MiB,"
            f" concurrency {p.mono_concurrency}, {p.mono_repeats} round(s)"
        )
        factory = self.factory
        for round_index in range(p.mono_repeats):
            for server in self.order(round_index):
                blobs = [
                    factory.make(p.mono_size, f"mono/{server.label}/{round_index}/{k}")
                    for k in range(p.mono_blobs)
                ]
                name = f"bench/mono-{round_index}"
                auth = await self.signed_in(server, name)
                push = functools.partial(
                    self._push_blobs, server, auth, name, blobs, p.mono_concurrency, None
                )
                await self.timed("mono_push", server, push, flush_first=True)

    async def _push_blobs(
        self,
        server: Server,
        auth: TokenAuth | None,
        name: str,
        blobs: list[Blob],
        concurrency: int,
        chunk: int | None,
    ) -> Sample:
        async with self.client(server, concurrency, auth) as client:

            async def push(blob: Blob) -> None:
                if chunk is None:
                    await client.push_monolithic(name, blob)
                else:
                    await client.push_chunked(name, blob, chunk)

            started = time.perf_counter()
            await bounded(blobs, concurrency, push)
            seconds = time.perf_counter() - started
        total = sum(b.size for b in blobs)
        return Sample(total / MiB / seconds, seconds, total)

    # -- 2. chunked push

    async def chunked_push(self) -> None:
        p = self.plan
        self.log(
            f"\n[2] chunked push: {p.chunked_blobs} x {p.chunked_size // MiB} MiB in"
            f" {p.chunk_size // MiB} MiB PATCHes, concurrency {p.chunked_concurrency},"
            f" {p.chunked_repeats} round(s)"
        )
        factory = self.factory
        for round_index in range(p.chunked_repeats):
            for server in self.order(round_index):
                blobs = [
                    factory.make(p.chunked_size, f"chunked/{server.label}/{round_index}/{k}")
                    for k in range(p.chunked_blobs)
                ]
                name = f"bench/chunked-{round_index}"
                auth = await self.signed_in(server, name)
                push = functools.partial(
                    self._push_blobs,
                    server,
                    auth,
                    name,
                    blobs,
                    p.chunked_concurrency,
                    p.chunk_size,
                )
                await self.timed("chunked_push", server, push, flush_first=True)

    # -- 3. single-stream pull

    async def single_pull(self) -> None:
        p = self.plan
        self.log(
            f"\n[3] single-stream pull of a {p.single_size // MiB} MiB blob,"
            f" {p.single_passes} GETs per sample on one connection, median of {p.single_repeats}"
        )
        name = "bench/pull-single"
        blobs: dict[str, Blob] = {}
        for server in self.servers:
            blob = self.factory.make(p.single_size, f"single/{server.label}")
            async with self.client(server, 1) as client:
                await client.push_monolithic(name, blob)
                await client.verify_blob(name, blob.digest, blob.size)  # also warms the cache
            blobs[server.label] = blob
        for round_index in range(p.single_repeats):
            for server in self.order(round_index):
                authorization = await self.authorization(server, name)
                pull = functools.partial(
                    self._pull, server, authorization, name, [blobs[server.label]], p.single_passes
                )
                await self.timed("single_pull", server, pull)

    async def _pull(
        self,
        server: Server,
        authorization: str | None,
        name: str,
        blobs: list[Blob],
        passes: int,
    ) -> Sample:
        """GET every blob at once, one connection each (opened before the clock starts), each
        `passes` times back to back on its keep-alive connection, with `authorization`."""

        async def pull(reader: BlobReader, blob: Blob) -> int:
            return sum([await reader.pull(name, blob.digest, blob.size) for _ in range(passes)])

        async with contextlib.AsyncExitStack() as stack:
            readers = [
                await stack.enter_async_context(BlobReader(server.url, authorization=authorization))
                for _ in blobs
            ]
            started = time.perf_counter()
            sizes = await asyncio.gather(
                *(pull(reader, blob) for reader, blob in zip(readers, blobs, strict=True))
            )
            seconds = time.perf_counter() - started
        total = sum(sizes)
        return Sample(total / MiB / seconds, seconds, total)

    # -- 4. concurrent pulls

    async def many_pull(self) -> None:
        p = self.plan
        self.log(
            f"\n[4] {p.many_count} concurrent pulls of {p.many_size // MiB} MiB blobs"
            f" ({p.many_passes} GETs per connection per sample), median of {p.many_repeats}"
        )
        name = "bench/pull-many"
        blobs: dict[str, list[Blob]] = {}
        for server in self.servers:
            made = [
                self.factory.make(p.many_size, f"many/{server.label}/{k}")
                for k in range(p.many_count)
            ]
            async with self.client(server, 4) as client:
                await bounded(made, 4, lambda blob: client.push_monolithic(name, blob))
                await client.verify_blob(name, made[0].digest, made[0].size)
            blobs[server.label] = made
        for round_index in range(p.many_repeats):
            for server in self.order(round_index):
                authorization = await self.authorization(server, name)
                pull = functools.partial(
                    self._pull, server, authorization, name, blobs[server.label], p.many_passes
                )
                await self.timed("many_pull", server, pull)

    # -- 5 and 6. manifest GET (wrk) and blob HEAD (ab)

    async def manifest_and_head(self) -> None:
        p = self.plan
        name, tag = "bench/manifest", "latest"
        images: dict[str, Image] = {}
        for server in self.servers:
            image = make_image(os.urandom(4096), f"manifest/{server.label}")
            async with self.client(server, 1) as client:
                await client.push_image(name, tag, image)
                digest, body = await client.get_manifest(name, tag, OCI_MANIFEST)
                if body != image.manifest or digest != image.manifest_digest:
                    raise ScenarioFailed(f"{server.label} returned a different manifest")
                if not await client.blob_exists(name, image.layer.digest):
                    raise ScenarioFailed(f"{server.label} does not have the pushed layer")
            images[server.label] = image

        if self.wanted("manifest_get"):
            self.log(
                f"\n[5] manifest GET by tag: wrk -t{p.wrk_threads} -c{p.wrk_connections}"
                f" -d{p.wrk_seconds:.0f}s, Accept: {OCI_MANIFEST}, {p.wrk_repeats} round(s)"
            )
            for round_index in range(p.wrk_repeats):
                for server in self.order(round_index):
                    headers = {"Accept": OCI_MANIFEST, **await self.auth_headers(server, name)}
                    wrk = functools.partial(
                        run_wrk,
                        f"{server.url}/v2/{name}/manifests/{tag}",
                        threads=p.wrk_threads,
                        connections=p.wrk_connections,
                        seconds=p.wrk_seconds,
                        headers=headers,
                    )
                    await self.timed("manifest_get", server, functools.partial(self._load, wrk))

        if self.wanted("blob_head"):
            self.log(
                f"\n[6] blob HEAD: ab -i -k -c {p.ab_connections} -n {p.ab_requests},"
                f" {p.ab_repeats} round(s)"
            )
            for round_index in range(p.ab_repeats):
                for server in self.order(round_index):
                    digest = images[server.label].layer.digest
                    ab = functools.partial(
                        run_ab_head,
                        f"{server.url}/v2/{name}/blobs/{digest}",
                        connections=p.ab_connections,
                        requests=p.ab_requests,
                        headers=await self.auth_headers(server, name),
                    )
                    await self.timed("blob_head", server, functools.partial(self._load, ab))

    @staticmethod
    async def _load(run: Callable[[], Awaitable[LoadResult]]) -> Sample:
        result = await run()
        if result.failures:
            raise ToolError(f"{result.failures} requests failed: {'; '.join(result.notes)}")
        notes = list(result.notes)
        if result.latency_p50_ms is not None and result.latency_p99_ms is not None:
            notes.append(f"p50 {result.latency_p50_ms:.1f} ms, p99 {result.latency_p99_ms:.1f} ms")
        return Sample(result.rate, result.seconds, result.requests, notes=notes)

    # -- 7. tag listing

    async def tags(self) -> None:
        p = self.plan
        name = "bench/tags"
        self.log(
            f"\n[7] tags/list of a {p.tag_count}-tag repository, n={p.tag_page} following Link,"
            f" median of {p.tag_walks} walks (setup: PUT one manifest under every tag,"
            f" concurrency {p.tag_concurrency})"
        )
        expected = [f"t{k:05d}" for k in range(p.tag_count)]
        for server in self.servers:
            image = make_image(os.urandom(1024), f"tags/{server.label}")
            async with self.client(server, p.tag_concurrency) as client:
                await client.authorize(name)
                await client.push_image(name, expected[0], image)
                shuffled = expected[1:]
                random.shuffle(shuffled)

                tag = functools.partial(self._tag, client, name, image.manifest)

                self.sampler.set_phase("tags_create")
                before = cpu_seconds(server)
                started = time.perf_counter()
                await bounded(shuffled, p.tag_concurrency, tag)
                seconds = time.perf_counter() - started
                rate = len(shuffled) / seconds
                self.outcome("tags_create", server).samples.append(
                    Sample(rate, seconds, len(shuffled), server_cpu=cpu_seconds(server) - before)
                )
                self.log(f"  {server.label:<12} created {len(shuffled)} tags at {rate:.0f}/s")

        for round_index in range(p.tag_walks):
            for server in self.order(round_index):
                auth = await self.signed_in(server, name)
                run_walk = functools.partial(self._walk, server, auth, name, expected)
                await self.timed("tags_walk", server, run_walk)
        for server in self.servers:
            walk = self.outcome("tags_walk", server)
            pages = self.outcome("tags_pages", server)
            pages.error = walk.error
            for sample in walk.samples:
                page_count = sample.work
                pages.samples.append(
                    Sample(page_count / sample.seconds, sample.seconds, page_count)
                )
            if walk.samples:
                walk.notes.extend(walk.samples[-1].notes)

    @staticmethod
    async def _tag(client: RegistryClient, name: str, manifest: bytes, reference: str) -> None:
        await client.put_manifest(name, reference, manifest, OCI_MANIFEST)

    async def _walk(
        self, server: Server, auth: TokenAuth | None, name: str, expected: list[str]
    ) -> Sample:
        async with self.client(server, 1, auth) as client:
            seen: list[str] = []
            pages = 0
            page_sizes: list[int] = []
            start = client.url(f"/v2/{name}/tags/list").with_query({"n": str(self.plan.tag_page)})
            following: URL | None = start
            started = time.perf_counter()
            while following is not None:
                tags, following = await client.tags_page(name, following)
                pages += 1
                page_sizes.append(len(tags))
                seen.extend(tags)
                if pages > len(expected) + 10:
                    raise ProtocolError("the Link chain does not end")
            seconds = time.perf_counter() - started
        notes = [
            f"{pages} page(s), largest {max(page_sizes)} tags, {len(seen)} tags in total",
        ]
        if sorted(seen) != expected:
            missing = len(set(expected) - set(seen))
            duplicates = len(seen) - len(set(seen))
            raise ProtocolError(
                f"tag walk returned {len(seen)} tags ({missing} missing, {duplicates} duplicated)"
            )
        if max(page_sizes) > self.plan.tag_page:
            notes.append(f"n={self.plan.tag_page} ignored: whole list in one reply")
        return Sample(seconds, seconds, pages, notes=notes)

    # -- 8. small image pushes

    async def small_images(self) -> None:
        p = self.plan
        self.log(
            f"\n[8] {p.images} small image pushes (1-16 KiB layer + config + manifest),"
            f" concurrency {p.image_concurrency}, {p.image_repeats} round(s)"
        )
        for round_index in range(p.image_repeats):
            for server in self.order(round_index):
                rng = random.Random(f"{server.label}/{round_index}")
                images = [
                    (
                        f"bench/small-{round_index}-{k % 16}",
                        f"v{k}",
                        make_image(
                            rng.randbytes(rng.randint(1024, 16 * 1024)),
                            f"small/{server.label}/{round_index}/{k}",
                        ),
                    )
                    for k in range(p.images)
                ]
                push = functools.partial(self._push_images, server, images)
                await self.timed("small_images", server, push, flush_first=True)

    async def _push_images(self, server: Server, images: list[tuple[str, str, Image]]) -> Sample:
        """A new client per sample, signing in as it goes (timed): the first request is
        challenged, then one token is fetched per repository and reused for all its images."""
        concurrency = self.plan.image_concurrency
        auth = self.new_auth(server)
        async with self.client(server, concurrency, auth) as client:

            async def push(item: tuple[str, str, Image]) -> None:
                await client.push_image(*item)

            started = time.perf_counter()
            await bounded(images, concurrency, push)
            seconds = time.perf_counter() - started
        notes: list[str] = []
        if auth is not None:
            notes.append(f"{auth.fetches} token fetches in {auth.fetch_seconds:.2f}s, timed")
        return Sample(len(images) / seconds, seconds, len(images), notes=notes)


def rss_outcomes(bench: Bench) -> None:
    """Fill the RSS rows from the sampler (MiB)."""
    for server in bench.servers:
        usage = bench.sampler.usage(server.label)
        total = usage.peak_total() / MiB
        worker = usage.peak_worker() / MiB
        bench.outcome("rss_total", server).samples.append(Sample(total, 0.0, 0.0))
        workers = usage.peak_workers_sum() / MiB
        bench.outcome("rss_workers", server).samples.append(Sample(workers, 0.0, 0.0))
        bench.outcome("rss_worker", server).samples.append(Sample(worker, 0.0, 0.0))
        pss = usage.peak_pss_total / MiB
        bench.outcome("pss_total", server).samples.append(Sample(pss, 0.0, 0.0))
