"""account ids are never reused; approvals follow their approver's account

Revision ID: 0014
Revises: 0013
Create Date: 2027-01-11 12:00:00.000000

SQLite gave a new row the highest id plus one, so deleting the newest user, group or robot
handed its id to the next one created, and every row that still named the old account by id (an
approval, a membership, a grant) came to mean the new one. This revision

- deletes rows that name an account which no longer exists: approvals, project memberships,
  repository grants, group members, personal access tokens and refresh tokens;
- on SQLite, rebuilds `users`, `groups` and `robots` with AUTOINCREMENT, keeping every row and
  id, and sets `sqlite_sequence` to the highest id known to have been used: the highest id
  present or named by a row deleted above. An id deleted before this revision while it was the
  highest may already have been given out once more. Of what named the deleted account, only
  its approvals could survive (memberships and grants were deleted with it, tokens and group
  members by foreign key); an approval older than its approver's account, or made under
  another name, is such a leftover and is deleted too. PostgreSQL sequences never hand out an
  id twice and need no rebuild;
- adds the foreign key from `promotion_approvals.approver_id` to `users` (ON DELETE CASCADE).

The rebuild drops each table and renames its copy; with SQLite foreign keys on, the drop would
cascade into every referencing table, so `migrate` runs migrations with them off, and this
revision refuses to run otherwise and checks the foreign keys before it commits.
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ACCOUNT_TABLES = ("users", "groups", "robots")

# Where a row names an account: (table, id column, account table, principal kind or None).
REFERENCES = (
    ("promotion_approvals", "approver_id", "users", None),
    ("group_members", "user_id", "users", None),
    ("group_members", "group_id", "groups", None),
    ("personal_access_tokens", "user_id", "users", None),
    ("refresh_tokens", "user_id", "users", None),
    ("project_members", "principal_id", "users", "user"),
    ("project_members", "principal_id", "groups", "group"),
    ("repository_grants", "principal_id", "users", "user"),
    ("repository_grants", "principal_id", "groups", "group"),
    ("repository_grants", "principal_id", "robots", "robot"),
)

# The tables whose foreign keys the rebuild could break, checked before the commit.
CHECKED = (
    *ACCOUNT_TABLES,
    "group_members",
    "personal_access_tokens",
    "refresh_tokens",
    "promotion_approvals",
)


def upgrade() -> None:
    bind = op.get_bind()
    sqlite = bind.dialect.name == "sqlite"
    if sqlite and bind.exec_driver_sql("PRAGMA foreign_keys").scalar():
        raise RuntimeError(
            "revision 0014 rebuilds tables other tables reference: run it with SQLite foreign"
            " keys off (moorage.metadata.database.migrate does)"
        )
    highest = {table: _highest_id_named(bind, table) for table in ACCOUNT_TABLES}
    for table, column, accounts, kind in REFERENCES:
        rows, names, same_kind = _reference(table, column, kind)
        present = sa.select(sa.table(accounts, sa.column("id")).c.id)
        op.execute(sa.delete(rows).where(*same_kind, names.not_in(present)))
    _delete_approvals_of_earlier_holders()

    if sqlite:
        for table in ACCOUNT_TABLES:
            with op.batch_alter_table(
                table, recreate="always", table_kwargs={"sqlite_autoincrement": True}
            ):
                pass
            _raise_sequence(bind, table, highest[table])

    with op.batch_alter_table("promotion_approvals", schema=None) as batch_op:
        batch_op.create_foreign_key(
            "fk_promotion_approvals_approver",
            "users",
            ["approver_id"],
            ["id"],
            ondelete="CASCADE",
        )
        batch_op.create_index("ix_promotion_approvals_approver", ["approver_id"], unique=False)

    if sqlite:
        for table in CHECKED:
            broken = bind.exec_driver_sql(f"PRAGMA foreign_key_check({table})").all()
            if broken:
                raise RuntimeError(f"revision 0014 would break foreign keys of {table}: {broken}")


def downgrade() -> None:
    # AUTOINCREMENT stays: ids that are never reused are correct for every older revision too.
    with op.batch_alter_table("promotion_approvals", schema=None) as batch_op:
        batch_op.drop_index("ix_promotion_approvals_approver")
        batch_op.drop_constraint("fk_promotion_approvals_approver", type_="foreignkey")


def _delete_approvals_of_earlier_holders() -> None:
    """An approval older than its approver's account, or made under another name, was made by
    an account deleted before whose id was given out again: it is not the new account's."""
    approvals = sa.table(
        "promotion_approvals",
        sa.column("approver_id"),
        sa.column("approver"),
        sa.column("created_at"),
    )
    users = sa.table("users", sa.column("id"), sa.column("username"), sa.column("created_at"))
    earlier_holder = (
        sa.select(users.c.id)
        .where(
            users.c.id == approvals.c.approver_id,
            sa.or_(
                users.c.username != approvals.c.approver,
                users.c.created_at > approvals.c.created_at,
            ),
        )
        .exists()
    )
    op.execute(sa.delete(approvals).where(earlier_holder))


def _reference(
    table: str, column: str, kind: str | None
) -> tuple[sa.TableClause, sa.ColumnClause[Any], list[sa.ColumnElement[bool]]]:
    """The referencing table, its id column, and the condition that its row names `kind`."""
    rows = sa.table(table, sa.column(column), sa.column("principal_kind"))
    same_kind = [] if kind is None else [rows.c.principal_kind == kind]
    return rows, rows.c[column], same_kind


def _highest_id_named(bind: sa.Connection, accounts: str) -> int:
    """The highest id of the account table, or named by any row referencing it."""
    queries = [sa.select(sa.func.max(sa.table(accounts, sa.column("id")).c.id))]
    for table, column, target, kind in REFERENCES:
        if target == accounts:
            _rows, names, same_kind = _reference(table, column, kind)
            queries.append(sa.select(sa.func.max(names)).where(*same_kind))
    return max(int(bind.execute(query).scalar() or 0) for query in queries)


def _raise_sequence(bind: sa.Connection, table: str, highest: int) -> None:
    """Make AUTOINCREMENT continue above `highest` (the copy already set it to its highest id)."""
    current = bind.execute(
        sa.text("SELECT seq FROM sqlite_sequence WHERE name = :name"), {"name": table}
    ).scalar()
    if current is None:
        bind.execute(
            sa.text("INSERT INTO sqlite_sequence (name, seq) VALUES (:name, :seq)"),
            {"name": table, "seq": highest},
        )
    elif int(current) < highest:
        bind.execute(
            sa.text("UPDATE sqlite_sequence SET seq = :seq WHERE name = :name"),
            {"name": table, "seq": highest},
        )
