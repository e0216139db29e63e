"""project quotas: limits per project and usage counters kept by triggers

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-08 02:40:00.000000

- `project_quotas`: a project's own storage and artifact limits (NULL inherits the system
  default, 0 is unlimited).
- `quota_usage`: per project, the bytes of the distinct blobs linked into its repositories, the
  number of manifests in them, and the last announcement made (ok | warned | exceeded).
- `quota_project_blobs`: per project and blob, how many of its repositories link the blob.

The counters are filled from the existing links here, then kept by triggers on
`repository_blobs`, `repository_manifests` and `repositories` (see
`moorage.metadata.lifecycle.quota_triggers`).
"""

# The statements are assembled from constants only (no input reaches them).
# ruff: noqa: S608

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from moorage.metadata.lifecycle import quota_triggers

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NAME = sa.String(length=255).with_variant(sa.String(length=255, collation="C"), "postgresql")


def _project(dialect: str) -> str:
    if dialect == "postgresql":
        return "split_part(r.name, '/', 1)"
    return (
        "CASE WHEN instr(r.name, '/') > 0 THEN substr(r.name, 1, instr(r.name, '/') - 1)"
        " ELSE r.name END"
    )


def upgrade() -> None:
    op.create_table(
        "project_quotas",
        sa.Column("project", _NAME, nullable=False),
        sa.Column("bytes_limit", sa.BigInteger(), nullable=True),
        sa.Column("artifacts_limit", sa.BigInteger(), nullable=True),
        sa.Column("updated_by", sa.String(length=255), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("project"),
    )
    op.create_table(
        "quota_usage",
        sa.Column("project", _NAME, nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("artifacts", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint("project"),
    )
    op.create_table(
        "quota_project_blobs",
        sa.Column("project", _NAME, nullable=False),
        sa.Column("digest", sa.String(length=200), nullable=False),
        sa.Column("links", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("project", "digest"),
    )
    connection = op.get_bind()
    project = _project(connection.dialect.name)
    connection.execute(
        sa.text(
            "INSERT INTO quota_project_blobs (project, digest, links)"
            f" SELECT {project}, rb.digest, COUNT(*) FROM repository_blobs rb"
            " JOIN repositories r ON r.id = rb.repository_id"
            f" GROUP BY {project}, rb.digest"
        )
    )
    connection.execute(
        sa.text(
            "INSERT INTO quota_usage (project, bytes, artifacts, state)"
            " SELECT p.project, COALESCE(SUM(b.size), 0), 0, 'ok' FROM quota_project_blobs p"
            " JOIN blobs b ON b.digest = p.digest GROUP BY p.project"
        )
    )
    connection.execute(
        sa.text(
            "INSERT INTO quota_usage (project, bytes, artifacts, state)"
            f" SELECT DISTINCT {project}, 0, 0, 'ok' FROM repository_manifests rm"
            " JOIN repositories r ON r.id = rm.repository_id"
            f" WHERE {project} NOT IN (SELECT project FROM quota_usage)"
        )
    )
    connection.execute(
        sa.text(
            "UPDATE quota_usage SET artifacts = (SELECT COUNT(*) FROM repository_manifests rm"
            " JOIN repositories r ON r.id = rm.repository_id"
            f" WHERE {project} = quota_usage.project)"
        )
    )
    quota_triggers.install(connection)


def downgrade() -> None:
    quota_triggers.drop(op.get_bind())
    op.drop_table("quota_project_blobs")
    op.drop_table("quota_usage")
    op.drop_table("project_quotas")
