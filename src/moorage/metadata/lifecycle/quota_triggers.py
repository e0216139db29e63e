"""The triggers that keep the quota counters exact, for SQLite and PostgreSQL.

Every insert or delete of a repository's blob link or manifest link, whoever makes it, updates
`quota_project_blobs` (how many repositories of the project link the blob) and `quota_usage`
(the project's distinct blob bytes and its manifest count) in the same transaction. Deleting a
repository first deletes its links (a BEFORE trigger), so the counters see the repository's
name while they are adjusted. On PostgreSQL each statement takes its projects' usage rows
first (in name order), so two transactions never wait for each other's blob rows in a cycle.

A migration that rebuilds one of these tables on SQLite (drop and rename) drops its triggers:
it must call `install` again afterwards (`moorage quota recount` repairs the counts).
"""

# The statements are assembled from constants only (no input reaches them).
# ruff: noqa: S608

from __future__ import annotations

from sqlalchemy import Connection, text

_SQLITE_PROJECT = (
    "(SELECT CASE WHEN instr(r.name, '/') > 0 THEN substr(r.name, 1, instr(r.name, '/') - 1)"
    " ELSE r.name END FROM repositories r WHERE r.id = {row}.repository_id)"
)


def _sqlite_statements() -> list[str]:
    new = _SQLITE_PROJECT.format(row="NEW")
    old = _SQLITE_PROJECT.format(row="OLD")
    return [
        f"""
        CREATE TRIGGER quota_blob_linked AFTER INSERT ON repository_blobs
        WHEN {new} IS NOT NULL
        BEGIN
            INSERT OR IGNORE INTO quota_usage (project, bytes, artifacts, state)
                VALUES ({new}, 0, 0, 'ok');
            INSERT OR IGNORE INTO quota_project_blobs (project, digest, links)
                VALUES ({new}, NEW.digest, 0);
            UPDATE quota_usage
                SET bytes = bytes + (SELECT size FROM blobs WHERE digest = NEW.digest)
                WHERE project = {new}
                AND (SELECT links FROM quota_project_blobs
                     WHERE project = {new} AND digest = NEW.digest) = 0;
            UPDATE quota_project_blobs SET links = links + 1
                WHERE project = {new} AND digest = NEW.digest;
        END
        """,
        f"""
        CREATE TRIGGER quota_blob_unlinked AFTER DELETE ON repository_blobs
        WHEN {old} IS NOT NULL
        BEGIN
            UPDATE quota_project_blobs SET links = links - 1
                WHERE project = {old} AND digest = OLD.digest;
            UPDATE quota_usage
                SET bytes = bytes - (SELECT size FROM blobs WHERE digest = OLD.digest)
                WHERE project = {old}
                AND (SELECT links FROM quota_project_blobs
                     WHERE project = {old} AND digest = OLD.digest) <= 0;
            DELETE FROM quota_project_blobs
                WHERE project = {old} AND digest = OLD.digest AND links <= 0;
        END
        """,
        f"""
        CREATE TRIGGER quota_manifest_linked AFTER INSERT ON repository_manifests
        WHEN {new} IS NOT NULL
        BEGIN
            INSERT OR IGNORE INTO quota_usage (project, bytes, artifacts, state)
                VALUES ({new}, 0, 0, 'ok');
            UPDATE quota_usage SET artifacts = artifacts + 1 WHERE project = {new};
        END
        """,
        f"""
        CREATE TRIGGER quota_manifest_unlinked AFTER DELETE ON repository_manifests
        WHEN {old} IS NOT NULL
        BEGIN
            UPDATE quota_usage SET artifacts = artifacts - 1 WHERE project = {old};
        END
        """,
        """
        CREATE TRIGGER quota_repository_deleted BEFORE DELETE ON repositories
        BEGIN
            DELETE FROM tags WHERE repository_id = OLD.id;
            DELETE FROM repository_manifests WHERE repository_id = OLD.id;
            DELETE FROM repository_blobs WHERE repository_id = OLD.id;
        END
        """,
    ]


