"""What a scan finds: packages, the distribution, and the per-layer results they come from.

A `Package` carries what matching needs: the ecosystem, the binary name and version and, where
the distribution has them, the source package's name and version (OSV and the distribution
feeds key on the source: `libssl3` is fixed in `openssl`). Its purl is derived from those fields;
the distribution namespace and `distro=` qualifier are filled in once the image's distribution
is known, which may be a different layer from the package database's.

A `LayerInventory` is what one layer yields on its own: results keyed by the file they came
from, plus the layer's whiteouts. It depends only on the layer's bytes and the cataloger
version, so it is cached by (diff_id, cataloger version) and shared by every image that
contains the layer; `to_json`/`from_json` give it a storable form.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Final
from urllib.parse import quote

MAX_NOTES_PER_FILE: Final = 20


class Ecosystem(StrEnum):
    DEBIAN = "Debian"  # dpkg databases, whichever Debian derivative the image is
    ALPINE = "Alpine"
    RPM = "RPM"
    PYPI = "PyPI"
    NPM = "npm"
    MAVEN = "Maven"
    GO = "Go"
    CRATES_IO = "crates.io"


# purl type, and the namespace used until the image's distribution is known.
_PURL_TYPES: Final = {
    Ecosystem.DEBIAN: ("deb", "debian"),
    Ecosystem.ALPINE: ("apk", "alpine"),
    Ecosystem.RPM: ("rpm", None),
    Ecosystem.PYPI: ("pypi", None),
    Ecosystem.NPM: ("npm", None),
    Ecosystem.MAVEN: ("maven", None),
    Ecosystem.GO: ("golang", None),
    Ecosystem.CRATES_IO: ("cargo", None),
}


@dataclass(frozen=True, slots=True)
class Distro:
    """The image's distribution, from os-release (or debian_version / alpine-release)."""

    id: str  # os-release ID: debian, ubuntu, alpine, fedora, rhel, ...
    version_id: str | None = None  # "12", "22.04", "3.19.1"; None on rolling releases
    id_like: tuple[str, ...] = ()
    pretty_name: str | None = None

    @property
    def purl_qualifier(self) -> str:
        return f"{self.id}-{self.version_id}" if self.version_id else self.id


@dataclass(frozen=True, slots=True)
class Package:
    ecosystem: Ecosystem
    name: str  # as the ecosystem spells it; Maven is "group:artifact"
    version: str  # RPM carries "[epoch:]version-release"
    location: str  # the file it was found in; inside an archive `outer.jar!/inner/path`
    source_name: str | None = None
    source_version: str | None = None
    arch: str | None = None
    distro: Distro | None = None  # set when the image is squashed
    layer: str | None = None  # diff_id of the lowest layer holding it; set when squashed
    # A language package whose files an OS package installed (Debian's python3-urllib3 owns
    # urllib3's dist-info): the OS package's name. Set when squashed.
    owner: str | None = None

    @property
    def purl(self) -> str:
        purl_type, default_namespace = _PURL_TYPES[self.ecosystem]
        namespace, name = self._purl_name(default_namespace)
        version = self.version
        qualifiers: dict[str, str | None] = {"arch": self.arch}
        if self.ecosystem is Ecosystem.RPM:
            epoch, _, version = version.rpartition(":")
            qualifiers["epoch"] = epoch or None
        qualifiers["upstream"] = self._upstream()
        if self.distro is not None and purl_type in ("deb", "apk", "rpm"):
            qualifiers["distro"] = self.distro.purl_qualifier
        return build_purl(purl_type, name, version, namespace, qualifiers)

    def _purl_name(self, default_namespace: str | None) -> tuple[str | None, str]:
        if self.ecosystem in (Ecosystem.DEBIAN, Ecosystem.ALPINE, Ecosystem.RPM):
            return (self.distro.id if self.distro else default_namespace), self.name
        if self.ecosystem is Ecosystem.PYPI:
            return None, self.name.lower().replace("_", "-")
        if self.ecosystem is Ecosystem.NPM:
            scope, _, name = self.name.rpartition("/")
            return (scope.lower() or None), name.lower()
        if self.ecosystem is Ecosystem.MAVEN:
            group, _, artifact = self.name.rpartition(":")
            return (group or None), artifact
        if self.ecosystem is Ecosystem.GO:
            namespace, _, name = self.name.rpartition("/")
            return (namespace or None), name
        return None, self.name

    def _upstream(self) -> str | None:
        if self.source_name is None:
            return None
        if self.ecosystem is Ecosystem.RPM:  # the source RPM's file name, which has no epoch
            version_release = (self.source_version or "").rpartition(":")[2]
            return f"{self.source_name}-{version_release}.src.rpm"
        if self.source_version is not None and self.source_version != self.version:
            return f"{self.source_name}@{self.source_version}"
        if self.source_name != self.name:
            return self.source_name
        return None


