"""A database round trip for the readiness probe."""

from __future__ import annotations

from sqlalchemy import Engine, text


def ping_database(engine: Engine) -> None:
    """One real query on a pooled connection; raises when the database does not answer."""
    with engine.connect() as connection:
        connection.execute(text("SELECT 1")).scalar_one()
