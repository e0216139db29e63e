"""The distribution: os-release, with debian_version and alpine-release as fallbacks.

os-release (freedesktop.org) is read from `etc/os-release`, else `usr/lib/os-release`; on Debian
and Ubuntu the first is a symlink to the second. Debian testing and sid have no VERSION_ID,
so `etc/debian_version` (`trixie/sid`) fills it in; `etc/alpine-release` does the same for
Alpine images that lack os-release.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from typing import Final

from moorage.scanning.packages import Distro, FileFindings

OS_RELEASE_PATHS: Final = ("etc/os-release", "usr/lib/os-release")  # in order of precedence
RELEASE_FILES: Final = {"etc/alpine-release": "alpine", "etc/debian_version": "debian"}

_ID: Final = re.compile(r"^[a-z0-9._-]{1,64}$")  # os-release: lowercase, no spaces
_VERSION: Final = re.compile(r"^[A-Za-z0-9._~+/-]{1,64}$")
_KEY: Final = re.compile(r"^[A-Z][A-Z0-9_]*$")
_MAX_PRETTY_NAME: Final = 200


def wants(path: str) -> bool:
    return path in OS_RELEASE_PATHS or path in RELEASE_FILES


def catalog(path: str, data: bytes) -> FileFindings:
    text = data.decode("utf-8", errors="replace")
    distro_id = RELEASE_FILES.get(path)
    if distro_id is not None:
        version = text.strip().splitlines()[0].strip() if text.strip() else ""
        if not _VERSION.fullmatch(version):
            return FileFindings.of(path, notes=[f"unrecognised release {version[:64]!r}"])
        return FileFindings.of(path, distro=Distro(distro_id, version))
    distro = parse_os_release(text)
    if distro is None:
        return FileFindings.of(path, notes=["no valid ID"])
    return FileFindings.of(path, distro=distro)


def parse_os_release(text: str) -> Distro | None:
    fields = _fields(text)
    distro_id = fields.get("ID", "")
    if not _ID.fullmatch(distro_id):
        return None
    version_id = fields.get("VERSION_ID")
    if version_id is not None and not _VERSION.fullmatch(version_id):
        version_id = None
    id_like = tuple(word for word in fields.get("ID_LIKE", "").split() if _ID.fullmatch(word))
    pretty_name = fields.get("PRETTY_NAME")
    return Distro(
        id=distro_id,
        version_id=version_id,
        id_like=id_like,
        pretty_name=pretty_name[:_MAX_PRETTY_NAME] if pretty_name else None,
    )


def _fields(text: str) -> dict[str, str]:
    """KEY=value lines, with shell quoting; lines that are not assignments are ignored."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, raw_value = line.strip().partition("=")
        if not sep or not _KEY.fullmatch(key):
            continue
        try:
            fields[key] = " ".join(shlex.split(raw_value))
        except ValueError:  # unbalanced quotes
            continue
    return fields


def choose_distro(found: Mapping[str, Distro]) -> Distro | None:
    """The image's distribution from the release files present in its final filesystem."""
    release = next((found[path] for path in OS_RELEASE_PATHS if path in found), None)
    fallbacks = [found[path] for path in RELEASE_FILES if path in found]
    if release is None:
        return fallbacks[0] if fallbacks else None
    if release.version_id is None:
        for fallback in fallbacks:
            if fallback.id == release.id:
                return Distro(release.id, fallback.version_id, release.id_like, release.pretty_name)
    return release
