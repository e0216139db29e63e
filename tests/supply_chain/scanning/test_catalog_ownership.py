"""Language packages an OS package installed are matched through that OS package.

Debian's `python3-urllib3` ships urllib3's egg-info/dist-info; Debian fixes urllib3 by backport,
so matching those files against PyPI advisories reports vulnerabilities that are fixed. dpkg's
`info/*.list` (and distroless `status.d/*.md5sums`), apk's `F:`/`R:` lines and rpm's file list
say which files each OS package owns; a language package found in such a file keeps its place
in the SBOMs with the owning OS package, and is not matched against its language's advisories.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import tarfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from moorage.scanning.catalog import catalog_layer
from moorage.scanning.catalog import rpm as rpm_catalog
from moorage.scanning.packages import Ecosystem, Inventory, LayerInventory, OwnedFile, Package
from moorage.scanning.sbom import ImageSubject, SbomFormat, build_document
from moorage.scanning.squash import squash
from moorage.vulnerability.database import VulnerabilityDatabase
from moorage.vulnerability.generation import Generation
from moorage.vulnerability.matcher import lookup_keys, match
from tests.support.osv import osv_record, write_bundle
from tests.support.scan_images import DEBIAN_12, dpkg_stanza, elf_with_sections, go_buildinfo

DIST = "usr/lib/python3/dist-packages"
URLLIB3_EGG = f"{DIST}/urllib3-1.26.12.egg-info/PKG-INFO"
WERKZEUG_DIST = f"{DIST}/Werkzeug-2.2.2.dist-info/METADATA"
LOCAL = "usr/local/lib/python3.11/dist-packages/idna-3.3.dist-info/METADATA"


def metadata(name: str, version: str) -> bytes:
    return f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()


def layer(files: dict[str, bytes]) -> LayerInventory:
    """A layer built in the test and catalogued as a scan would."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755 if name.startswith("usr/bin/") else 0o644
            archive.addfile(info, io.BytesIO(data))
    return catalog_layer(io.BytesIO(buffer.getvalue()))


def dpkg_list(*paths: str) -> bytes:
    """A dpkg file list: every directory and file, absolute, as dpkg writes them."""
    lines = ["/."]
    for path in paths:
        parts = path.split("/")
        lines += ["/" + "/".join(parts[:depth]) for depth in range(1, len(parts) + 1)]
    return "\n".join(dict.fromkeys(lines)).encode() + b"\n"


def debian_layer(*, urllib3_installed: bool = False) -> LayerInventory:
    stanzas = [
        dpkg_stanza("python3-werkzeug", "2.2.2-3+deb12u1", "python-werkzeug", arch="all"),
        dpkg_stanza("tzdata", "2024a-0+deb12u1", arch="all"),
    ]
    if urllib3_installed:
        stanzas.append(dpkg_stanza("python3-urllib3", "1.26.12-1", "python-urllib3", arch="all"))
    return layer(
        {
            DEBIAN_12[0]: DEBIAN_12[1],
            "var/lib/dpkg/status": "\n".join(stanzas).encode(),
            # A stale list of a package that is not installed (any more) owns nothing.
            "var/lib/dpkg/info/python3-urllib3.list": dpkg_list(URLLIB3_EGG),
            "var/lib/dpkg/info/python3-werkzeug:all.list": dpkg_list(WERKZEUG_DIST),
            "var/lib/dpkg/info/tzdata.list": dpkg_list("usr/share/zoneinfo/UTC"),
            URLLIB3_EGG: metadata("urllib3", "1.26.12"),
            WERKZEUG_DIST: metadata("Werkzeug", "2.2.2"),
            LOCAL: metadata("idna", "3.3"),  # pip-installed: no OS package owns it
        }
    )


PYPI_RECORDS = {
    "PyPI": [
        osv_record("GHSA-v845-jxx5-vc9f", "PyPI", "urllib3", fixed="1.26.17"),
        osv_record("GHSA-px8h-6qxv-m22q", "PyPI", "werkzeug", fixed="2.2.3"),
        osv_record("GHSA-jjg7-2v4v-x38h", "PyPI", "idna", fixed="3.7"),
    ]
}


@pytest.fixture(scope="module")
def pypi_generation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Generation]:
    root = tmp_path_factory.mktemp("ownership")
    database = VulnerabilityDatabase(root / "vulndb")
    database.import_path(write_bundle(root / "bundle.tar.gz", PYPI_RECORDS))
    generation = database.current()
    assert generation is not None
    yield generation
    generation.close()


def by_name(inventory: Inventory) -> dict[str, Package]:
    return {package.name: package for package in inventory.packages}


def test_a_dpkg_file_list_keeps_only_what_a_language_cataloger_reads() -> None:
    catalogued = debian_layer()
    owned = {item for findings in catalogued.files for item in findings.owned}
    assert owned == {
        OwnedFile(URLLIB3_EGG, "python3-urllib3"),
        OwnedFile(WERKZEUG_DIST, "python3-werkzeug"),
    }
    # The cached form keeps them.
    assert LayerInventory.from_json(json.loads(json.dumps(catalogued.to_json()))) == catalogued


