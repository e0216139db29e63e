"""Strict decoding of the base64 and JSON that signature formats carry."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any


class FormatError(ValueError):
    """Signature material that does not have the expected shape (the message says what)."""


def b64decode(text: object, what: str) -> bytes:
    """Standard base64 (padding optional, as some tools drop it)."""
    if not isinstance(text, str):
        raise FormatError(f"{what} is not a base64 string")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise FormatError(f"{what} is not valid base64") from None


def b64url_decode(text: object, what: str) -> bytes:
    """base64url without padding (JWS)."""
    if not isinstance(text, str) or "=" in text:
        raise FormatError(f"{what} is not unpadded base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise FormatError(f"{what} is not valid base64url") from None


def json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):
        raise FormatError(f"{what} is not valid JSON") from None
    if not isinstance(document, dict):
        raise FormatError(f"{what} is not a JSON object")
    return document


def field(document: dict[str, Any], key: str, kind: type, what: str) -> Any:
    value = document.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise FormatError(f"{what} has no valid {key!r}")
    return value
