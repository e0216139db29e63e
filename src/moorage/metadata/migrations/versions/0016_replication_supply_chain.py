"""replication carries referrers and can mirror deletions on scheduled runs

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07 20:00:00.000000

- `replication_rules.mirror_deletions`: scheduled and manual runs delete at the target what the
  rule copied there and what is gone at the source (off for existing rules).
- `replication_tasks.referrers_copied`: progress of a task's referrers (0 for old tasks).
- `replication_copies`: what each rule put at its target (destination, tag, digest), so that
  mirrored deletions touch nothing else.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NAME = sa.String(length=255).with_variant(sa.String(length=255, collation="C"), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("replication_rules") as batch:
        batch.add_column(
            sa.Column("mirror_deletions", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    with op.batch_alter_table("replication_tasks") as batch:
        batch.add_column(
            sa.Column("referrers_copied", sa.Integer(), nullable=False, server_default="0")
        )
    op.create_table(
        "replication_copies",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("rule_id", sa.Integer(), nullable=False),
        sa.Column("source", _NAME, nullable=False),
        sa.Column("destination", _NAME, nullable=False),
        sa.Column("tag", sa.String(length=128), nullable=False),
        sa.Column("digest", sa.String(length=200), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["rule_id"], ["replication_rules.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("rule_id", "destination", "tag", name="uq_replication_copies_target"),
    )
    op.create_index(
        "ix_replication_copies_rule", "replication_copies", ["rule_id", "id"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_replication_copies_rule", table_name="replication_copies")
    op.drop_table("replication_copies")
    with op.batch_alter_table("replication_tasks") as batch:
        batch.drop_column("referrers_copied")
    with op.batch_alter_table("replication_rules") as batch:
        batch.drop_column("mirror_deletions")
