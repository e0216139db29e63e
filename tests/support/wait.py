"""Waiting for something to happen: poll a condition until it holds, or fail saying what."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 30.0,
    message: str | Callable[[], str] = "the condition",
    interval: float = 0.05,
) -> T:
    """Call `predicate` until it returns something truthy and return that; after `timeout`
    seconds fail with `message` (a callable is called then, to describe the last state).

    Timeouts are deadlines for a hang, not speed expectations: give them room for a busy
    machine, since a passing wait returns as soon as the condition holds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            what = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


async def wait_until_async(
    predicate: Callable[[], Awaitable[T]],
    timeout: float = 30.0,
    message: str | Callable[[], str] = "the condition",
    interval: float = 0.05,
) -> T:
    """`wait_until` inside an event loop, for a predicate that awaits."""
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            what = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(interval)
