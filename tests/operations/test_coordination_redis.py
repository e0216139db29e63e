"""The Redis coordination against a real redis-server: locks with a lease, one run per
deployment of a periodic job, broadcast cache invalidation, readiness, and what happens when
Redis is not there (locks fall back to this machine's, jobs skip, readiness fails)."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis as SyncRedis

from moorage.coordination import LocalCoordination, RedisCoordination, ping_redis
from moorage.coordination.base import ALL_CACHES
from moorage.services.cache import TtlCache, announce_invalidations, invalidated
from moorage.services.distribution.replication_referrers import Referrers
from moorage.services.distribution.replication_types import ReplicationOptions
from tests.support.processes import kill_group, spawn
from tests.support.server import free_port
from tests.support.services import RedisServer
from tests.support.wait import wait_until_async

pytestmark = pytest.mark.tools("redis-server")


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def node(
    redis_server: RedisServer, tmp_path: Path, prefix: str, lease: float = 10.0
) -> RedisCoordination:
    return RedisCoordination(
        redis_server.url,
        prefix=prefix,
        fallback=LocalCoordination(tmp_path / "locks"),
        lease_seconds=lease,
    )


def test_a_lock_is_held_by_one_node_at_a_time(redis_server: RedisServer, tmp_path: Path) -> None:
    async def scenario() -> list[str]:
        # Separate lock directories: only Redis can order the two nodes.
        a = node(redis_server, tmp_path / "a", "held:")
        b = node(redis_server, tmp_path / "b", "held:")
        order: list[str] = []
        try:

            async def critical(coordination: RedisCoordination, name: str) -> None:
                held = await coordination.lock("object")
                order.append(f"{name} in")
                await asyncio.sleep(0)  # let the others try while this one holds it
                await asyncio.sleep(0.05)
                order.append(f"{name} out")
                held.release()

            await asyncio.gather(*(critical(n, f"{i}") for i, n in enumerate([a, b] * 5)))
        finally:
            await a.close()
            await b.close()
        return order

    order = asyncio.run(scenario())
    assert len(order) == 20
    # Never two inside at once: every "in" is followed by its own "out".
    for index in range(0, 20, 2):
        assert order[index].endswith(" in")
        assert order[index + 1] == order[index].replace(" in", " out")


def test_a_holder_keeps_its_lock_past_the_lease_while_it_lives(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async def scenario() -> None:
        a = node(redis_server, tmp_path / "a", "renewed:", lease=0.6)
        b = node(redis_server, tmp_path / "b", "renewed:", lease=0.6)
        try:
            held = await a.lock("object")
            # Three leases long: without renewal the key would have expired twice over.
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(1.8):
                    await b.lock("object")
            held.release()
            async with asyncio.timeout(30):
                (await b.lock("object")).release()
        finally:
            await a.close()
            await b.close()

    asyncio.run(scenario())


HOLDER = """
import asyncio, sys
from pathlib import Path
from moorage.coordination import LocalCoordination, RedisCoordination

