"""Coordination between the processes and nodes of one deployment.

- `base`: the `Coordination` protocol the services use: cross-node locks with a lease, one run
  per deployment for periodic jobs, broadcast invalidation of node-local caches, readiness.
- `local`: one machine (the embedded default): file locks in the data directory; every change
  is seen by the other workers when their caches expire (2 s).
- `redis`: several nodes sharing one Redis (`redis_url`).

`make_coordination(settings)` picks one.
"""

from __future__ import annotations

from moorage.config import Settings
from moorage.coordination.base import Coordination, HeldLock
from moorage.coordination.local import FileLocks, LocalCoordination
from moorage.coordination.redis import RedisCoordination, ping_redis

__all__ = [
    "Coordination",
    "FileLocks",
    "HeldLock",
    "LocalCoordination",
    "RedisCoordination",
    "make_coordination",
    "ping_redis",
]


def make_coordination(settings: Settings) -> Coordination:
    local = LocalCoordination(settings.data_dir / "locks" / "proxy")
    if settings.redis_url is None:
        return local
    return RedisCoordination(
        settings.redis_url.get_secret_value(), prefix=settings.redis_key_prefix, fallback=local
    )
