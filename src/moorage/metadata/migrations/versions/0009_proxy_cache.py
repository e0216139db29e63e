"""proxy-cache projects

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 01:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NAME = sa.String(length=255).with_variant(sa.String(length=255, collation="C"), "postgresql")


def upgrade() -> None:
    op.create_table(
        "proxy_upstreams",
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("url", sa.String(length=2048), nullable=False),
        sa.Column("flavor", sa.String(length=16), nullable=False),
        sa.Column("username", sa.String(length=255), nullable=True),
        sa.Column("credential_kind", sa.String(length=16), nullable=False),
        sa.Column("credential", sa.LargeBinary(), nullable=True),
        sa.Column("ca_bundle", sa.Text(), nullable=True),
        sa.Column("client_cert", sa.Text(), nullable=True),
        sa.Column("client_key", sa.LargeBinary(), nullable=True),
        sa.Column("allow_private_network", sa.Boolean(), nullable=False),
        sa.Column("tag_ttl_seconds", sa.Integer(), nullable=False),
        sa.Column("timeout_seconds", sa.Integer(), nullable=False),
        sa.Column("platforms", sa.JSON(), nullable=True),
        sa.Column("anonymous_fetch", sa.Boolean(), nullable=False),
        sa.Column("updated_by", sa.String(length=255), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("project_id"),
    )
    op.create_table(
        "proxy_tag_checks",
        sa.Column("repository_id", sa.Integer(), nullable=False),
        sa.Column("tag", _NAME, nullable=False),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["repository_id"], ["repositories.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("repository_id", "tag"),
    )


def downgrade() -> None:
    op.drop_table("proxy_tag_checks")
    op.drop_table("proxy_upstreams")
