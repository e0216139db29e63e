"""What to measure: sizes and durations of the quick and full runs, and the table's rows."""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1 << 20


@dataclass(frozen=True, slots=True)
class Plan:
    name: str
    # 1. monolithic push (POST, then one PUT ?digest= with the whole blob)
    mono_blobs: int
    mono_size: int
    mono_concurrency: int
    mono_repeats: int
    # 2. chunked push (POST, PATCH chunks with Content-Range, PUT ?digest=)
    chunked_blobs: int
    chunked_size: int
    chunk_size: int
    chunked_concurrency: int
    chunked_repeats: int
    # 3. single-stream pull
    single_size: int
    single_passes: int  # back-to-back GETs of the blob on one connection per sample
    single_repeats: int
    # 4. concurrent pulls
    many_count: int
    many_size: int
    many_passes: int  # GETs of its blob per connection per sample
    many_repeats: int
    # 5. manifest GET with wrk
    wrk_seconds: float
    wrk_threads: int
    wrk_connections: int
    wrk_repeats: int
    # 6. blob HEAD with ab
    ab_requests: int
    ab_connections: int
    ab_repeats: int
    # 7. tag listing
    tag_count: int
    tag_concurrency: int
    tag_page: int
    tag_walks: int
    # 8. small image pushes
    images: int
    image_concurrency: int
    image_repeats: int


QUICK = Plan(
    name="quick",
    mono_blobs=8,
    mono_size=32 * MiB,
    mono_concurrency=4,
    mono_repeats=1,
    chunked_blobs=8,
    chunked_size=32 * MiB,
    chunk_size=8 * MiB,
    chunked_concurrency=4,
    chunked_repeats=1,
    single_size=128 * MiB,
    single_passes=4,
    single_repeats=3,
    many_count=32,
    many_size=8 * MiB,
    many_passes=2,
    many_repeats=2,
    wrk_seconds=5,
    wrk_threads=2,
    wrk_connections=64,
    wrk_repeats=1,
    ab_requests=10_000,
    ab_connections=64,
    ab_repeats=1,
    tag_count=2_000,
    tag_concurrency=32,
    tag_page=100,
    tag_walks=3,
    images=200,
    image_concurrency=16,
    image_repeats=1,
)

FULL = Plan(
    name="full",
    mono_blobs=8,
    mono_size=64 * MiB,
    mono_concurrency=4,
    mono_repeats=3,
    chunked_blobs=8,
    chunked_size=64 * MiB,
    chunk_size=8 * MiB,
    chunked_concurrency=4,
    chunked_repeats=3,
    single_size=256 * MiB,
    single_passes=4,
    single_repeats=5,
    many_count=32,
    many_size=16 * MiB,
    many_passes=2,
    many_repeats=3,
    wrk_seconds=10,
    wrk_threads=2,
    wrk_connections=64,
    wrk_repeats=2,
    ab_requests=20_000,
    ab_connections=64,
    ab_repeats=2,
    tag_count=10_000,
    tag_concurrency=32,
    tag_page=100,
    tag_walks=3,
    images=500,
    image_concurrency=16,
    image_repeats=2,
)


@dataclass(frozen=True, slots=True)
class Metric:
    """One row of the table.

    `target` is the Moorage/Distribution ratio the project promises (at least it when higher is
    better, at most it otherwise); `absolute_target` bounds Moorage's own value instead.
    """

    key: str
    title: str
    unit: str
    higher_is_better: bool = True
    target: float | None = None
    absolute_target: float | None = None
    digits: int = 1


METRICS: tuple[Metric, ...] = (
    Metric("mono_push", "Monolithic push", "MiB/s", target=2.0),
    Metric("chunked_push", "Chunked push (8 MiB PATCH)", "MiB/s", target=2.0),
    Metric("single_pull", "Single-stream pull", "MiB/s", target=1.5),
    Metric("many_pull", "Concurrent pulls (32 streams)", "MiB/s", target=1.2),
    Metric("manifest_get", "Manifest GET (wrk, 64 conns)", "req/s", target=2.0, digits=0),
    Metric("blob_head", "Blob HEAD (ab, 64 conns)", "req/s", target=2.0, digits=0),
    Metric("tags_walk", "Tag list walk (n=100)", "s", higher_is_better=False, digits=3),
    Metric("tags_pages", "Tag list pages/s", "pages/s", digits=1),
    Metric("tags_create", "Tag PUTs while creating tags (setup)", "tags/s", digits=0),
    Metric("small_images", "Small image pushes (16 conc)", "images/s", target=1.5),
    Metric("rss_workers", "Peak RSS, sum of per-worker peaks", "MiB", higher_is_better=False),
    Metric("rss_total", "Peak RSS, all processes (+ supervisor)", "MiB", higher_is_better=False),
    Metric("pss_total", "Peak PSS, all processes at once", "MiB", higher_is_better=False),
    Metric(
        "rss_worker",
        "Peak RSS, largest worker",
        "MiB",
        higher_is_better=False,
        absolute_target=150.0,
    ),
)
