"""Errors of the metadata layer that callers outside it handle (without importing SQLAlchemy)."""


class DatabaseUnavailableError(Exception):
    """The database cannot be reached or refuses us; the message names it, password masked."""
