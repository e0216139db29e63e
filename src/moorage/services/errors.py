"""Errors the identity and project services raise (light: importable without the services)."""

from __future__ import annotations


class IdentityError(Exception):
    """A request the identity service refuses; `status` is the HTTP status to report."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status
