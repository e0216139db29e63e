"""Catalogers: pure functions from one file's bytes to the packages it records.

Each module answers `wants(path)` for paths relative to the image root and `catalog(path,
data)` for a file's content. `catalog_layer` streams a layer once, hands every wanted file to
its cataloger and returns the layer's `LayerInventory`, which depends only on the layer's bytes
and `CATALOGER_VERSION`, so it can be cached by (diff_id, cataloger version).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import BinaryIO, Final

from moorage.scanning.catalog import (
    apk,
    cargo_auditable,
    dpkg,
    elf,
    java,
    npm,
    os_release,
    python,
    rpm,
)
from moorage.scanning.layers import (
    FileRead,
    FileSkipped,
    HardLink,
    LayerError,
    LayerLimits,
    LayerWalk,
    NonRegular,
    OpaqueDir,
    Whiteout,
)
from moorage.scanning.packages import FileFindings, LayerInventory

# Bump whenever any cataloger would report something different for the same bytes, so that
# cached layer inventories are computed again.
CATALOGER_VERSION: Final = "3"

_DIFF_ID_ALGORITHMS: Final = ("sha256", "sha512")


@dataclass(frozen=True, slots=True)
class Cataloger:
    name: str
    wants: Callable[[str], bool]
    catalog: Callable[[str, bytes], FileFindings]


def catalogers(archive_limits: java.ArchiveLimits | None = None) -> tuple[Cataloger, ...]:
    """Every cataloger, in the order they are asked; the first that wants a path reads it."""
    return (
        Cataloger("os-release", os_release.wants, os_release.catalog),
        Cataloger("dpkg", dpkg.wants, dpkg.catalog),
        Cataloger("apk", apk.wants, apk.catalog),
        Cataloger("rpm", rpm.wants, rpm.catalog),
        Cataloger("python", python.wants, python.catalog),
        Cataloger("npm", npm.wants, npm.catalog),
        Cataloger("java", java.wants, functools.partial(java.catalog, limits=archive_limits)),
        Cataloger("cargo-lock", cargo_auditable.wants_lock, cargo_auditable.catalog_lock),
        # Go build info and cargo-auditable data, from ELF executables; asked last, as it wants
        # every extensionless file outside data directories.
        Cataloger("binary", elf.wants, elf.catalog),
    )


def cataloger_for(path: str, available: tuple[Cataloger, ...]) -> Cataloger | None:
    return next((cataloger for cataloger in available if cataloger.wants(path)), None)


def catalog_file(
    path: str, data: bytes, archive_limits: java.ArchiveLimits | None = None
) -> FileFindings | None:
    """What one file yields, or None when no cataloger reads that path."""
    cataloger = cataloger_for(path, catalogers(archive_limits))
    return cataloger.catalog(path, data) if cataloger is not None else None


def catalog_layer(
    blob: BinaryIO,
    expected_diff_id: str | None = None,
    limits: LayerLimits | None = None,
    archive_limits: java.ArchiveLimits | None = None,
) -> LayerInventory:
    """Stream one layer blob and catalog it; raises LayerError when the layer cannot be read.

    With `expected_diff_id`, the uncompressed content must match it: the result is cached and
    shared under that diff_id, so a layer must not be able to claim another layer's identity.
    """
    algorithm = _diff_id_algorithm(expected_diff_id)
    available = catalogers(archive_limits)
    walk = LayerWalk(
        blob, lambda path: cataloger_for(path, available) is not None, limits, algorithm
    )
    files: dict[str, FileFindings] = {}
    whiteouts: set[str] = set()
    opaque_dirs: set[str] = set()
    for event in walk:
        match event:
            case FileRead(path, data):
                cataloger = cataloger_for(path, available)
                assert cataloger is not None  # the walk only reads wanted paths
                files[path] = _language_files_only(cataloger.catalog(path, data), available)
            case FileSkipped(path, reason):
                files[path] = FileFindings.of(path, notes=[reason])
            case HardLink(path, target):
                files[path] = _linked(path, files.get(target))
            case NonRegular(path):
                files[path] = FileFindings.of(path)
            case Whiteout(path):
                whiteouts.add(path)
            case OpaqueDir(path):
                opaque_dirs.add(path)
    assert walk.diff_id is not None  # set once the walk has run to the end
    if expected_diff_id is not None and walk.diff_id != expected_diff_id:
        raise LayerError(f"layer content is {walk.diff_id}, not the diff_id {expected_diff_id}")
    return LayerInventory(
        diff_id=walk.diff_id,
        cataloger_version=CATALOGER_VERSION,
        files=tuple(files[path] for path in sorted(files)),
        whiteouts=tuple(sorted(whiteouts)),
        opaque_dirs=tuple(sorted(opaque_dirs)),
    )


_OS_CATALOGERS: Final = frozenset({"os-release", "dpkg", "apk", "rpm"})


def _language_files_only(findings: FileFindings, available: tuple[Cataloger, ...]) -> FileFindings:
    """Of the files an OS package database lists, keep those a language cataloger reads: only
    they can hold a language package that the OS package installed."""
    if not findings.owned:
        return findings
    kept = tuple(
        item
        for item in findings.owned
        if (cataloger := cataloger_for(item.path, available)) is not None
        and cataloger.name not in _OS_CATALOGERS
    )
    return replace(findings, owned=kept)


def _linked(path: str, target: FileFindings | None) -> FileFindings:
    """A hard link has its target's content, so it records what its target records."""
    if target is None:
        return FileFindings.of(path, notes=["hard link to a file this layer did not read"])
    packages = [
        replace(package, location=path + package.location.removeprefix(target.path))
        for package in target.packages
    ]
    return FileFindings.of(path, packages, target.notes, target.distro, target.owned)


def _diff_id_algorithm(diff_id: str | None) -> str:
    if diff_id is None:
        return "sha256"
    algorithm = diff_id.partition(":")[0]
    if algorithm not in _DIFF_ID_ALGORITHMS:
        raise LayerError(f"unsupported diff_id {diff_id[:80]!r}")
    return algorithm