def test_python_files_of_debian_packages_are_matched_through_debian(
    pypi_generation: Generation,
) -> None:
    inventory = squash([debian_layer()])
    packages = by_name(inventory)
    assert packages["Werkzeug"].owner == "python3-werkzeug"
    assert packages["idna"].owner is None
    # Stored inventories keep the owner (re-matches read them).
    assert Inventory.from_json(json.loads(json.dumps(inventory.to_json()))) == inventory
    assert lookup_keys(packages["Werkzeug"], inventory.distro) == ()
    result = match(inventory, pypi_generation)
    found = {(finding.id, finding.package) for finding in result.findings}
    # urllib3 is owned too, but its owner is not installed: it is matched as a PyPI package.
    assert found == {("GHSA-jjg7-2v4v-x38h", "idna"), ("GHSA-v845-jxx5-vc9f", "urllib3")}
    assert any("matched through those OS packages" in note for note in result.notes)


def test_an_installed_owner_takes_its_python_files_out_of_pypi_matching(
    pypi_generation: Generation,
) -> None:
    inventory = squash([debian_layer()])
    assert by_name(inventory)["urllib3"].owner is None
    with_owner = squash(
        [
            debian_layer(),
            layer(
                {
                    "var/lib/dpkg/status": "\n".join(
                        [
                            dpkg_stanza("python3-urllib3", "1.26.12-1", "python-urllib3", "all"),
                            dpkg_stanza("python3-werkzeug", "2.2.2-3+deb12u1", arch="all"),
                        ]
                    ).encode()
                }
            ),
        ]
    )
    packages = by_name(with_owner)
    assert packages["urllib3"].owner == "python3-urllib3"
    found = {finding.package for finding in match(with_owner, pypi_generation).findings}
    assert found == {"idna"}


def test_a_removed_owner_no_longer_owns(pypi_generation: Generation) -> None:
    # An upper layer's dpkg status without python3-werkzeug (apt-get remove left the files).
    upper = layer({"var/lib/dpkg/status": dpkg_stanza("tzdata", "2024a-0+deb12u1").encode()})
    inventory = squash([debian_layer(), upper])
    assert by_name(inventory)["Werkzeug"].owner is None
    found = {finding.package for finding in match(inventory, pypi_generation).findings}
    assert "Werkzeug" in found


def test_the_sboms_keep_owned_packages_with_their_os_package() -> None:
    inventory = squash([debian_layer()])
    subject = ImageSubject("team/app", "sha256:" + "ab" * 32)
    created = datetime(2026, 12, 7, tzinfo=UTC)
    cyclonedx = json.loads(
        build_document(SbomFormat.CYCLONEDX, subject, inventory, created=created).body
    )
    werkzeug = next(c for c in cyclonedx["components"] if c["name"] == "Werkzeug")
    assert {"name": "moorage:package:os-package", "value": "python3-werkzeug"} in werkzeug[
        "properties"
    ]
    spdx = json.loads(build_document(SbomFormat.SPDX, subject, inventory, created=created).body)
    werkzeug_spdx = next(p for p in spdx["packages"] if p["name"] == "Werkzeug")
    assert "installed by the operating system package python3-werkzeug" in werkzeug_spdx["comment"]


def test_distroless_checksum_files_say_what_a_package_owns() -> None:
    base = dpkg_stanza("python3-idna", "3.3-1", "python-idna", arch="all").replace(
        "Status: install ok installed\n", ""
    )
    inventory = squash(
        [
            layer(
                {
                    DEBIAN_12[0]: DEBIAN_12[1],
                    "var/lib/dpkg/status.d/python3-idna": base.encode(),
                    "var/lib/dpkg/status.d/python3-idna.md5sums": (
                        f"0123456789abcdef0123456789abcdef  {LOCAL}\n".encode()
                    ),
                    LOCAL: metadata("idna", "3.3"),
                }
            )
        ]
    )
    assert by_name(inventory)["idna"].owner == "python3-idna"


def test_apk_f_and_r_lines_say_what_a_package_owns() -> None:
    site = "usr/lib/python3.11/site-packages"
    installed = (
        "P:py3-urllib3\nV:1.26.18-r0\nA:noarch\no:py3-urllib3\n"
        f"F:{site}\nF:{site}/urllib3-1.26.18.dist-info\nR:METADATA\nR:RECORD\n\n"
        "P:musl\nV:1.2.4_git20230717-r4\nA:x86_64\nF:lib\nR:ld-musl-x86_64.so.1\n"
    )
    inventory = squash(
        [
            layer(
                {
                    "etc/os-release": b"ID=alpine\nVERSION_ID=3.19.1\n",
                    "lib/apk/db/installed": installed.encode(),
                    f"{site}/urllib3-1.26.18.dist-info/METADATA": metadata("urllib3", "1.26.18"),
                }
            )
        ]
    )
    assert by_name(inventory)["urllib3"].owner == "py3-urllib3"


