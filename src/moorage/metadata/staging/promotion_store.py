"""SQL access for promotion: stages, gates, approvals and promotion records.

Synchronous; returns plain records. A promotion's links (manifests, blobs, tags) and its record
are committed in one transaction (`commit`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, Row, Table, delete, select
from sqlalchemy.exc import IntegrityError

from moorage.domain.manifest import ParsedManifest
from moorage.domain.promotion import ANNOTATION_PROMOTION, DSSE_ENVELOPE_TYPE
from moorage.metadata.access.iam_models import Project, ProxyUpstreamRow
from moorage.metadata.database import read_transaction, write_transaction
from moorage.metadata.registry.models import utcnow
from moorage.metadata.registry.registry_records import ManifestLinks
from moorage.metadata.registry.store import MetadataStore
from moorage.metadata.staging.promotion_models import (
    ProjectStageRow,
    PromotionApprovalRow,
    PromotionGatesRow,
    PromotionRow,
)


class ProjectNotFoundError(Exception):
    pass


class ProxyCacheConflictError(Exception):
    """The project is a proxy cache (of `url`), so it cannot become promotion-only."""

    def __init__(self, project: str, url: str) -> None:
        super().__init__(f"project {project} is a proxy cache of {url}")
        self.url = url


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


@dataclass(frozen=True, slots=True)
class StageRecord:
    project: str
    stage: str | None
    promotion_only: bool
    updated_by: str | None
    updated_at: datetime | None


@dataclass(frozen=True, slots=True)
class GatesRecord:
    project: str
    gates: list[dict[str, Any]]
    updated_by: str | None
    updated_at: datetime | None


@dataclass(frozen=True, slots=True)
class ApprovalRecord:
    id: int
    project: str
    digest: str
    approver_id: int
    approver: str
    comment: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class NewPromotion:
    destination_project: str
    destination_repository: str
    tag: str
    digest: str
    media_type: str
    source_repository: str
    source_reference: str
    requester: str
    requester_kind: str
    gates: list[dict[str, Any]]
    record_digest: str
    envelope: bytes
    created_at: datetime


@dataclass(frozen=True, slots=True)
class PromotionRecord(NewPromotion):
    id: int


@dataclass(frozen=True, slots=True)
class RecordManifest:
    """The signed record's referrer manifest, committed with the promotion it records."""

    manifest: ParsedManifest
    body: bytes


_promotions: Table = PromotionRow.__table__  # type: ignore[assignment]
_approvals: Table = PromotionApprovalRow.__table__  # type: ignore[assignment]
_stages: Table = ProjectStageRow.__table__  # type: ignore[assignment]
_gates: Table = PromotionGatesRow.__table__  # type: ignore[assignment]


def _promotion(row: Row[Any]) -> PromotionRecord:
    values = row._mapping
    return PromotionRecord(
        id=int(values["id"]),
        destination_project=values["destination_project"],
        destination_repository=values["destination_repository"],
        tag=values["tag"],
        digest=values["digest"],
        media_type=values["media_type"],
        source_repository=values["source_repository"],
        source_reference=values["source_reference"],
        requester=values["requester"],
        requester_kind=values["requester_kind"],
        gates=list(values["gates"]),
        record_digest=values["record_digest"],
        envelope=bytes(values["envelope"]),
        created_at=_utc(values["created_at"]),
    )


