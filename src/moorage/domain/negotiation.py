"""`Accept` header negotiation for manifests."""

from __future__ import annotations

from collections.abc import Iterable

from moorage.domain import mediatypes as mt

# Docker clients of old send only the schema2 manifest type; an index stored for them is
# resolved to this platform's child when it has one, as Distribution does.
DEFAULT_PLATFORM = ("linux", "amd64")


def parse_accept(values: Iterable[str]) -> frozenset[str] | None:
    """The media types a client accepts; None means "anything" (no header or a wildcard)."""
    accepted: set[str] = set()
    for value in values:
        for item in value.split(","):
            media_type = mt.strip_parameters(item)
            if not media_type:
                continue
            if media_type in ("*/*", "application/*"):
                return None
            accepted.add(media_type)
    return frozenset(accepted) if accepted else None


def is_acceptable(media_type: str, accepted: frozenset[str] | None) -> bool:
    return accepted is None or media_type in accepted
