"""last-pull tracking (and retention policies)

Revision ID: 0019
Revises: 0017
Create Date: 2026-12-08 02:30:00.000000

- `manifest_pulls`: per artifact (repository, manifest digest) the latest pull any process
  recorded and how many pulls it has seen (flushed in batches; the upsert keeps the maximum).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "manifest_pulls",
        sa.Column("repository_id", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(length=200), nullable=False),
        sa.Column("last_pulled_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("pull_count", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["repository_id"], ["repositories.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("repository_id", "digest"),
    )


def downgrade() -> None:
    op.drop_table("manifest_pulls")