class PromotionStore:
    def __init__(self, engine: Engine, metadata: MetadataStore) -> None:
        self._engine = engine
        self._metadata = metadata

    @staticmethod
    def _project_id(session: Any, project: str) -> int:
        found: int | None = session.execute(
            select(Project.id).where(Project.name == project)
        ).scalar()
        if found is None:
            raise ProjectNotFoundError(f"project {project} not found")
        return found

    # -- stages

    def stage(self, project: str) -> StageRecord:
        with read_transaction(self._engine) as connection:
            project_id = self._project_id(connection, project)
            row = connection.execute(
                select(
                    ProjectStageRow.stage,
                    ProjectStageRow.promotion_only,
                    ProjectStageRow.updated_by,
                    ProjectStageRow.updated_at,
                ).where(ProjectStageRow.project_id == project_id)
            ).first()
        if row is None:
            return StageRecord(project, None, False, None, None)
        return StageRecord(project, row[0], bool(row[1]), row[2], _utc(row[3]))

    def stages(self, projects: Sequence[str]) -> dict[str, StageRecord]:
        """The stage of each named project that has one."""
        if not projects:
            return {}
        with read_transaction(self._engine) as connection:
            rows = connection.execute(
                select(
                    Project.name,
                    ProjectStageRow.stage,
                    ProjectStageRow.promotion_only,
                    ProjectStageRow.updated_by,
                    ProjectStageRow.updated_at,
                )
                .join(ProjectStageRow, ProjectStageRow.project_id == Project.id)
                .where(Project.name.in_(list(projects)))
            ).all()
        return {
            row[0]: StageRecord(row[0], row[1], bool(row[2]), row[3], _utc(row[4])) for row in rows
        }

    def set_stage(
        self, project: str, stage: str | None, promotion_only: bool, actor: str
    ) -> tuple[StageRecord, StageRecord]:
        """(before, after)."""
        previous = self.stage(project)
        now = utcnow()
        with write_transaction(self._engine) as connection:
            project_id = self._project_id(connection, project)
            if promotion_only:
                # Promotion-only and proxy-cache exclude each other. The proxy configuration
                # is read inside this write transaction, and `IamStore.set_proxy_upstream`
                # reads the stage inside its own: SQLite runs write transactions one at a
                # time, and on PostgreSQL both lock the project row first, so whichever
                # commits second sees the other's change and is refused.
                connection.execute(
                    select(Project.id).where(Project.id == project_id).with_for_update()
                )
                url = connection.execute(
                    select(ProxyUpstreamRow.url).where(ProxyUpstreamRow.project_id == project_id)
                ).scalar()
                if url is not None:
                    raise ProxyCacheConflictError(project, url)
            connection.execute(
                delete(ProjectStageRow).where(ProjectStageRow.project_id == project_id)
            )
            if stage is not None or promotion_only:
                connection.execute(
                    _stages.insert().values(
                        project_id=project_id,
                        stage=stage,
                        promotion_only=promotion_only,
                        updated_by=actor,
                        updated_at=now,
                    )
                )
        return previous, StageRecord(project, stage, promotion_only, actor, now)

    # -- gates

    def gates(self, project: str) -> GatesRecord:
        with read_transaction(self._engine) as connection:
            project_id = self._project_id(connection, project)
            row = connection.execute(
                select(
                    PromotionGatesRow.gates,
                    PromotionGatesRow.updated_by,
                    PromotionGatesRow.updated_at,
                ).where(PromotionGatesRow.project_id == project_id)
            ).first()
        if row is None:
            return GatesRecord(project, [], None, None)
        return GatesRecord(project, list(row[0]), row[1], _utc(row[2]))

    def set_gates(
        self, project: str, gates: list[dict[str, Any]], actor: str
    ) -> tuple[GatesRecord, GatesRecord]:
        previous = self.gates(project)
        now = utcnow()
        with write_transaction(self._engine) as connection:
            project_id = self._project_id(connection, project)
            connection.execute(
                delete(PromotionGatesRow).where(PromotionGatesRow.project_id == project_id)
            )
            connection.execute(
                _gates.insert().values(
                    project_id=project_id, gates=gates, updated_by=actor, updated_at=now
                )
            )
        return previous, GatesRecord(project, gates, actor, now)

    # -- approvals

    def add_approval(
        self, project: str, digest: str, approver_id: int, approver: str, comment: str | None
    ) -> tuple[ApprovalRecord, bool]:
        """(the approval, whether it is new): approving twice keeps the first."""
        try:
            with write_transaction(self._engine) as connection:
                project_id = self._project_id(connection, project)
                connection.execute(
                    _approvals.insert().values(
                        project_id=project_id,
                        digest=digest,
                        approver_id=approver_id,
                        approver=approver,
                        comment=comment,
                        created_at=utcnow(),
                    )
                )
            created = True
        except IntegrityError:
            created = False
        found = [a for a in self.approvals(project, digest) if a.approver_id == approver_id]
        return found[0], created

    def approvals(self, project: str, digest: str, limit: int = 100) -> list[ApprovalRecord]:
        with read_transaction(self._engine) as connection:
            project_id = self._project_id(connection, project)
            rows = connection.execute(
                select(
                    _approvals.c.id,
                    _approvals.c.approver_id,
                    _approvals.c.approver,
                    _approvals.c.comment,
                    _approvals.c.created_at,
                )
                .where(_approvals.c.project_id == project_id, _approvals.c.digest == digest)
                .order_by(_approvals.c.id)
                .limit(limit)
            ).all()
        return [
            ApprovalRecord(row[0], project, digest, row[1], row[2], row[3], _utc(row[4]))
            for row in rows
        ]

    # -- promotions

    def latest(self, repository: str, tag: str, digest: str) -> PromotionRecord | None:
        """The newest promotion of `digest` to `repository:tag`."""
        with read_transaction(self._engine) as connection:
            return self._latest_in(connection, repository, tag, digest)

    @staticmethod
    def _latest_in(
        connection: Connection, repository: str, tag: str, digest: str
    ) -> PromotionRecord | None:
        row = connection.execute(
            select(_promotions)
            .where(
                _promotions.c.destination_repository == repository,
                _promotions.c.tag == tag,
                _promotions.c.digest == digest,
            )
            .order_by(_promotions.c.id.desc())
            .limit(1)
        ).first()
        return _promotion(row) if row is not None else None

    def commit(
        self, links: ManifestLinks, promotion: NewPromotion, record: RecordManifest
    ) -> tuple[PromotionRecord, bool]:
        """Link the manifests, attach the signed record as a referrer and store the promotion,
        in one transaction: a promotion that does not commit leaves no record behind.

        When the tag already points at the digest through a stored promotion (an identical
        promotion committed first), that one is returned and nothing is written: `(record,
        created)`.
        """
        with write_transaction(self._engine) as connection:
            if (
                self._metadata.tag_target_in(connection, links.target, promotion.tag)
                == promotion.digest
            ):
                earlier = self._latest_in(
                    connection, promotion.destination_repository, promotion.tag, promotion.digest
                )
                if earlier is not None:
                    return earlier, False
            self._metadata.link_manifests_in(connection, links)
            self._metadata.put_manifest_in(
                connection, links.target, record.manifest, record.body, None
            )
            result = connection.execute(
                _promotions.insert().values(
                    destination_project=promotion.destination_project,
                    destination_repository=promotion.destination_repository,
                    tag=promotion.tag,
                    digest=promotion.digest,
                    media_type=promotion.media_type,
                    source_repository=promotion.source_repository,
                    source_reference=promotion.source_reference,
                    requester=promotion.requester,
                    requester_kind=promotion.requester_kind,
                    gates=promotion.gates,
                    record_digest=promotion.record_digest,
                    envelope=promotion.envelope,
                    created_at=promotion.created_at,
                )
            )
            (new_id,) = result.inserted_primary_key or (None,)
        assert new_id is not None
        return PromotionRecord(id=int(new_id), **_fields(promotion)), True

    def dangling_records(self) -> list[tuple[str, str]]:
        """Referrers that present themselves as promotion records but record no stored
        promotion: (repository, digest). Left by a crash under the ordering older versions
        used (record first, promotion after)."""
        recorded = self._recorded_digests()
        return [
            (repository, digest)
            for repository, digest, annotations in self._metadata.stored_artifacts(
                DSSE_ENVELOPE_TYPE
            )
            if ANNOTATION_PROMOTION in annotations and digest not in recorded
        ]

    def _recorded_digests(self) -> set[str]:
        with read_transaction(self._engine) as connection:
            return set(connection.execute(select(_promotions.c.record_digest)).scalars())

    def promotions(
        self, project: str | None, before: int | None, limit: int
    ) -> list[PromotionRecord]:
        """Newest first; `before` continues after the last id of the previous page."""
        query = select(_promotions).order_by(_promotions.c.id.desc()).limit(limit)
        if project is not None:
            query = query.where(_promotions.c.destination_project == project)
        if before is not None:
            query = query.where(_promotions.c.id < before)
        with read_transaction(self._engine) as connection:
            return [_promotion(row) for row in connection.execute(query).all()]

    def promotion(self, promotion_id: int) -> PromotionRecord | None:
        with read_transaction(self._engine) as connection:
            row = connection.execute(
                select(_promotions).where(_promotions.c.id == promotion_id)
            ).first()
        return _promotion(row) if row is not None else None


def _fields(promotion: NewPromotion) -> dict[str, Any]:
    return {
        "destination_project": promotion.destination_project,
        "destination_repository": promotion.destination_repository,
        "tag": promotion.tag,
        "digest": promotion.digest,
        "media_type": promotion.media_type,
        "source_repository": promotion.source_repository,
        "source_reference": promotion.source_reference,
        "requester": promotion.requester,
        "requester_kind": promotion.requester_kind,
        "gates": promotion.gates,
        "record_digest": promotion.record_digest,
        "envelope": promotion.envelope,
        "created_at": promotion.created_at,
    }
