"""The triggers that keep the quota counters exact, for SQLite and PostgreSQL.

Every insert or delete of a repository's blob link or manifest link, whoever makes it, updates
`quota_project_blobs` (how many repositories of the project link the blob) and `quota_usage`
(the project's distinct blob bytes and its manifest count) in the same transaction. Deleting a
repository first deletes its links (a BEFORE trigger), so the counters see the repository's
name while they are adjusted. On PostgreSQL each change takes the project's usage row first,
so two transactions of one project never wait for each other's blob rows in a cycle.

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


_POSTGRESQL_STATEMENTS = [
    """
    CREATE FUNCTION quota_project_of(repository integer) RETURNS text
    LANGUAGE sql STABLE AS $$
        SELECT split_part(name, '/', 1) FROM repositories WHERE id = repository
    $$
    """,
    # The usage row first: it is the project's one lock for every counter change.
    """
    CREATE FUNCTION quota_usage_row(p text) RETURNS void LANGUAGE sql AS $$
        INSERT INTO quota_usage (project, bytes, artifacts, state) VALUES (p, 0, 0, 'ok')
        ON CONFLICT (project) DO UPDATE SET bytes = quota_usage.bytes
    $$
    """,
    """
    CREATE FUNCTION quota_blob_linked() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        p text := quota_project_of(NEW.repository_id);
        n integer;
    BEGIN
        IF p IS NULL THEN RETURN NULL; END IF;
        PERFORM quota_usage_row(p);
        INSERT INTO quota_project_blobs (project, digest, links) VALUES (p, NEW.digest, 1)
        ON CONFLICT (project, digest) DO UPDATE SET links = quota_project_blobs.links + 1
        RETURNING links INTO n;
        IF n = 1 THEN
            UPDATE quota_usage
            SET bytes = bytes + (SELECT size FROM blobs WHERE digest = NEW.digest)
            WHERE project = p;
        END IF;
        RETURN NULL;
    END $$
    """,
    """
    CREATE FUNCTION quota_blob_unlinked() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        p text := quota_project_of(OLD.repository_id);
        n integer;
    BEGIN
        IF p IS NULL THEN RETURN NULL; END IF;
        PERFORM quota_usage_row(p);
        UPDATE quota_project_blobs SET links = links - 1
        WHERE project = p AND digest = OLD.digest RETURNING links INTO n;
        IF n IS NOT NULL AND n <= 0 THEN
            DELETE FROM quota_project_blobs WHERE project = p AND digest = OLD.digest;
            UPDATE quota_usage
            SET bytes = bytes - (SELECT size FROM blobs WHERE digest = OLD.digest)
            WHERE project = p;
        END IF;
        RETURN NULL;
    END $$
    """,
    """
    CREATE FUNCTION quota_manifest_linked() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE p text := quota_project_of(NEW.repository_id);
    BEGIN
        IF p IS NULL THEN RETURN NULL; END IF;
        PERFORM quota_usage_row(p);
        UPDATE quota_usage SET artifacts = artifacts + 1 WHERE project = p;
        RETURN NULL;
    END $$
    """,
    """
    CREATE FUNCTION quota_manifest_unlinked() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE p text := quota_project_of(OLD.repository_id);
    BEGIN
        IF p IS NULL THEN RETURN NULL; END IF;
        PERFORM quota_usage_row(p);
        UPDATE quota_usage SET artifacts = artifacts - 1 WHERE project = p;
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
    " FOR EACH ROW EXECUTE FUNCTION quota_blob_linked()",
    "CREATE TRIGGER quota_blob_unlinked AFTER DELETE ON repository_blobs"
    " FOR EACH ROW EXECUTE FUNCTION quota_blob_unlinked()",
    "CREATE TRIGGER quota_manifest_linked AFTER INSERT ON repository_manifests"
    " FOR EACH ROW EXECUTE FUNCTION quota_manifest_linked()",
    "CREATE TRIGGER quota_manifest_unlinked AFTER DELETE ON repository_manifests"
    " FOR EACH ROW EXECUTE FUNCTION quota_manifest_unlinked()",
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
    "quota_blob_linked()",
    "quota_blob_unlinked()",
    "quota_manifest_linked()",
    "quota_manifest_unlinked()",
    "quota_repository_deleted()",
    "quota_usage_row(text)",
    "quota_project_of(integer)",
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