LANGUAGE_ECOSYSTEMS: Final = frozenset(
    {Ecosystem.PYPI, Ecosystem.NPM, Ecosystem.MAVEN, Ecosystem.GO, Ecosystem.CRATES_IO}
)
OS_ECOSYSTEMS: Final = frozenset({Ecosystem.DEBIAN, Ecosystem.ALPINE, Ecosystem.RPM})


@dataclass(frozen=True, slots=True)
class OwnedFile:
    """A file an OS package database says the package `owner` installed."""

    path: str  # relative to the image root, as layer paths are
    owner: str  # the OS package's name


@dataclass(frozen=True, slots=True)
class Note:
    """A file that could not be read or a record that was skipped, kept for the report."""

    path: str
    message: str


@dataclass(frozen=True, slots=True)
class Inventory:
    """The squashed result for an image: what is installed in its final filesystem."""

    distro: Distro | None
    packages: tuple[Package, ...]
    notes: tuple[Note, ...] = ()

    def to_json(self) -> dict[str, object]:
        return {
            "distro": _distro_to_json(self.distro) if self.distro is not None else None,
            "packages": [
                _package_to_json(package)
                | ({"layer": package.layer} if package.layer else {})
                | ({"owner": package.owner} if package.owner else {})
                for package in self.packages
            ],
            "notes": [{"path": note.path, "message": note.message} for note in self.notes],
        }

    @classmethod
    def from_json(cls, data: object) -> Inventory:
        """Rebuild a stored inventory; raises ValueError (or KeyError) on anything malformed."""
        record = _mapping(data)
        distro_record = record.get("distro")
        distro = _distro_from_json(distro_record) if distro_record is not None else None
        packages = []
        for item in _sequence(record["packages"]):
            package = _package_from_json(item)
            layer = _optional_text(_mapping(item).get("layer"))
            owner = _optional_text(_mapping(item).get("owner"))
            packages.append(replace(package, distro=distro, layer=layer, owner=owner))
        notes = tuple(
            Note(_text(_mapping(note)["path"]), _text(_mapping(note)["message"]))
            for note in _sequence(record.get("notes", []))
        )
        return cls(distro=distro, packages=tuple(packages), notes=notes)


@dataclass(frozen=True, slots=True)
class FileFindings:
    """What one file of a layer yields. An empty result still matters: it hides the same path
    in lower layers (an upper layer's dpkg status after `apt-get remove`)."""

    path: str
    packages: tuple[Package, ...] = ()
    distro: Distro | None = None
    notes: tuple[str, ...] = ()
    # Files an OS package database (dpkg .list, apk F:/R:, rpm file list) says its packages
    # own; only those a language cataloger reads are kept.
    owned: tuple[OwnedFile, ...] = ()

    @classmethod
    def of(
        cls,
        path: str,
        packages: Iterable[Package] = (),
        notes: Sequence[str] = (),
        distro: Distro | None = None,
        owned: Iterable[OwnedFile] = (),
    ) -> FileFindings:
        """Findings with the notes capped, so a database of garbage cannot flood a report."""
        kept = tuple(notes[:MAX_NOTES_PER_FILE])
        if len(notes) > MAX_NOTES_PER_FILE:
            kept += (f"and {len(notes) - MAX_NOTES_PER_FILE} more problems",)
        return cls(path, tuple(packages), distro, kept, tuple(owned))


@dataclass(frozen=True, slots=True)
class LayerInventory:
    diff_id: str
    cataloger_version: str
    files: tuple[FileFindings, ...] = ()  # one per path, sorted by path
    whiteouts: tuple[str, ...] = ()
    opaque_dirs: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        return {
            "diff_id": self.diff_id,
            "cataloger_version": self.cataloger_version,
            "files": [_findings_to_json(findings) for findings in self.files],
            "whiteouts": list(self.whiteouts),
            "opaque_dirs": list(self.opaque_dirs),
        }

    @classmethod
    def from_json(cls, data: object) -> LayerInventory:
        """Rebuild a cached inventory; raises ValueError on anything malformed."""
        record = _mapping(data)
        return cls(
            diff_id=_text(record["diff_id"]),
            cataloger_version=_text(record["cataloger_version"]),
            files=tuple(_findings_from_json(item) for item in _sequence(record["files"])),
            whiteouts=tuple(_text(item) for item in _sequence(record["whiteouts"])),
            opaque_dirs=tuple(_text(item) for item in _sequence(record["opaque_dirs"])),
        )


