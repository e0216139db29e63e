"""vulnerability policies say what a possibly affected finding counts as

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07 20:30:00.000000

A finding is possibly affected when the advisory names the package but whether its version is
affected could not be decided. Existing policies count such findings like any other finding
(`finding`), which is also the default for new ones.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("vulnerability_policies", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "possibly_affected",
                sa.String(length=16),
                nullable=False,
                server_default="finding",
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("vulnerability_policies", schema=None) as batch_op:
        batch_op.drop_column("possibly_affected")