@pytest.mark.tools("objcopy")
def test_a_go_binary_of_a_debian_package_is_not_matched_as_go(tmp_path: Path) -> None:
    go = elf_with_sections(tmp_path, {".go.buildinfo": go_buildinfo("go1.19.8", "")})
    inventory = squash(
        [
            layer(
                {
                    DEBIAN_12[0]: DEBIAN_12[1],
                    "var/lib/dpkg/status": dpkg_stanza("golang-tool", "1.0-1").encode(),
                    "var/lib/dpkg/info/golang-tool.list": dpkg_list("usr/bin/tool"),
                    "usr/bin/tool": go,
                    "usr/bin/mine": go,
                }
            )
        ]
    )
    owners = {
        package.location: package.owner
        for package in inventory.packages
        if package.ecosystem is Ecosystem.GO
    }
    assert owners == {"usr/bin/tool": "golang-tool", "usr/bin/mine": None}


@pytest.mark.tools("rpm", "rpmbuild")
def test_an_rpm_file_list_says_what_a_package_owns(tmp_path: Path) -> None:
    site = "usr/lib/python3.9/site-packages"
    top, root = tmp_path / "rpmbuild", tmp_path / "root"
    (top / "SPECS").mkdir(parents=True)
    root.mkdir()
    spec = top / "SPECS" / "python3-six.spec"
    spec.write_text(
        "Name: python3-six\nVersion: 1.15.0\nRelease: 9.el9\nSummary: fixture\nLicense: MIT\n"
        "BuildArch: noarch\n%description\nfixture\n%install\n"
        f"mkdir -p %{{buildroot}}/{site}/six-1.15.0.dist-info\n"
        f"echo fixture > %{{buildroot}}/{site}/six-1.15.0.dist-info/METADATA\n"
        f"%files\n/{site}/six-1.15.0.dist-info/METADATA\n"
    )
    subprocess.run(
        [
            "rpmbuild",
            "--define",
            f"_topdir {top}",
            "--define",
            f"_rpmdir {top}/out",
            "-bb",
            str(spec),
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            *("rpm", "--root", str(root), "--dbpath", "/var/lib/rpm", "-i", "--justdb"),
            *("--nodeps", str(top / "out" / "noarch" / "python3-six-1.15.0-9.el9.noarch.rpm")),
        ],
        check=True,
        capture_output=True,
    )
    database = (root / "var" / "lib" / "rpm" / "rpmdb.sqlite").read_bytes()
    findings = rpm_catalog.catalog("var/lib/rpm/rpmdb.sqlite", database)
    assert OwnedFile(f"{site}/six-1.15.0.dist-info/METADATA", "python3-six") in findings.owned
    inventory = squash(
        [
            layer(
                {
                    "etc/os-release": b"ID=rocky\nVERSION_ID=9.3\n",
                    "var/lib/rpm/rpmdb.sqlite": database,
                    f"{site}/six-1.15.0.dist-info/METADATA": metadata("six", "1.15.0"),
                }
            )
        ]
    )
    assert by_name(inventory)["six"].owner == "python3-six"


def header(*entries: tuple[int, int, int, int], store: bytes) -> bytes:
    """An rpm header blob: index entries (tag, type, offset, count), then the data store."""
    index = b"".join(struct.pack(">IIII", *entry) for entry in entries)
    return struct.pack(">II", len(entries), len(store)) + index + store


BASENAMES, DIRNAMES, DIRINDEXES = 1117, 1118, 1116
STRING_ARRAY, INT32 = 8, 4


@pytest.mark.parametrize(
    "blob",
    [
        b"\x00\x00\x00\x01",  # truncated
        header((BASENAMES, STRING_ARRAY, 0, 3), store=b"a\x00b"),  # runs off the store
        header((BASENAMES, INT32, 0, 1), store=b"\x00" * 4),  # wrong type
        header(  # an index pointing past the directory names
            (BASENAMES, STRING_ARRAY, 0, 1),
            (DIRNAMES, STRING_ARRAY, 2, 1),
            (DIRINDEXES, INT32, 8, 1),
            store=b"a\x00/\x00" + b"\x00" * 4 + struct.pack(">i", 5),
        ),
        header(  # fewer indexes than names
            (BASENAMES, STRING_ARRAY, 0, 2),
            (DIRNAMES, STRING_ARRAY, 4, 1),
            store=b"a\x00b\x00/\x00",
        ),
    ],
)
def test_an_unreadable_rpm_file_list_is_an_error_not_an_empty_list(blob: bytes) -> None:
    with pytest.raises(rpm_catalog.HeaderError):
        rpm_catalog.file_paths(blob)


def test_an_rpm_file_list_joins_directories_and_names() -> None:
    blob = header(
        (BASENAMES, STRING_ARRAY, 0, 2),
        (DIRNAMES, STRING_ARRAY, 4, 2),
        (DIRINDEXES, INT32, 14, 2),
        store=b"a\x00b\x00/usr/\x00/x/\x00" + struct.pack(">ii", 1, 0),
    )
    assert rpm_catalog.file_paths(blob) == ["x/a", "usr/b"]
