"""npm packages: the `package.json` of each installed package under `node_modules`.

Only the manifest at a package's root counts: `node_modules/<name>/package.json` or
`node_modules/@scope/<name>/package.json` (below the last `node_modules`, so nested and pnpm
layouts work). Other package.json files inside a package are build markers, not packages.
Lock files are not read, as Trivy and Syft do not in images: what is installed is what counts.
"""

from __future__ import annotations

import json
import re
from typing import Final

from moorage.scanning.packages import Ecosystem, FileFindings, Package

_NAME: Final = re.compile(r"^(?:@[A-Za-z0-9._~-]+/)?[A-Za-z0-9._~-]{1,214}$")
_VERSION: Final = re.compile(r"^\S{1,256}$")


def wants(path: str) -> bool:
    parts = path.split("/")
    if parts[-1] != "package.json" or "node_modules" not in parts:
        return False
    last_node_modules = len(parts) - 1 - parts[::-1].index("node_modules")
    below = parts[last_node_modules + 1 : -1]
    if len(below) == 1:
        return not below[0].startswith((".", "@"))
    return len(below) == 2 and below[0].startswith("@") and not below[1].startswith(".")


def catalog(path: str, data: bytes) -> FileFindings:
    try:
        manifest = json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: deeply nested arrays
        return FileFindings.of(path, notes=["not valid JSON"])
    if not isinstance(manifest, dict):
        return FileFindings.of(path, notes=["not a JSON object"])
    name, version = manifest.get("name"), manifest.get("version")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        return FileFindings.of(path, notes=["missing or invalid name"])
    if not isinstance(version, str) or not _VERSION.fullmatch(version):
        return FileFindings.of(path, notes=["missing or invalid version"])
    return FileFindings.of(path, [Package(Ecosystem.NPM, name, version, location=path)])
