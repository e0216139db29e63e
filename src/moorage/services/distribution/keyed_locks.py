"""Locks by key: an asyncio lock in this process, created on first use and forgotten when
nobody holds or awaits it, then (when the deployment has several nodes) the deployment's lock
of the same key, so one holder in the whole deployment works on it at a time."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Hashable

from moorage.coordination.base import Coordination


class KeyedLocks:
    def __init__(self, coordination: Coordination | None = None, namespace: str = "") -> None:
        self._coordination = coordination
        self._namespace = namespace
        self._locks: dict[Hashable, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def held(self, key: tuple[object, ...]) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                if self._coordination is None:
                    yield
                    return
                name = ":".join([self._namespace, *(str(part) for part in key)])
                deployment = await self._coordination.lock(name)
                try:
                    yield
                finally:
                    deployment.release()
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)
