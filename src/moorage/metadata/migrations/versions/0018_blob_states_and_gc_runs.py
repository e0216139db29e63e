"""blob states for online garbage collection, and the history of collection runs

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-08 02:30:00.000000

- `blobs.state`: 'live', or 'deleting' while a collection removes the blob from storage. Every
  write that makes a blob referenced (a link, a mount, a manifest commit, a promotion) updates
  the row with a `state = 'live'` condition, so a collection and a new reference to the same
  blob cannot both succeed.
- `blobs.marked_by`: the run that marked a blob 'deleting'; another run finishes the deletion
  only once that run is over (finished, or its node stopped beating).
- `blobs.touched_at`: when something last made the blob referenced (or claimed it before its
  bytes were committed). A collection only takes blobs untouched for its grace period.
  Existing rows start at their creation time.
- `repository_manifests.touched_at`: when the manifest was last pushed into the repository
  (a re-push of the same digest moves it), so deleting untagged manifests never takes one a
  client has just pushed again.
- Vulnerability database generations (0017) stored their files as blobs without a blob row:
  they get one, so garbage collection sees every stored object in the metadata.
- `gc_runs`: one row per collection: options, progress (phase and cursor, to resume),
  heartbeat (a run whose node died is recognised), counts and bytes freed.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("blobs") as batch:
        batch.add_column(
            sa.Column("state", sa.String(length=16), nullable=False, server_default="live")
        )
        batch.add_column(sa.Column("touched_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("marked_by", sa.String(length=64), nullable=True))
    op.execute("UPDATE blobs SET touched_at = created_at")
    with op.batch_alter_table("repository_manifests") as batch:
        batch.add_column(sa.Column("touched_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE repository_manifests SET touched_at = created_at")
    op.execute(
        "INSERT INTO blobs (digest, size, created_at, state, touched_at)"
        " SELECT g.digest, MAX(g.size), MIN(g.created_at), 'live', MIN(g.created_at)"
        " FROM vulndb_generations g"
        " WHERE NOT EXISTS (SELECT 1 FROM blobs b WHERE b.digest = g.digest)"
        " GROUP BY g.digest"
    )
    op.create_index("ix_blobs_state", "blobs", ["state"])
    op.create_table(
        "gc_runs",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("dry_run", sa.Boolean(), nullable=False),
        sa.Column("delete_untagged", sa.Boolean(), nullable=False),
        sa.Column("grace_seconds", sa.Integer(), nullable=False),
        sa.Column("trigger", sa.String(length=16), nullable=False),
        sa.Column("requested_by", sa.String(length=255), nullable=False),
        sa.Column("node", sa.String(length=255), nullable=True),
        sa.Column("phase", sa.String(length=32), nullable=False),
        sa.Column("cursor", sa.String(length=512), nullable=True),
        sa.Column("resumed_from", sa.String(length=64), nullable=True),
        sa.Column("stop_requested", sa.Boolean(), nullable=False),
        sa.Column("counts", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_gc_runs_started_at", "gc_runs", ["started_at"])


def downgrade() -> None:
    op.drop_index("ix_gc_runs_started_at", table_name="gc_runs")
    op.drop_table("gc_runs")
    op.drop_index("ix_blobs_state", table_name="blobs")
    with op.batch_alter_table("repository_manifests") as batch:
        batch.drop_column("touched_at")
    with op.batch_alter_table("blobs") as batch:
        batch.drop_column("marked_by")
        batch.drop_column("touched_at")
        batch.drop_column("state")
