"""refresh tokens bound to their credential, rotated in families

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 18:00:00.000000

Refresh tokens issued before this revision recorded only the user, not the credential that
signed in nor its limits, so none of them can be honoured safely: they are removed, and
clients sign in once more (docker asks for the password, or uses the stored one).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(sa.text("DELETE FROM refresh_tokens"))
    with op.batch_alter_table("refresh_tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("family", sa.String(length=64), nullable=False))
        batch_op.add_column(sa.Column("credential", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("proof", sa.String(length=255), nullable=False))
        batch_op.add_column(sa.Column("account_proof", sa.String(length=255), nullable=False))
        batch_op.add_column(sa.Column("scopes", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("used_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(
            sa.Column("revoked", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.create_index("ix_refresh_tokens_family", ["family"], unique=False)
        batch_op.create_index("ix_refresh_tokens_expires_at", ["expires_at"], unique=False)


def downgrade() -> None:
    op.execute(sa.text("DELETE FROM refresh_tokens"))
    with op.batch_alter_table("refresh_tokens", schema=None) as batch_op:
        batch_op.drop_index("ix_refresh_tokens_expires_at")
        batch_op.drop_index("ix_refresh_tokens_family")
        for column in (
            "revoked",
            "used_at",
            "scopes",
            "account_proof",
            "proof",
            "credential",
            "family",
        ):
            batch_op.drop_column(column)
