"""upload sessions without rows; server secrets

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 13:00:39.920177
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "server_secrets",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    with op.batch_alter_table("uploads", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_uploads_created_at"))

    op.drop_table("uploads")


def downgrade() -> None:
    op.create_table(
        "uploads",
        sa.Column("id", sa.VARCHAR(length=64), nullable=False),
        sa.Column("repository", sa.VARCHAR(length=255), nullable=False),
        sa.Column("owner", sa.VARCHAR(length=255), nullable=True),
        sa.Column("created_at", sa.DATETIME(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("uploads", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_uploads_created_at"), ["created_at"], unique=False)

    op.drop_table("server_secrets")
