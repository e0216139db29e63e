"""Whole images: per-layer catalogs squashed with OCI whiteouts, and cached per diff_id."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import zipfile
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import BinaryIO

import pytest
import zstandard

from moorage.scanning.catalog import CATALOGER_VERSION, catalog_layer
from moorage.scanning.layers import LayerError, LayerLimits
from moorage.scanning.packages import Distro, Inventory, LayerInventory, Note
from moorage.scanning.squash import (
    LayerSource,
    MemoryLayerCache,
    inventory_image,
    is_hidden,
    squash,
)

APP = "usr/src/app/node_modules"
DIST = "usr/lib/python3/dist-packages"
MIB = 1024 * 1024
OS_RELEASE = b'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n'


def stanza(name: str, version: str, source: str | None = None) -> bytes:
    lines = [f"Package: {name}", "Status: install ok installed", "Architecture: amd64"]
    if source:
        lines.append(f"Source: {source}")
    lines += [f"Version: {version}", f"Description: {name}"]
    return "\n".join(lines).encode() + b"\n"


def package_json(name: str, version: str) -> bytes:
    return json.dumps({"name": name, "version": version}).encode()


def metadata(name: str, version: str) -> bytes:
    return f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()


def log4j_jar() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(
            "META-INF/maven/org.apache.logging.log4j/log4j-core/pom.properties",
            "version=2.14.1\ngroupId=org.apache.logging.log4j\nartifactId=log4j-core\n",
        )
    return buffer.getvalue()


class Layer:
    """A layer blob built in the test, with its diff_id."""

    def __init__(
        self,
        files: Mapping[str, bytes],
        symlinks: Mapping[str, str] | None = None,
        compression: str = "gzip",
    ) -> None:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
            for name, target in (symlinks or {}).items():
                info = tarfile.TarInfo(name)
                info.type = tarfile.SYMTYPE
                info.linkname = target
                archive.addfile(info)
        raw = buffer.getvalue()
        self.diff_id = "sha256:" + hashlib.sha256(raw).hexdigest()
        if compression == "gzip":
            self.blob = gzip.compress(raw)
        elif compression == "zstd":
            self.blob = zstandard.ZstdCompressor().compress(raw)
        else:
            self.blob = raw

    def catalog(self) -> LayerInventory:
        return catalog_layer(io.BytesIO(self.blob), self.diff_id)


class Blobs:
    """Layer sources that count how often each blob is opened."""

    def __init__(self) -> None:
        self.opened: Counter[str] = Counter()

    def source(self, layer: Layer, diff_id: str | None = None) -> LayerSource:
        @contextmanager
        def open_blob() -> Iterator[BinaryIO]:
            self.opened[layer.diff_id] += 1
            yield io.BytesIO(layer.blob)

        return LayerSource(diff_id or layer.diff_id, open_blob)


def base_layer() -> Layer:
    return Layer(
        {
            "usr/lib/os-release": OS_RELEASE,
            "var/lib/dpkg/status": b"\n".join(
                [
                    stanza("libssl3", "3.0.11-1~deb12u2", "openssl"),
                    stanza("tzdata", "2024a-0+deb12u1"),
                ]
            ),
            f"{APP}/lodash/package.json": package_json("lodash", "4.17.20"),
            f"{APP}/minimist/package.json": package_json("minimist", "1.2.5"),
            f"{DIST}/requests-2.25.0.egg-info/PKG-INFO": metadata("requests", "2.25.0"),
            f"{DIST}/urllib3-1.26.5.egg-info/PKG-INFO": metadata("urllib3", "1.26.5"),
            "opt/app/lib/log4j-core-2.14.1.jar": log4j_jar(),
        },
        symlinks={"etc/os-release": "../usr/lib/os-release"},
    )


def app_layer() -> Layer:
    return Layer(
        {
            f"{APP}/.wh.lodash": b"",
            f"{DIST}/.wh..wh..opq": b"",
            # The opaque marker hides only lower layers; this layer's own files stay.
            f"{DIST}/requests-2.31.0.dist-info/METADATA": metadata("requests", "2.31.0"),
        },
        compression="zstd",
    )


def upgrade_layer() -> Layer:
    return Layer(
        {
            # apt-get remove tzdata rewrote the status file.
            "var/lib/dpkg/status": stanza("libssl3", "3.0.11-1~deb12u2", "openssl"),
            # A same-layer whiteout must not hide the same layer's new copy.
            f"{APP}/.wh.minimist": b"",
            f"{APP}/minimist/package.json": package_json("minimist", "1.2.8"),
        },
        compression="none",
    )


def summary(inventory: Inventory) -> set[tuple[str, str, str]]:
    return {(p.ecosystem.value, p.name, p.version) for p in inventory.packages}


def test_squash_applies_whiteouts_opaque_dirs_and_rewritten_databases() -> None:
    base, app, upgrade = base_layer(), app_layer(), upgrade_layer()
    inventory = squash([base.catalog(), app.catalog(), upgrade.catalog()])
    assert inventory.distro == Distro("debian", "12", (), "Debian GNU/Linux 12 (bookworm)")
    assert summary(inventory) == {
        ("Debian", "libssl3", "3.0.11-1~deb12u2"),
        ("PyPI", "requests", "2.31.0"),
        ("npm", "minimist", "1.2.8"),
        ("Maven", "org.apache.logging.log4j:log4j-core", "2.14.1"),
    }
    layers = {p.name: p.layer for p in inventory.packages}
    assert layers == {
        "libssl3": base.diff_id,  # unchanged by the rewrite, so still the base layer's
        "requests": app.diff_id,
        "minimist": upgrade.diff_id,
        "org.apache.logging.log4j:log4j-core": base.diff_id,
    }
    libssl = next(p for p in inventory.packages if p.name == "libssl3")
    assert libssl.purl == (
        "pkg:deb/debian/libssl3@3.0.11-1~deb12u2?arch=amd64&distro=debian-12&upstream=openssl"
    )
    assert inventory.notes == ()


def test_each_layer_alone() -> None:
    base = squash([base_layer().catalog()])
    assert {name for _, name, _ in summary(base)} == {
        "libssl3",
        "tzdata",
        "lodash",
        "minimist",
        "requests",
        "urllib3",
        "org.apache.logging.log4j:log4j-core",
    }
    app_only = squash([app_layer().catalog()])
    assert summary(app_only) == {("PyPI", "requests", "2.31.0")}
    assert app_only.distro is None


def test_distro_from_a_later_layer_applies_to_earlier_packages() -> None:
    packages = Layer({"lib/apk/db/installed": b"P:musl\nV:1.2.4_git20230717-r4\nA:x86_64\n"})
    release = Layer({"etc/alpine-release": b"3.19.1\n"})
    inventory = squash([packages.catalog(), release.catalog()])
    assert inventory.packages[0].purl == (
        "pkg:apk/alpine/musl@1.2.4_git20230717-r4?arch=x86_64&distro=alpine-3.19.1"
    )


def test_whiteout_of_a_release_file_and_a_status_d_entry() -> None:
    base = Layer(
        {
            "etc/os-release": OS_RELEASE,
            "var/lib/dpkg/status.d/base-files": b"Package: base-files\nVersion: 12.4+deb12u5\n",
            "var/lib/dpkg/status.d/libssl3": b"Package: libssl3\nVersion: 3.0.11-1~deb12u2\n",
        }
    )
    upper = Layer({"etc/.wh.os-release": b"", "var/lib/dpkg/status.d/.wh.libssl3": b""})
    inventory = squash([base.catalog(), upper.catalog()])
    assert inventory.distro is None
    assert summary(inventory) == {("Debian", "base-files", "12.4+deb12u5")}


def test_whiteout_of_a_parent_directory_and_an_opaque_root() -> None:
    base = base_layer().catalog()
    no_usr = Layer({".wh.usr": b""}).catalog()
    assert {name for _, name, _ in summary(squash([base, no_usr]))} == {
        "libssl3",
        "tzdata",
        "org.apache.logging.log4j:log4j-core",
    }
    opaque_root = Layer({".wh..wh..opq": b"", "etc/alpine-release": b"3.19.1\n"}).catalog()
    fresh = squash([base, opaque_root])
    assert fresh.packages == ()
    assert fresh.distro == Distro("alpine", "3.19.1")


def test_a_symlink_or_an_unreadable_file_hides_the_lower_copy() -> None:
    base = base_layer().catalog()
    relinked = Layer({}, symlinks={"var/lib/dpkg/status": "/nowhere"}).catalog()
    assert not {name for _, name, _ in summary(squash([base, relinked]))} & {"libssl3", "tzdata"}
    huge_jar = Layer({"opt/app/lib/log4j-core-2.14.1.jar": bytes(2 * MIB)})
    limits = LayerLimits(max_file_bytes=1 * MIB)
    skipped = catalog_layer(io.BytesIO(huge_jar.blob), huge_jar.diff_id, limits)
    inventory = squash([base, skipped])
    assert "org.apache.logging.log4j:log4j-core" not in {p.name for p in inventory.packages}
    assert inventory.notes == (
        Note("opt/app/lib/log4j-core-2.14.1.jar", "larger than 1048576 bytes; not read"),
    )


def test_notes_of_visible_files_reach_the_inventory() -> None:
    layer = Layer({f"{APP}/broken/package.json": b"{not json"})
    inventory = squash([layer.catalog()])
    assert inventory.notes == (Note(f"{APP}/broken/package.json", "not valid JSON"),)


@pytest.mark.parametrize(
    ("path", "hidden"),
    [
        ("usr/src/app/node_modules/lodash/package.json", True),  # under a whiteout
        ("usr/src/app/node_modules/lodash", True),  # the whiteout itself
        ("usr/src/app/node_modules/lodash-es/package.json", False),  # a prefix, not a parent
        ("usr/lib/python3/dist-packages/x.dist-info/METADATA", True),  # under an opaque dir
        ("usr/lib/python3/dist-packages", False),  # the opaque dir itself stays
        ("etc/os-release", False),
    ],
)
def test_is_hidden(path: str, hidden: bool) -> None:
    whiteouts = frozenset({"usr/src/app/node_modules/lodash"})
    opaque = frozenset({"usr/lib/python3/dist-packages"})
    assert is_hidden(path, whiteouts, opaque) is hidden


# -- caching


def test_a_shared_base_layer_is_catalogued_once() -> None:
    base, app, upgrade = base_layer(), app_layer(), upgrade_layer()
    blobs, cache = Blobs(), MemoryLayerCache()
    first = inventory_image([blobs.source(base), blobs.source(app)], cache)
    second = inventory_image([blobs.source(base), blobs.source(upgrade)], cache)
    again = inventory_image([blobs.source(base), blobs.source(app)], cache)
    assert blobs.opened == {base.diff_id: 1, app.diff_id: 1, upgrade.diff_id: 1}
    assert again == first
    assert ("npm", "lodash", "4.17.20") in summary(second)
    assert cache.get(base.diff_id, CATALOGER_VERSION) is not None
    assert cache.get(base.diff_id, "another cataloger version") is None


def test_layer_inventory_survives_a_json_round_trip() -> None:
    inventories = [base_layer().catalog(), app_layer().catalog(), upgrade_layer().catalog()]
    stored = [json.loads(json.dumps(inventory.to_json())) for inventory in inventories]
    restored = [LayerInventory.from_json(record) for record in stored]
    assert restored == inventories
    assert squash(restored) == squash(inventories)


@pytest.mark.parametrize(
    "record",
    [
        None,
        [],
        {"diff_id": "sha256:x"},
        {"diff_id": 1, "cataloger_version": "1", "files": [], "whiteouts": [], "opaque_dirs": []},
        {
            "diff_id": "sha256:x",
            "cataloger_version": "1",
            "files": [{"path": "a", "packages": [{"ecosystem": "Nope"}]}],
            "whiteouts": [],
            "opaque_dirs": [],
        },
    ],
)
def test_corrupt_cache_records_are_rejected(record: object) -> None:
    with pytest.raises((ValueError, KeyError)):
        LayerInventory.from_json(record)


def test_a_layer_claiming_another_layers_diff_id_is_refused_and_not_cached() -> None:
    base, app = base_layer(), app_layer()
    blobs, cache = Blobs(), MemoryLayerCache()
    with pytest.raises(LayerError, match=f"layer {base.diff_id}: layer content is {app.diff_id}"):
        inventory_image([blobs.source(app, diff_id=base.diff_id)], cache)
    assert cache.get(base.diff_id, CATALOGER_VERSION) is None


def test_a_bad_layer_fails_the_image_with_its_diff_id() -> None:
    info = tarfile.TarInfo("zeros")
    info.size = 4 * 1024 * MIB
    chunk = gzip.compress(bytes(16 * MIB), compresslevel=9)
    bomb = Layer({})
    bomb.blob = gzip.compress(info.tobuf(format=tarfile.GNU_FORMAT)) + chunk * 256
    bomb.diff_id = "sha256:" + "0" * 64
    with pytest.raises(LayerError) as raised:
        inventory_image([Blobs().source(base_layer()), Blobs().source(bomb)])
    assert raised.value.reason.startswith(f"layer {bomb.diff_id}: compression ratio exceeds")


def test_sha512_diff_ids_and_unknown_algorithms() -> None:
    layer = base_layer()
    raw = gzip.decompress(layer.blob)
    sha512 = "sha512:" + hashlib.sha512(raw).hexdigest()
    inventory = catalog_layer(io.BytesIO(layer.blob), sha512)
    assert inventory.diff_id == sha512
    with pytest.raises(LayerError, match="unsupported diff_id"):
        catalog_layer(io.BytesIO(layer.blob), "md5:" + "0" * 32)


def test_hard_links_record_what_their_targets_record() -> None:
    buffer = io.BytesIO()
    store = "usr/src/app/node_modules/.pnpm/lodash@4.17.20/node_modules/lodash/package.json"
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        data = package_json("lodash", "4.17.20")
        info = tarfile.TarInfo(store)
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
        for name, target in [
            (f"{APP}/lodash/package.json", store),
            (f"{APP}/other/package.json", "root/.cache/not-read.json"),
        ]:
            info = tarfile.TarInfo(name)
            info.type = tarfile.LNKTYPE
            info.linkname = target
            archive.addfile(info)
    inventory = squash([catalog_layer(io.BytesIO(buffer.getvalue()))])
    assert [(p.name, p.location) for p in inventory.packages] == [
        ("lodash", store),
        ("lodash", f"{APP}/lodash/package.json"),
    ]
    assert inventory.notes == (
        Note(f"{APP}/other/package.json", "hard link to a file this layer did not read"),
    )
