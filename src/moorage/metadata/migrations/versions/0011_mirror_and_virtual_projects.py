"""mirror and virtual projects

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 01:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "virtual_projects",
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("push_member_id", sa.Integer(), nullable=True),
        sa.Column("updated_by", sa.String(length=255), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["push_member_id"], ["projects.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("project_id"),
    )
    op.create_table(
        "virtual_project_members",
        sa.Column("virtual_project_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("member_project_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["virtual_project_id"], ["projects.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["member_project_id"], ["projects.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("virtual_project_id", "position"),
    )
    op.create_index(
        op.f("ix_virtual_project_members_member_project_id"),
        "virtual_project_members",
        ["member_project_id"],
        unique=False,
    )
    op.create_table(
        "registry_mirror",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=True),
        sa.Column("updated_by", sa.String(length=255), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("registry_mirror")
    op.drop_index(
        op.f("ix_virtual_project_members_member_project_id"),
        table_name="virtual_project_members",
    )
    op.drop_table("virtual_project_members")
    op.drop_table("virtual_projects")