# PostgreSQL: statement-level triggers over transition tables, so a statement that inserts or
# deletes many links (a promotion, a repository deletion, garbage collection, migrate-data's
# batches) updates each project's usage row once, not once per row: repeated updates of one
# row in one transaction get slower with every version they leave behind.
_PROJECT = "split_part(r.name, '/', 1)"
_POSTGRESQL_STATEMENTS = [
    f"""
    CREATE FUNCTION quota_blobs_linked() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        -- The usage rows first, in name order: the projects' locks for the counters.
        INSERT INTO quota_usage (project, bytes, artifacts, state)
        SELECT DISTINCT {_PROJECT}, 0::bigint, 0::bigint, 'ok'
        FROM linked l JOIN repositories r ON r.id = l.repository_id ORDER BY 1
        ON CONFLICT (project) DO UPDATE SET bytes = quota_usage.bytes;
        -- Bytes of the blobs new to their project: the project's blob rows cannot change
        -- meanwhile, every writer of them holds the project's usage row.
        UPDATE quota_usage u SET bytes = u.bytes + added.total
        FROM (
            SELECT c.project, SUM(b.size) AS total
            FROM (
                SELECT DISTINCT {_PROJECT} AS project, l.digest
                FROM linked l JOIN repositories r ON r.id = l.repository_id
            ) c
            JOIN blobs b ON b.digest = c.digest
            WHERE NOT EXISTS (
                SELECT 1 FROM quota_project_blobs p
                WHERE p.project = c.project AND p.digest = c.digest
            )
            GROUP BY c.project
        ) added
        WHERE u.project = added.project;
        INSERT INTO quota_project_blobs (project, digest, links)
        SELECT {_PROJECT}, l.digest, COUNT(*)
        FROM linked l JOIN repositories r ON r.id = l.repository_id
        GROUP BY 1, 2 ORDER BY 1, 2
        ON CONFLICT (project, digest)
        DO UPDATE SET links = quota_project_blobs.links + EXCLUDED.links;
        RETURN NULL;
    END $$
    """,
    f"""
    CREATE FUNCTION quota_blobs_unlinked() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO quota_usage (project, bytes, artifacts, state)
        SELECT DISTINCT {_PROJECT}, 0::bigint, 0::bigint, 'ok'
        FROM unlinked l JOIN repositories r ON r.id = l.repository_id ORDER BY 1
        ON CONFLICT (project) DO UPDATE SET bytes = quota_usage.bytes;
        WITH counted AS (
            SELECT {_PROJECT} AS project, l.digest, COUNT(*) AS n
            FROM unlinked l JOIN repositories r ON r.id = l.repository_id GROUP BY 1, 2
        ), updated AS (
            UPDATE quota_project_blobs p SET links = p.links - c.n
            FROM counted c WHERE p.project = c.project AND p.digest = c.digest
            RETURNING p.project, p.digest, p.links
        )
        UPDATE quota_usage u SET bytes = u.bytes - gone.total
        FROM (
            SELECT up.project, SUM(b.size) AS total
            FROM updated up JOIN blobs b ON b.digest = up.digest
            WHERE up.links <= 0
            GROUP BY up.project
        ) gone
        WHERE u.project = gone.project;
        DELETE FROM quota_project_blobs p
        USING (
            SELECT DISTINCT {_PROJECT} AS project, l.digest
            FROM unlinked l JOIN repositories r ON r.id = l.repository_id
        ) c
        WHERE p.project = c.project AND p.digest = c.digest AND p.links <= 0;
        RETURN NULL;
    END $$
    """,
    f"""
    CREATE FUNCTION quota_manifests_linked() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO quota_usage (project, bytes, artifacts, state)
        SELECT {_PROJECT}, 0::bigint, COUNT(*), 'ok'
        FROM linked l JOIN repositories r ON r.id = l.repository_id GROUP BY 1 ORDER BY 1
        ON CONFLICT (project)
        DO UPDATE SET artifacts = quota_usage.artifacts + EXCLUDED.artifacts;
        RETURN NULL;
    END $$
    """,
    f"""
    CREATE FUNCTION quota_manifests_unlinked() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO quota_usage (project, bytes, artifacts, state)
        SELECT {_PROJECT}, 0::bigint, -COUNT(*), 'ok'
        FROM unlinked l JOIN repositories r ON r.id = l.repository_id GROUP BY 1 ORDER BY 1
        ON CONFLICT (project)
        DO UPDATE SET artifacts = quota_usage.artifacts + EXCLUDED.artifacts;
        RETURN NULL;
    END $$
    """,
    """
    CREATE FUNCTION quota_repository_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        DELETE FROM tags WHERE repository_id = OLD.id;
        DELETE FROM repository_manifests WHERE repository_id = OLD.id;
        DELETE FROM repository_blobs WHERE repository_id = OLD.id;
        RETURN OLD;
    END $$
    """,
    "CREATE TRIGGER quota_blob_linked AFTER INSERT ON repository_blobs"
    " REFERENCING NEW TABLE AS linked FOR EACH STATEMENT EXECUTE FUNCTION quota_blobs_linked()",
    "CREATE TRIGGER quota_blob_unlinked AFTER DELETE ON repository_blobs"
    " REFERENCING OLD TABLE AS unlinked FOR EACH STATEMENT"
    " EXECUTE FUNCTION quota_blobs_unlinked()",
    "CREATE TRIGGER quota_manifest_linked AFTER INSERT ON repository_manifests"
    " REFERENCING NEW TABLE AS linked FOR EACH STATEMENT"
    " EXECUTE FUNCTION quota_manifests_linked()",
    "CREATE TRIGGER quota_manifest_unlinked AFTER DELETE ON repository_manifests"
    " REFERENCING OLD TABLE AS unlinked FOR EACH STATEMENT"
    " EXECUTE FUNCTION quota_manifests_unlinked()",
    "CREATE TRIGGER quota_repository_deleted BEFORE DELETE ON repositories"
    " FOR EACH ROW EXECUTE FUNCTION quota_repository_deleted()",
]

_TRIGGERS = {
    "quota_blob_linked": "repository_blobs",
    "quota_blob_unlinked": "repository_blobs",
    "quota_manifest_linked": "repository_manifests",
    "quota_manifest_unlinked": "repository_manifests",
    "quota_repository_deleted": "repositories",
}
_POSTGRESQL_FUNCTIONS = [
    "quota_blobs_linked()",
    "quota_blobs_unlinked()",
    "quota_manifests_linked()",
    "quota_manifests_unlinked()",
    "quota_repository_deleted()",
]


def install(connection: Connection) -> None:
    """Create the triggers (after `drop`, or on a schema without them)."""
    postgresql = connection.dialect.name == "postgresql"
    for statement in _POSTGRESQL_STATEMENTS if postgresql else _sqlite_statements():
        connection.execute(text(statement))


def drop(connection: Connection) -> None:
    postgresql = connection.dialect.name == "postgresql"
    for trigger, table in _TRIGGERS.items():
        suffix = f" ON {table}" if postgresql else ""
        connection.execute(text(f"DROP TRIGGER IF EXISTS {trigger}{suffix}"))
    if postgresql:
        for function in _POSTGRESQL_FUNCTIONS:
            connection.execute(text(f"DROP FUNCTION IF EXISTS {function}"))
