"""Stack per-layer inventories into the inventory of an image's final filesystem.

The OCI image spec (layer.md): `.wh.<name>` in a layer hides `<name>`, and everything below
it, in the layers beneath; `.wh..wh..opq` hides every lower-layer child of its directory;
neither touches its own layer. So, bottom-up, each layer first removes what its whiteouts hide
from the results so far, then puts its own results on top, replacing any result at the same
path (the topmost package database wins). This is Trivy's `ApplyLayers` on a path map.

A package's layer is the lowest layer from which the same package at the same path has been
continuously visible, which is where a fix would have to go.

A language package whose file an installed OS package owns (dpkg's `info/*.list`, apk's
`F:`/`R:` lines, rpm's file list: Debian's `python3-urllib3` owns urllib3's dist-info) gets that
OS package as its `owner`: it is patched, and matched, through the OS package, as Trivy and Syft
do. Only owners that are installed in the final filesystem count.

`inventory_image` adds the cache: a layer's inventory is computed once per (diff_id,
cataloger version), so a base layer shared by many images is read only once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from collections.abc import Set as AbstractSet
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import BinaryIO, Protocol

from moorage.scanning.catalog import CATALOGER_VERSION, catalog_layer
from moorage.scanning.catalog.java import ArchiveLimits
from moorage.scanning.catalog.os_release import choose_distro
from moorage.scanning.layers import LayerError, LayerLimits
from moorage.scanning.packages import (
    LANGUAGE_ECOSYSTEMS,
    OS_ECOSYSTEMS,
    FileFindings,
    Inventory,
    LayerInventory,
    Note,
    Package,
)

_PackageKey = tuple[str, str, str, str]  # ecosystem, name, version, location


@dataclass(frozen=True, slots=True)
class _Visible:
    findings: FileFindings
    origins: dict[_PackageKey, str]  # package → diff_id of the layer it has been visible since


def squash(layers: Sequence[LayerInventory]) -> Inventory:
    """The inventory of the filesystem that `layers` (bottom first) stack up to."""
    visible: dict[str, _Visible] = {}
    for layer in layers:
        whiteouts, opaque_dirs = frozenset(layer.whiteouts), frozenset(layer.opaque_dirs)
        if whiteouts or opaque_dirs:
            for path in [path for path in visible if is_hidden(path, whiteouts, opaque_dirs)]:
                del visible[path]
        for findings in layer.files:
            below = visible.get(findings.path)
            visible[findings.path] = _Visible(
                findings, _origins(findings.packages, below, layer.diff_id)
            )
    return _inventory(visible[path] for path in sorted(visible))


def is_hidden(path: str, whiteouts: AbstractSet[str], opaque_dirs: AbstractSet[str]) -> bool:
    """Whether a lower layer's `path` is hidden by an upper layer's whiteouts."""
    if "" in opaque_dirs:
        return True  # the root itself is opaque
    parts = path.split("/")
    for depth in range(1, len(parts) + 1):
        prefix = "/".join(parts[:depth])
        if prefix in whiteouts:
            return True
        if depth < len(parts) and prefix in opaque_dirs:
            return True
    return False


def _origins(
    packages: tuple[Package, ...], below: _Visible | None, diff_id: str
) -> dict[_PackageKey, str]:
    earlier = below.origins if below is not None else {}
    return {_key(package): earlier.get(_key(package), diff_id) for package in packages}


def _key(package: Package) -> _PackageKey:
    return (package.ecosystem, package.name, package.version, package.location)


def _inventory(visible: Iterable[_Visible]) -> Inventory:
    entries = list(visible)
    distro = choose_distro(
        {entry.findings.path: entry.findings.distro for entry in entries if entry.findings.distro}
    )
    owners = _owners(entries)
    packages = [
        replace(
            package,
            distro=distro,
            layer=entry.origins[_key(package)],
            owner=_owner_of(package, owners),
        )
        for entry in entries
        for package in entry.findings.packages
    ]
    packages.sort(key=lambda package: (*_key(package), package.arch or ""))
    notes = tuple(
        Note(entry.findings.path, message) for entry in entries for message in entry.findings.notes
    )
    return Inventory(distro=distro, packages=tuple(packages), notes=notes)


def _owners(entries: Sequence[_Visible]) -> dict[str, str]:
    """Path -> the installed OS package that owns it."""
    installed = {
        package.name
        for entry in entries
        for package in entry.findings.packages
        if package.ecosystem in OS_ECOSYSTEMS
    }
    return {
        item.path: item.owner
        for entry in entries
        for item in entry.findings.owned
        if item.owner in installed
    }


def _owner_of(package: Package, owners: dict[str, str]) -> str | None:
    if package.ecosystem not in LANGUAGE_ECOSYSTEMS or not owners:
        return None
    # Inside an archive (`outer.jar!/inner/pom.properties`) the file on disk is the outer one.
    return owners.get(package.location.partition("!")[0])


class LayerCache(Protocol):
    """Stored layer inventories, keyed by (diff_id, cataloger version)."""

    def get(self, diff_id: str, cataloger_version: str) -> LayerInventory | None: ...

    def put(self, inventory: LayerInventory) -> None: ...


class MemoryLayerCache:
    def __init__(self) -> None:
        self._inventories: dict[tuple[str, str], LayerInventory] = {}

    def get(self, diff_id: str, cataloger_version: str) -> LayerInventory | None:
        return self._inventories.get((diff_id, cataloger_version))

    def put(self, inventory: LayerInventory) -> None:
        self._inventories[(inventory.diff_id, inventory.cataloger_version)] = inventory


@dataclass(frozen=True, slots=True)
class LayerSource:
    diff_id: str  # from the image config's rootfs.diff_ids
    open: Callable[[], AbstractContextManager[BinaryIO]]  # the (compressed) layer blob


def inventory_image(
    layers: Sequence[LayerSource],
    cache: LayerCache | None = None,
    limits: LayerLimits | None = None,
    archive_limits: ArchiveLimits | None = None,
) -> Inventory:
    """Catalog each layer not already cached, then squash; LayerError names the failing layer."""
    inventories = []
    for layer in layers:
        inventory = cache.get(layer.diff_id, CATALOGER_VERSION) if cache is not None else None
        if inventory is None:
            try:
                with layer.open() as blob:
                    inventory = catalog_layer(blob, layer.diff_id, limits, archive_limits)
            except LayerError as error:
                raise LayerError(f"layer {layer.diff_id}: {error.reason}") from None
            if cache is not None:
                cache.put(inventory)
        inventories.append(inventory)
    return squash(inventories)
