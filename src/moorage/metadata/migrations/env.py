"""Alembic environment: runs on the connection the registry passes in."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from moorage.metadata.schema import Base

config = context.config
connection = config.attributes.get("connection")

if connection is None:
    # `alembic` command line (development): use the URL from the ini or the environment.
    url = config.get_main_option("sqlalchemy.url") or "sqlite:///moorage-dev.db"
    with create_engine(url).connect() as fresh:
        context.configure(connection=fresh, target_metadata=Base.metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
else:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
