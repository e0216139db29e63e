"""Blob writes that garbage collection must respect, for every path that stores a blob.

Before a blob's bytes are committed to storage its row is claimed (created or touched), and it
is linked in a transaction that checks it is still live: a collection never deletes bytes a
request is about to reference, and a request never references bytes a collection is deleting
(it waits for that deletion to end, then writes them again). See docs/lifecycle.md.
"""

from __future__ import annotations

import asyncio
import time
from typing import Final

from moorage.domain.errors import ErrorCode, RegistryError
from moorage.metadata.registry.registry_records import BlobBeingCollectedError
from moorage.metadata.registry.store import MetadataStore
from moorage.services.threads import Threads

# How long a commit waits for a garbage collection to finish deleting the same digest (one
# batch takes seconds); past it the client is asked to retry.
_CLAIM_WAIT_SECONDS: Final = 30.0


def being_collected(digest: str) -> RegistryError:
    """The answer while garbage collection deletes the very blob a request needs."""
    return RegistryError(
        ErrorCode.UNAVAILABLE,
        f"blob {digest} is being garbage-collected right now: push it again",
        headers={"Retry-After": "5"},
    )


async def claim_blob(metadata: MetadataStore, threads: Threads, digest: str, size: int) -> None:
    """Keep garbage collection off `digest` before its bytes are committed to storage: wait
    while a collection is deleting that very blob (then its bytes can be written again)."""
    deadline = time.monotonic() + _CLAIM_WAIT_SECONDS
    delay = 0.05
    while not await threads.run(metadata.claim_blob, digest, size):
        if time.monotonic() >= deadline:
            raise being_collected(digest)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)


async def link_blob(
    metadata: MetadataStore, threads: Threads, repository: str, digest: str, size: int
) -> None:
    try:
        await threads.run(metadata.link_blob, repository, digest, size)
    except BlobBeingCollectedError:
        raise being_collected(digest) from None