def build_purl(
    purl_type: str,
    name: str,
    version: str | None = None,
    namespace: str | None = None,
    qualifiers: Mapping[str, str | None] | None = None,
) -> str:
    """A package URL (github.com/package-url/purl-spec) with its components percent-encoded."""
    text = f"pkg:{purl_type}/"
    if namespace:
        text += "/".join(_purl_encode(segment) for segment in namespace.split("/")) + "/"
    text += _purl_encode(name)
    if version:
        text += "@" + _purl_encode(version)
    present = sorted((key, value) for key, value in (qualifiers or {}).items() if value)
    if present:
        text += "?" + "&".join(f"{key}={_purl_encode(value)}" for key, value in present)
    return text


def _purl_encode(text: str) -> str:
    # ':' is left readable, as the reference implementations do (Debian epochs).
    return quote(text, safe="").replace("%3A", ":")


_NAME_FIELDS: Final = ("ecosystem", "name", "version", "location")
_OPTIONAL_FIELDS: Final = ("source_name", "source_version", "arch")


def _findings_to_json(findings: FileFindings) -> dict[str, object]:
    result: dict[str, object] = {"path": findings.path}
    if findings.packages:
        result["packages"] = [_package_to_json(package) for package in findings.packages]
    if findings.distro is not None:
        result["distro"] = _distro_to_json(findings.distro)
    if findings.notes:
        result["notes"] = list(findings.notes)
    if findings.owned:
        result["owned"] = [[item.path, item.owner] for item in findings.owned]
    return result


def _distro_to_json(distro: Distro) -> dict[str, object]:
    return {
        "id": distro.id,
        "version_id": distro.version_id,
        "id_like": list(distro.id_like),
        "pretty_name": distro.pretty_name,
    }


def _distro_from_json(data: object) -> Distro:
    fields = _mapping(data)
    return Distro(
        id=_text(fields["id"]),
        version_id=_optional_text(fields.get("version_id")),
        id_like=tuple(_text(item) for item in _sequence(fields.get("id_like", []))),
        pretty_name=_optional_text(fields.get("pretty_name")),
    )


def _package_to_json(package: Package) -> dict[str, str]:
    names = {key: str(getattr(package, key)) for key in _NAME_FIELDS}
    optional = {key: getattr(package, key) for key in _OPTIONAL_FIELDS}
    return names | {key: value for key, value in optional.items() if value is not None}


def _findings_from_json(data: object) -> FileFindings:
    record = _mapping(data)
    distro_record = record.get("distro")
    distro = _distro_from_json(distro_record) if distro_record is not None else None
    return FileFindings(
        path=_text(record["path"]),
        packages=tuple(_package_from_json(item) for item in _sequence(record.get("packages", []))),
        distro=distro,
        notes=tuple(_text(item) for item in _sequence(record.get("notes", []))),
        owned=tuple(_owned_from_json(item) for item in _sequence(record.get("owned", []))),
    )


def _owned_from_json(data: object) -> OwnedFile:
    path, owner = _sequence(data)
    return OwnedFile(_text(path), _text(owner))


def _package_from_json(data: object) -> Package:
    record = _mapping(data)
    return Package(
        ecosystem=Ecosystem(_text(record["ecosystem"])),
        name=_text(record["name"]),
        version=_text(record["version"]),
        location=_text(record["location"]),
        source_name=_optional_text(record.get("source_name")),
        source_version=_optional_text(record.get("source_version")),
        arch=_optional_text(record.get("arch")),
    )


def _mapping(value: object) -> Mapping[str, object]:
    if not isinstance(value, Mapping):
        raise ValueError("expected an object")
    return value


def _sequence(value: object) -> list[object]:
    if not isinstance(value, list):
        raise ValueError("expected an array")
    return value


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a string")
    return value


def _optional_text(value: object) -> str | None:
    return None if value is None else _text(value)
