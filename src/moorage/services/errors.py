"""Errors the identity and project services raise (light: importable without the services)."""

from __future__ import annotations


class IdentityError(Exception):
    """A request the identity service refuses; `status` is the HTTP status to report."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class AuthenticationError(Exception):
    """Credentials were wrong (the message never says which part)."""


class ThrottledError(AuthenticationError):
    """Too many failed sign-ins: retry after `retry_after` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many failed sign-ins; retry in {retry_after}s")
        self.retry_after = retry_after
