"""Python distributions: `*.dist-info/METADATA` and egg-info `PKG-INFO`.

Installers write `<name>-<version>.dist-info/METADATA`; setuptools and older Debian packages
write `*.egg-info/PKG-INFO`, `EGG-INFO/PKG-INFO` inside eggs, or a single `*.egg-info` file.
All are email-style headers; only `Name` and `Version` are read, from the header block.
"""

from __future__ import annotations

import re
from typing import Final

from moorage.scanning.packages import Ecosystem, FileFindings, Package

_NAME: Final = re.compile(r"^[A-Z0-9](?:[A-Z0-9._-]*[A-Z0-9])?$", re.IGNORECASE)  # PEP 508
_VERSION: Final = re.compile(r"^\S{1,128}$")  # kept verbatim; legacy versions are not PEP 440
_HEADER: Final = re.compile(r"^(?P<key>[A-Za-z0-9-]+):[ \t]*(?P<value>.*)$")


def wants(path: str) -> bool:
    return (
        path.endswith((".dist-info/METADATA", ".egg-info/PKG-INFO", "/EGG-INFO/PKG-INFO"))
        or path.endswith(".egg-info")  # distutils writes a single file
    )


def catalog(path: str, data: bytes) -> FileFindings:
    headers = _headers(data.decode("utf-8", errors="replace"))
    name = headers.get("name", "")
    version = headers.get("version", "")
    if not _NAME.fullmatch(name):
        return FileFindings.of(path, notes=[f"invalid or missing Name {name[:64]!r}"])
    if not _VERSION.fullmatch(version):
        return FileFindings.of(path, notes=[f"invalid or missing Version {version[:64]!r}"])
    return FileFindings.of(path, [Package(Ecosystem.PYPI, name, version, location=path)])


def _headers(text: str) -> dict[str, str]:
    """The first Name and Version-style headers, up to the blank line before the body."""
    headers: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break
        match = _HEADER.match(line)
        if match is not None:
            headers.setdefault(match["key"].lower(), match["value"].strip())
    return headers
