"""immutable tag rules

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 14:00:59.802830
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "immutable_tag_rules",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("repositories", sa.String(length=255), nullable=False),
        sa.Column("tags", sa.String(length=255), nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("created_by", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("immutable_tag_rules", schema=None) as batch_op:
        batch_op.create_index("ix_immutable_tag_rules_project", ["project_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("immutable_tag_rules", schema=None) as batch_op:
        batch_op.drop_index("ix_immutable_tag_rules_project")

    op.drop_table("immutable_tag_rules")
