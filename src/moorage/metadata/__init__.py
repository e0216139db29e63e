"""Registry metadata in SQL (SQLite by default, PostgreSQL for scale-out)."""
