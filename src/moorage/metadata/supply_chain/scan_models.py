"""Tables of the scanning flow: settings, the job queue, reports and stored inventories.

- `scan_settings`: per project, whether pushes are scanned, whether SBOMs are attached and
  which scanner (NULL: the built-in one) does the work.
- `scan_jobs`: the persistent queue, one row per manifest digest (which de-duplicates
  requests). A worker claims a row by writing its name and a lease expiry; a crashed worker's
  lease runs out and another claims the job again, until `attempts` reaches the cap.
- `scan_reports`: the latest state of each manifest digest's scan.
- `image_inventories` + `inventory_keys`: the squashed package inventory of every scanned image
  and the (ecosystem, name) keys the matcher looks its packages up by, so a new vulnerability
  database generation re-matches only images holding a changed package, from the stored
  inventory, without reading layers again.
- `layer_inventories`: what one layer yields, by (diff_id, cataloger version); shared by every
  image holding the layer.
- `scan_state`: small named values shared by every process (the database generation the reports
  were last matched against).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, DateTime, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from moorage.metadata.registry.models import Base, DigestString, NameString, utcnow

ScannerName = String(64)
GenerationString = String(128)


class ScanSettingsRow(Base):
    __tablename__ = "scan_settings"

    project_id: Mapped[int] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True
    )
    scan_on_push: Mapped[bool] = mapped_column(Boolean, default=False)
    attach_sbom: Mapped[bool] = mapped_column(Boolean, default=False)
    scanner: Mapped[str | None] = mapped_column(ScannerName, nullable=True)  # NULL: built-in
    updated_by: Mapped[str | None] = mapped_column(String(255), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ScanJobRow(Base):
    __tablename__ = "scan_jobs"

    digest: Mapped[str] = mapped_column(DigestString, primary_key=True)
    repository: Mapped[str] = mapped_column(NameString)  # where the blobs are read from
    kind: Mapped[str] = mapped_column(String(16))  # scan | rematch
    requested_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = (Index("ix_scan_jobs_requested_at", "requested_at"),)


class ScanReportRow(Base):
    __tablename__ = "scan_reports"

    digest: Mapped[str] = mapped_column(DigestString, primary_key=True)
    repository: Mapped[str] = mapped_column(NameString)  # the last repository it was requested in
    media_type: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16))  # Pending | Running | Success | Error
    scanner: Mapped[str] = mapped_column(ScannerName)
    generation: Mapped[str | None] = mapped_column(GenerationString, nullable=True)
    findings: Mapped[str] = mapped_column(Text, default="[]")  # JSON array of findings
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    children: Mapped[str] = mapped_column(Text, default="[]")  # JSON array: an index's children
    notes: Mapped[str] = mapped_column(Text, default="[]")  # JSON array of strings
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # When the findings were last computed: a re-match moves this, not `finished_at`.
    matched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    rematches: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = (Index("ix_scan_reports_generation", "generation"),)


class ImageInventoryRow(Base):
    __tablename__ = "image_inventories"

    digest: Mapped[str] = mapped_column(DigestString, primary_key=True)
    cataloger_version: Mapped[str] = mapped_column(String(32))
    inventory: Mapped[str] = mapped_column(Text)  # Inventory.to_json()
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class InventoryKeyRow(Base):
    __tablename__ = "inventory_keys"

    digest: Mapped[str] = mapped_column(
        ForeignKey("image_inventories.digest", ondelete="CASCADE"), primary_key=True
    )
    ecosystem: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(512), primary_key=True)

    __table_args__ = (Index("ix_inventory_keys_package", "ecosystem", "name"),)


class LayerInventoryRow(Base):
    __tablename__ = "layer_inventories"

    diff_id: Mapped[str] = mapped_column(DigestString, primary_key=True)
    cataloger_version: Mapped[str] = mapped_column(String(32), primary_key=True)
    inventory: Mapped[str] = mapped_column(Text)  # LayerInventory.to_json()
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ScanStateRow(Base):
    __tablename__ = "scan_state"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str | None] = mapped_column(String(255), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
