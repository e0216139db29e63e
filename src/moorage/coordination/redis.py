"""Coordination of several nodes through one Redis.

- Locks: `SET key token NX PX lease`, renewed by the holder every third of the lease and
  deleted by it (only if still its token) when done; a holder that dies stops renewing, so
  the lock expires and a waiter takes over. Waiters poll (one per process: the in-process
  single flight stands in front).
- Periodic jobs: `SET once:<job> NX PX <interval>`; whoever sets it runs this turn.
- Invalidation: PUBLISH of cache names on one channel; every process clears those caches. A
  process that lost its subscription clears all its caches when it is back, since messages
  may have been missed meanwhile.

When Redis does not answer, locks fall back to the node-local ones (at worst one fetch per
node; the content is verified and committed by digest, so never a corrupt copy), periodic jobs
skip their turn, and invalidations are dropped (caches still expire within 2 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Coroutine
from typing import Any, Final

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from moorage.coordination.base import ALL_CACHES, HeldLock, Invalidated
from moorage.coordination.local import LocalCoordination

log = logging.getLogger(__name__)

LOCK_LEASE_SECONDS: Final = 10.0
_POLL_SECONDS: Final = 0.05
_TIMEOUT_SECONDS: Final = 2.0
_RESUBSCRIBE_SECONDS: Final = 1.0

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""

_OUTAGE = (RedisError, OSError, TimeoutError)


class _RedisLock:
    def __init__(self, owner: RedisCoordination, key: str, token: str) -> None:
        self._owner = owner
        self._key = key
        self._token = token
        self._renewer = asyncio.create_task(owner._renew(key, token))
        self._released = False

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        self._renewer.cancel()
        self._owner._background(self._owner._release(self._key, self._token))


class RedisCoordination:
    def __init__(
        self,
        url: str,
        *,
        prefix: str = "moorage:",
        fallback: LocalCoordination,
        lease_seconds: float = LOCK_LEASE_SECONDS,
    ) -> None:
        self._url = url
        self._prefix = prefix
        self._fallback = fallback
        self._lease_ms = int(lease_seconds * 1000)
        self._client = aioredis.Redis.from_url(
            url, socket_timeout=_TIMEOUT_SECONDS, socket_connect_timeout=_TIMEOUT_SECONDS
        )
        self._renew_script = self._client.register_script(_RENEW)
        self._release_script = self._client.register_script(_RELEASE)
        self._node = secrets.token_hex(8)  # this process: its own messages come back
        self._channel = f"{prefix}invalidate"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: set[str] = set()
        self._wake = asyncio.Event()
        self._publisher: asyncio.Task[None] | None = None
        self._closing = False
        self._loops: set[asyncio.Task[Any]] = set()  # subscribing (and, on close, publishing)
        self._tasks: set[asyncio.Task[Any]] = set()  # releases: short, let finish on close
        self._warned_at = 0.0

    # -- lifecycle

    async def start(self, on_invalidated: Invalidated) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._closing = False
        self._publisher = asyncio.create_task(self._publish_loop())
        self._loops.add(asyncio.create_task(self._subscribe_loop(on_invalidated)))

    async def close(self) -> None:
        self._loop = None
        self._closing = True  # the loops also stop on their own within a second
        if self._publisher is not None:
            # A command (`moorage member …`) changes something and closes at once: its
            # invalidations go out before it does.
            self._wake.set()
            await asyncio.wait([self._publisher], timeout=_TIMEOUT_SECONDS)
            self._loops.add(self._publisher)
        for task in self._loops:
            task.cancel()
        # Bounded: a subscription cancelled while it connects can take long to let go, and
        # shutting down must not wait for it.
        if self._loops:
            await asyncio.wait(self._loops, timeout=_TIMEOUT_SECONDS)
        # Locks released just before shutdown: delete them now rather than leave the other
        # nodes waiting for their lease.
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=_TIMEOUT_SECONDS)
        await self._client.aclose()

    def _background(self, work: Coroutine[Any, Any, object]) -> None:
        try:
            task = asyncio.get_running_loop().create_task(work)
        except RuntimeError:  # no loop any more (shutdown): the lease will run out
            work.close()
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _outage(self, what: str, error: BaseException) -> None:
        # One warning per 30 s: an outage must not flood the log, nor pass unnoticed.
        now = time.monotonic()
        if now - self._warned_at > 30:
            self._warned_at = now
            # The error names host and port at most; the URL (and its password) never.
            log.warning("redis unavailable (%s): %s: %s", what, type(error).__name__, error)

    # -- locks

    async def lock(self, key: str) -> HeldLock:
        name = f"{self._prefix}lock:{key}"
        token = secrets.token_hex(16)
        try:
            while True:
                if await self._client.set(name, token, nx=True, px=self._lease_ms):
                    break
                await asyncio.sleep(_POLL_SECONDS)
        except _OUTAGE as error:
            self._outage("lock; falling back to this node's lock", error)
            return await self._fallback.lock(key)
        return _RedisLock(self, name, token)

    async def _renew(self, name: str, token: str) -> None:
        while True:
            await asyncio.sleep(self._lease_ms / 3000)
            try:
                kept = await self._renew_script(keys=[name], args=[token, self._lease_ms])
            except _OUTAGE as error:
                self._outage("lock renewal", error)
                continue
            if not kept:
                log.warning("lost the lease of %s (another node may now run the same work)", name)
                return

    async def _release(self, name: str, token: str) -> None:
        try:
            await self._release_script(keys=[name], args=[token])
        except _OUTAGE as error:
            self._outage("lock release; it expires with its lease", error)

    # -- periodic jobs

    async def run_once(self, job: str, seconds: float) -> bool:
        try:
            won = await self._client.set(
                f"{self._prefix}once:{job}", self._node, nx=True, px=max(int(seconds * 1000), 1)
            )
        except _OUTAGE as error:
            self._outage(f"periodic job {job} skips this turn", error)
            return False
        return bool(won)

    # -- invalidation

    def invalidate(self, name: str) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(self._queue, name)

    def _queue(self, name: str) -> None:
        self._pending.add(name)
        self._wake.set()

    async def _publish_loop(self) -> None:
        while not self._closing:
            await self._wake.wait()
            self._wake.clear()
            await self._publish_pending()

    async def _publish_pending(self) -> None:
        if not self._pending:
            return
        # Everything queued while the last message was on its way goes in one message.
        names, self._pending = sorted(self._pending), set()
        message = json.dumps({"from": self._node, "names": names})
        try:
            await self._client.publish(self._channel, message)
        except _OUTAGE as error:
            self._outage("invalidation dropped; caches expire on their own", error)

    async def _subscribe_loop(self, on_invalidated: Invalidated) -> None:
        first = True
        while not self._closing:
            # A connection of its own, without a read timeout: it mostly waits.
            client = aioredis.Redis.from_url(
                self._url, socket_connect_timeout=_TIMEOUT_SECONDS, health_check_interval=5
            )
            try:
                async with client.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self._channel)
                    if not first:
                        on_invalidated(ALL_CACHES)  # messages may have been missed
                    first = False
                    while not self._closing:
                        message = await pubsub.get_message(timeout=1.0)
                        if message is not None:
                            self._received(message.get("data"), on_invalidated)
            except _OUTAGE as error:
                self._outage("invalidation subscription", error)
                first = False
            finally:
                with contextlib.suppress(*_OUTAGE):
                    await client.aclose()
            await asyncio.sleep(_RESUBSCRIBE_SECONDS)

    def _received(self, data: object, on_invalidated: Invalidated) -> None:
        try:
            decoded = json.loads(data) if isinstance(data, bytes | str) else None
        except ValueError:
            return
        if not isinstance(decoded, dict) or decoded.get("from") == self._node:
            return
        names = decoded.get("names")
        for name in names if isinstance(names, list) else ():
            if isinstance(name, str):
                on_invalidated(name)

    # -- readiness

    async def ping(self, within: float) -> bool:
        try:
            async with asyncio.timeout(within):
                return bool(await self._client.ping())
        except _OUTAGE:
            return False


async def ping_redis(url: str, within: float) -> bool:
    """Whether the Redis at `url` answers PING within `within` seconds (readiness)."""
    client = aioredis.Redis.from_url(url, socket_timeout=within, socket_connect_timeout=within)
    try:
        async with asyncio.timeout(within):
            return bool(await client.ping())
    except _OUTAGE:
        return False
    finally:
        with contextlib.suppress(*_OUTAGE):
            await client.aclose()