async def main() -> None:
    coordination = RedisCoordination(
        sys.argv[1], prefix="killed:", fallback=LocalCoordination(Path(sys.argv[2])),
        lease_seconds=1.0,
    )
    await coordination.lock("object")
    print("held", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def test_a_lock_of_a_killed_holder_expires_and_the_next_takes_it(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    holder = spawn(
        [sys.executable, "-c", textwrap.dedent(HOLDER), redis_server.url, str(tmp_path / "holder")],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == b"held"
        kill_group(holder)  # SIGKILL: no release, no more renewals
    finally:
        holder.wait()

    async def scenario() -> None:
        b = node(redis_server, tmp_path / "b", "killed:")
        try:
            async with asyncio.timeout(60):
                (await b.lock("object")).release()
        finally:
            await b.close()

    asyncio.run(scenario())


def test_a_periodic_job_runs_once_per_interval_in_the_whole_deployment(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async def scenario() -> list[bool]:
        nodes = [node(redis_server, tmp_path / str(i), "once:") for i in range(4)]
        try:
            return await asyncio.gather(
                *(n.run_once("purge", 3600) for n in nodes for _ in range(5))
            )
        finally:
            for n in nodes:
                await n.close()

    assert sorted(asyncio.run(scenario())) == [False] * 19 + [True]


def test_clearing_a_cache_clears_it_on_every_other_node(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # An hour-long expiry: only the message can make the other node forget.
    cache = TtlCache(3600, name="coordination-test-facts")
    other = TtlCache(3600, name="coordination-test-other")
    loads = itertools.count(1)

    async def scenario() -> None:
        changer = node(redis_server, tmp_path / "a", "broadcast:")
        receiver = node(redis_server, tmp_path / "b", "broadcast:")
        seen: list[str] = []

        def received(name: str) -> None:
            seen.append(name)
            invalidated(name)

        await changer.start(lambda _name: None)
        await receiver.start(received)
        try:
            await _until_heard(changer, seen)
            cached = cache.get_or_load("fact", lambda: next(loads))
            assert other.get_or_load("x", lambda: "kept") == "kept"
            assert cache.get_or_load("fact", lambda: next(loads)) == cached
            announce_invalidations(changer.invalidate)
            try:
                # The owner's clear() (here from a thread, as services do) reaches the other node.
                await asyncio.to_thread(TtlCache(3600, name="coordination-test-facts").clear)

                async def forgotten() -> bool:
                    return cache.get_or_load("fact", lambda: next(loads)) != cached

                await wait_until_async(forgotten, 30, "the cache to be cleared by the broadcast")
                assert other.get_or_load("x", lambda: "reloaded") == "kept"
            finally:
                announce_invalidations(None)
        finally:
            await changer.close()
            await receiver.close()

    asyncio.run(scenario())


async def _until_heard(sender: RedisCoordination, seen: list[str]) -> None:
    """The receiver subscribes in the background: announce a probe until it has heard one."""

    async def heard() -> bool:
        sender.invalidate("coordination-test-probe")
        await asyncio.sleep(0.1)
        return "coordination-test-probe" in seen

    await wait_until_async(heard, 30, "the receiver to hear an invalidation")


def test_messages_from_strangers_on_the_channel_are_ignored(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async def scenario() -> list[str]:
        receiver = node(redis_server, tmp_path / "b", "strangers:")
        seen: list[str] = []
        await receiver.start(seen.append)
        sender = node(redis_server, tmp_path / "a", "strangers:")
        await sender.start(lambda _name: None)
        publisher = SyncRedis.from_url(redis_server.url)
        try:
            await _until_heard(sender, seen)  # subscribed
            seen.clear()
            for garbage in [b"\xff\xfe", b"[]", b'{"names": 5}', b'{"names": [1, null]}', b"{"]:
                publisher.publish("strangers:invalidate", garbage)
            # Still listening after the garbage, and it produced nothing.
            await _until_heard(sender, seen)
        finally:
            publisher.close()
            await sender.close()
            await receiver.close()
        return seen

    seen = asyncio.run(scenario())
    assert set(seen) == {"coordination-test-probe"}


def test_readiness_answers_while_redis_does_and_fails_when_it_is_gone(tmp_path: Path) -> None:
    server = RedisServer().start()
    try:
        assert asyncio.run(ping_redis(server.url, 5))

        async def up() -> bool:
            coordination = RedisCoordination(
                server.url, fallback=LocalCoordination(tmp_path / "locks")
            )
            try:
                return await coordination.ping(within=5)
            finally:
                await coordination.close()

        assert asyncio.run(up())
    finally:
        server.stop()
    assert not asyncio.run(ping_redis(server.url, 2))


def test_without_redis_locks_fall_back_to_this_machine_and_jobs_skip(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there

    async def scenario() -> None:
        fallback = LocalCoordination(tmp_path / "locks")
        coordination = RedisCoordination(url, fallback=fallback)
        await coordination.start(lambda _name: None)
        try:
            assert not await coordination.ping(within=2)
            held = await coordination.lock("object")
            # The fallback is this machine's file lock: a second taker waits for it.
            assert fallback.files.try_acquire("object") is None
            held.release()
            fd = fallback.files.try_acquire("object")
            assert fd is not None
            fallback.files.release(fd)
            # Periodic jobs skip a turn rather than run on every node.
            assert not await coordination.run_once("purge", 60)
            coordination.invalidate("anything")  # dropped, never raises
        finally:
            await coordination.close()

    asyncio.run(scenario())


def test_a_node_that_lost_redis_clears_everything_when_it_is_back_and_hears_again(
    tmp_path: Path,
) -> None:
    server = RedisServer().start()
    restarted = RedisServer(port=server.port)

    async def scenario() -> None:
        changer = RedisCoordination(server.url, fallback=LocalCoordination(tmp_path / "a"))
        receiver = RedisCoordination(server.url, fallback=LocalCoordination(tmp_path / "b"))
        seen: list[str] = []
        await changer.start(lambda _name: None)
        await receiver.start(seen.append)
        try:
            await _until_heard(changer, seen)
            await asyncio.to_thread(server.stop)
            seen.clear()
            changer.invalidate("made-while-redis-was-down")  # lost with Redis
            await asyncio.to_thread(restarted.start)

            async def cleared_all() -> bool:
                return ALL_CACHES in seen

            # So the receiver forgets everything once it is subscribed again...
            await wait_until_async(cleared_all, 60, "a clear-all after the reconnect")
            # ...and hears the next change.
            await _until_heard(changer, seen)
        finally:
            await changer.close()
            await receiver.close()

    try:
        asyncio.run(scenario())
    finally:
        server.stop()
        restarted.stop()


def test_a_command_that_changes_something_and_exits_still_tells_the_nodes(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async def scenario() -> list[str]:
        receiver = node(redis_server, tmp_path / "b", "command:")
        seen: list[str] = []
        await receiver.start(seen.append)
        try:
            probe = node(redis_server, tmp_path / "p", "command:")
            await probe.start(lambda _name: None)
            await _until_heard(probe, seen)
            await probe.close()
            # A `moorage …` command: start, change, close at once.
            command = node(redis_server, tmp_path / "a", "command:")
            await command.start(lambda _name: None)
            await asyncio.to_thread(command.invalidate, "changed-by-a-command")
            await command.close()

            async def heard() -> bool:
                return "changed-by-a-command" in seen

            await wait_until_async(heard, 30, "the command's invalidation")
        finally:
            await receiver.close()
        return seen

    asyncio.run(scenario())


def test_the_referrers_tag_of_a_remote_is_merged_by_one_node_at_a_time(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Replication merges a remote's referrers tag by read, merge, write: two nodes replicating
    referrers of one subject to one remote must take turns."""

    async def scenario() -> list[str]:
        a = node(redis_server, tmp_path / "a", "referrers:")
        b = node(redis_server, tmp_path / "b", "referrers:")
        # Only the lock is used here; the collaborators of the transfer are not needed.
        nodes = [
            Referrers(None, None, None, None, ReplicationOptions(coordination=c))  # type: ignore[arg-type]
            for c in (a, b)
        ]
        order: list[str] = []

        async def merge(index: int) -> None:
            referrers = nodes[index % 2]
            async with referrers._tag_locks.held((1, "team/app", "sha256:" + "a" * 64)):
                order.append(f"{index} in")
                await asyncio.sleep(0.02)
                order.append(f"{index} out")

        try:
            await asyncio.gather(*(merge(index) for index in range(8)))
        finally:
            await a.close()
            await b.close()
        return order

    order = asyncio.run(scenario())
    assert len(order) == 16
    for index in range(0, 16, 2):
        assert order[index + 1] == order[index].replace(" in", " out")
