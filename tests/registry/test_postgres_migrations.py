"""The 16+ migrations on PostgreSQL as on SQLite: the schema they build is the models', step
by step from the first revision, and rows written at the first revision survive every step
(ids included: sequences continue past the copied rows)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text

from moorage.metadata import database
from moorage.metadata.database import make_engine, migrate
from moorage.metadata.registry.store import MetadataStore
from moorage.metadata.schema import Base
from tests.support.backends import fresh_database_url

DIGEST = "sha256:" + "b" * 64


def revisions() -> list[str]:
    config = Config()
    config.set_main_option("script_location", str(Path(database.__file__).parent / "migrations"))
    script = ScriptDirectory.from_config(config)
    return [revision.revision for revision in reversed(list(script.walk_revisions()))]


def test_the_migrations_build_exactly_the_models(metadata_url: str) -> None:
    engine = make_engine(metadata_url, pool_size=1)
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    assert differences == []


def test_rows_of_the_first_revision_survive_every_step(
    metadata_backend: str, tmp_path: Path
) -> None:
    engine = make_engine(fresh_database_url(metadata_backend, tmp_path), pool_size=1)
    steps = revisions()
    migrate(engine, steps[0])
    now = datetime.now(UTC)
    with engine.begin() as connection:
        connection.execute(
            text("INSERT INTO repositories (id, name, created_at) VALUES (1, 'team/app', :now)"),
            {"now": now},
        )
        connection.execute(
            text("INSERT INTO blobs (digest, size, created_at) VALUES (:digest, 3, :now)"),
            {"digest": DIGEST, "now": now},
        )
        connection.execute(
            text(
                "INSERT INTO repository_blobs (repository_id, digest, created_at)"
                " VALUES (1, :digest, :now)"
            ),
            {"digest": DIGEST, "now": now},
        )
        database.reset_sequences(connection)
    for step in steps[1:]:
        migrate(engine, step)
    store = MetadataStore(engine)
    assert store.blob_size_in_repository("team/app", DIGEST) == 3
    # A repository created after the copy gets a fresh id.
    store.link_blob("team/other", DIGEST, 3)
    assert store.list_repositories(None, 10) == ["team/app", "team/other"]
    store.close()
