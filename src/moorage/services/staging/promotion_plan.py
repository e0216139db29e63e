"""What crosses in a promotion: the closure of the promoted digest, and how each part is judged.

The closure is every manifest the promotion links into the destination:

- the promoted manifest;
- every manifest it reaches through index children, at any depth;
- for every manifest in the closure, its referrers (what `GET /v2/<source>/referrers/<digest>`
  lists) and cosign's `sha256-<hex>.sig/.att/.sbom` tags of it, and theirs in turn, at any
  depth (a signature on an SBOM on a child image).

Each manifest is classified by its own content (`moorage.domain.content`), never by a tag, a
descriptor's `artifactType` or its `subject`. The gates judge every runnable image of the
closure; an index stands or falls with what it reaches. Artifacts (signatures, SBOMs,
attestations, records, and any other manifest no runtime can run) are linked as they are: they
cannot be run, and the images they describe are judged on their own. The same plan is what is
linked, so nothing crosses that was not judged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from moorage.domain.content import ManifestKind, classify_body
from moorage.domain.digest import Digest
from moorage.domain.errors import ErrorCode, RegistryError
from moorage.domain.manifest import parse_manifest
from moorage.metadata.registry.registry_records import ManifestRecord
from moorage.metadata.registry.store import MetadataStore
from moorage.services.errors import IdentityError

MAX_LINKED_MANIFESTS: Final = 1000
MAX_REFERRERS_PER_SUBJECT: Final = 200
COSIGN_SUFFIXES: Final = (".sig", ".att", ".sbom")


@dataclass
class Plan:
    """Manifests to link (children before their index, referrers after their subject), the
    blobs they need, the tags to set, and what the gates judge."""

    manifests: list[str] = field(default_factory=list)
    blobs: list[str] = field(default_factory=list)
    tags: list[tuple[str, str]] = field(default_factory=list)
    keep_tags: set[str] = field(default_factory=set)
    kinds: dict[str, ManifestKind] = field(default_factory=dict)
    # Reached from the promoted digest through index children only: a signature of the
    # promoted digest pins each of them by digest.
    under_top: set[str] = field(default_factory=set)

    @property
    def images(self) -> list[str]:
        """Every runnable image that crosses, in link order."""
        return [digest for digest in self.manifests if self.kinds[digest] is ManifestKind.IMAGE]


class _Planner:
    def __init__(self, metadata: MetadataStore, source: str) -> None:
        self._metadata = metadata
        self._source = source
        self._blobs: dict[str, None] = {}
        self.plan = Plan()
        self._queue: list[str] = []

    def add(self, digest: str, *, under_top: bool) -> None:
        """Put `digest` (after its children) into the plan and queue it for its referrers."""
        if under_top:
            self.plan.under_top.add(digest)
        if digest in self.plan.kinds:
            return
        if len(self.plan.kinds) >= MAX_LINKED_MANIFESTS:
            raise IdentityError(f"a promotion links at most {MAX_LINKED_MANIFESTS} manifests", 422)
        record = self._metadata.resolve_digest(self._source, digest)
        body = self._metadata.manifest_body(digest)
        if record is None or body is None:
            raise RegistryError(
                ErrorCode.MANIFEST_UNKNOWN, f"{self._source} does not hold {digest}", status=404
            )
        parsed = parse_manifest(body, record.media_type, Digest.parse(digest))
        # Marked before the children are walked, so a repeated digest is visited once.
        self.plan.kinds[digest] = classify_body(body, record.media_type).kind
        for child in parsed.children:
            self.add(str(child.digest), under_top=under_top)
        for blob in parsed.required_blobs():
            self._blobs[str(blob)] = None
        self.plan.manifests.append(digest)
        self._queue.append(digest)

    def attachments(self) -> None:
        """Referrers and cosign tags of everything planned, until nothing new turns up."""
        position = 0
        while position < len(self._queue):
            subject = self._queue[position]
            position += 1
            for record in self._metadata.referrers(
                self._source, subject, None, None, MAX_REFERRERS_PER_SUBJECT
            ):
                self.add(record.digest, under_top=False)
            for suffix in COSIGN_SUFFIXES:
                tag = subject.replace(":", "-") + suffix
                found = self._metadata.resolve_tag(self._source, tag)
                if found is not None:
                    self.add(found.digest, under_top=False)
                    self.plan.tags.append((tag, found.digest))
                    self.plan.keep_tags.add(tag)

    def finish(self) -> Plan:
        self.plan.blobs = list(self._blobs)
        return self.plan


def plan_promotion(
    metadata: MetadataStore, source: str, destination_tag: str, top: ManifestRecord
) -> Plan:
    """The closure of `top` in the `source` repository, ready to link. Blocking."""
    planner = _Planner(metadata, source)
    planner.add(top.digest, under_top=True)
    planner.attachments()
    plan = planner.finish()
    plan.tags.append((destination_tag, top.digest))
    return plan
