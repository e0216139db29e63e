"""scanning: settings, job queue, reports, image and layer inventories

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 00:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _name() -> sa.types.TypeEngine[str]:
    return sa.String(length=255).with_variant(sa.String(length=255, collation="C"), "postgresql")


def upgrade() -> None:
    op.create_table(
        "image_inventories",
        sa.Column("digest", sa.String(length=200), nullable=False),
        sa.Column("cataloger_version", sa.String(length=32), nullable=False),
        sa.Column("inventory", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("digest"),
    )
    op.create_table(
        "layer_inventories",
        sa.Column("diff_id", sa.String(length=200), nullable=False),
        sa.Column("cataloger_version", sa.String(length=32), nullable=False),
        sa.Column("inventory", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("diff_id", "cataloger_version"),
    )
    op.create_table(
        "scan_jobs",
        sa.Column("digest", sa.String(length=200), nullable=False),
        sa.Column("repository", _name(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lease_owner", sa.String(length=128), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("digest"),
    )
    with op.batch_alter_table("scan_jobs", schema=None) as batch_op:
        batch_op.create_index("ix_scan_jobs_requested_at", ["requested_at"], unique=False)

    op.create_table(
        "scan_reports",
        sa.Column("digest", sa.String(length=200), nullable=False),
        sa.Column("repository", _name(), nullable=False),
        sa.Column("media_type", sa.String(length=255), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("scanner", sa.String(length=64), nullable=False),
        sa.Column("generation", sa.String(length=128), nullable=True),
        sa.Column("findings", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("children", sa.Text(), nullable=False),
        sa.Column("notes", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("matched_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("rematches", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("digest"),
    )
    with op.batch_alter_table("scan_reports", schema=None) as batch_op:
        batch_op.create_index("ix_scan_reports_generation", ["generation"], unique=False)

    op.create_table(
        "scan_state",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=255), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "inventory_keys",
        sa.Column("digest", sa.String(length=200), nullable=False),
        sa.Column("ecosystem", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=512), nullable=False),
        sa.ForeignKeyConstraint(["digest"], ["image_inventories.digest"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("digest", "ecosystem", "name"),
    )
    with op.batch_alter_table("inventory_keys", schema=None) as batch_op:
        batch_op.create_index("ix_inventory_keys_package", ["ecosystem", "name"], unique=False)

    op.create_table(
        "scan_settings",
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("scan_on_push", sa.Boolean(), nullable=False),
        sa.Column("attach_sbom", sa.Boolean(), nullable=False),
        sa.Column("scanner", sa.String(length=64), nullable=True),
        sa.Column("updated_by", sa.String(length=255), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("project_id"),
    )


def downgrade() -> None:
    op.drop_table("scan_settings")
    with op.batch_alter_table("inventory_keys", schema=None) as batch_op:
        batch_op.drop_index("ix_inventory_keys_package")

    op.drop_table("inventory_keys")
    op.drop_table("scan_state")
    with op.batch_alter_table("scan_reports", schema=None) as batch_op:
        batch_op.drop_index("ix_scan_reports_generation")

    op.drop_table("scan_reports")
    with op.batch_alter_table("scan_jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_scan_jobs_requested_at")

    op.drop_table("scan_jobs")
    op.drop_table("layer_inventories")
    op.drop_table("image_inventories")
