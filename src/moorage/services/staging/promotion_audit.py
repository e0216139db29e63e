"""The one audit entry of each promotion attempt: `promotion:create`, with result `success` or
`denied`. Every refusal is audited, whatever refused it (a gate, the source's pull policies,
an immutable tag, a permission, a missing source or project); a dry run only asks and is not."""

from __future__ import annotations

from collections.abc import Sequence

from moorage.domain.events import AccessEvent, Actor
from moorage.domain.names import project_of
from moorage.domain.promotion import (
    MAX_REASON_LENGTH,
    DestinationReference,
    GateResult,
    SourceReference,
)
from moorage.metadata.staging.promotion_store import PromotionRecord

ACTION = "promotion:create"


def promotion_event(
    actor: Actor,
    result: str,
    source: SourceReference,
    destination: DestinationReference,
    digest: str | None,
    results: Sequence[GateResult] = (),
    *,
    record: PromotionRecord | None = None,
    reason: str | None = None,
) -> AccessEvent:
    resource = f"{destination}@{digest}" if digest is not None else str(destination)
    return AccessEvent(
        ACTION,
        actor,
        result,
        project_of(destination.repository),
        resource,
        {
            "source": str(source),
            "destination": str(destination),
            "digest": digest,
            "gates": [gate.as_dict() for gate in results],
            "promotion": record.id if record is not None else None,
            "record": record.record_digest if record is not None else None,
            "reason": reason[:MAX_REASON_LENGTH] if reason is not None else None,
        },
    )
