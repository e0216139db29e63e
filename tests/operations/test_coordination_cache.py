"""Node-local caches under invalidation: a clear reaches every cache of that name in the process
(and, through the announcer, the other processes), never a cache of another name, and a value
loaded while a clear happened is not kept (it may predate the change)."""

from __future__ import annotations

import itertools

from moorage.coordination.base import ALL_CACHES
from moorage.services.cache import TtlCache, announce_invalidations, invalidated


def test_a_value_loaded_across_a_clear_is_returned_but_not_kept() -> None:
    cache = TtlCache(3600, name="cache-test-race")
    loads = itertools.count(1)

    def load_while_changed() -> int:
        value = next(loads)
        cache.forget()  # the change (and its invalidation) lands while this load runs
        return value

    assert cache.get_or_load("key", load_while_changed) == 1
    assert cache.get_or_load("key", lambda: next(loads)) == 2  # loaded again
    assert cache.get_or_load("key", lambda: next(loads)) == 2  # and now kept


def test_an_invalidation_clears_every_cache_of_its_name_and_no_other() -> None:
    first = TtlCache(3600, name="cache-test-named")
    second = TtlCache(3600, name="cache-test-named")
    other = TtlCache(3600, name="cache-test-unrelated")
    for cache in (first, second, other):
        cache.get_or_load("key", lambda: "old")
    invalidated("cache-test-named")
    assert first.get_or_load("key", lambda: "new") == "new"
    assert second.get_or_load("key", lambda: "new") == "new"
    assert other.get_or_load("key", lambda: "new") == "old"
    invalidated(ALL_CACHES)  # after a lost subscription
    assert other.get_or_load("key", lambda: "newer") == "newer"
    invalidated("cache-test-no-such-cache")  # harmless


def test_clear_announces_its_name_and_a_received_invalidation_is_not_announced_again() -> None:
    announced: list[str] = []
    cache = TtlCache(3600, name="cache-test-announced")
    announce_invalidations(announced.append)
    try:
        cache.clear()
        invalidated("cache-test-announced")  # from another node: no echo back
    finally:
        announce_invalidations(None)
    cache.clear()  # nobody to tell
    assert announced == ["cache-test-announced"]
