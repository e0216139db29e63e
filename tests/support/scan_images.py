"""Fixture images for the scanning flow, built from files in the tests, and their advisories.

Every image is a real OCI image (deterministic tar+gzip layers, a config with diff_ids) whose
layers hold exactly the package databases and files a distribution or a build tool writes:
Debian's dpkg `status` with `Source:` fields, distroless `status.d/`, Alpine's apk `installed`
with origins and a `_git` version, an `rpmdb.sqlite` written by Debian's `rpm` itself, Python
dist-info, node_modules, a Spring Boot style fat jar, a Go binary's build info and a
cargo-auditable binary (made with `objcopy`), whiteouts and opaque directories, and a
multi-architecture index.

`BUNDLE_V1` and `BUNDLE_V2` are the synthetic OSV advisories (real package names, versions and a
few real advisory ids; `TEST-` ids for distribution edge cases). The expected findings of each
image are in tests/data/scanning/<image>.json, written by hand: they are the oracle.
"""

from __future__ import annotations

import gzip
import io
import json
import shutil
import subprocess
import tarfile
import zipfile
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.images import (
    OCI_LAYER_GZIP,
    Blob,
    Image,
    ImageIndex,
    LayerBlob,
    Platform,
    image_from_layers,
    image_index,
    sha256_digest,
)
from tests.support.osv import log4shell, osv_record

DATA = Path(__file__).resolve().parent.parent / "data" / "scanning"
_EPOCH = 1_700_000_000

CRITICAL = "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"  # 9.8
HIGH = "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:H"  # 7.5
MEDIUM = "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:L/I:N/A:N"  # 5.3
LOW = "CVSS:3.1/AV:L/AC:L/PR:L/UI:N/S:U/C:L/I:N/A:N"  # 3.3


# -- layers


@dataclass(frozen=True)
class Entry:
    """One tar member: a regular file (`data`), or a directory when `directory` is set."""

    path: str
    data: bytes = b""
    mode: int = 0o644
    directory: bool = False


def layer(entries: Iterable[Entry | tuple[str, bytes]]) -> LayerBlob:
    """A deterministic tar+gzip layer with the parent directories of every file."""
    members: dict[str, Entry] = {}
    for item in entries:
        entry = item if isinstance(item, Entry) else Entry(item[0], item[1])
        parts = entry.path.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            members.setdefault(parent, Entry(parent, mode=0o755, directory=True))
        members[entry.path] = entry
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for entry in members.values():
            info = tarfile.TarInfo(entry.path)
            info.mtime = _EPOCH
            info.uname = info.gname = "root"
            info.mode = entry.mode
            if entry.directory:
                info.type = tarfile.DIRTYPE
                archive.addfile(info)
            else:
                info.size = len(entry.data)
                archive.addfile(info, io.BytesIO(entry.data))
    tar = buffer.getvalue()
    return LayerBlob(Blob(OCI_LAYER_GZIP, gzip.compress(tar, 6, mtime=0)), sha256_digest(tar))


def bomb_layer(uncompressed_bytes: int = 48 * 1024 * 1024) -> LayerBlob:
    """A gzip bomb: one file of zeros that compresses about a thousand to one."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        info = tarfile.TarInfo("var/cache/zeros")
        info.size = uncompressed_bytes
        info.mtime = _EPOCH
        archive.addfile(info, io.BytesIO(bytes(uncompressed_bytes)))
    tar = buffer.getvalue()
    return LayerBlob(Blob(OCI_LAYER_GZIP, gzip.compress(tar, 9, mtime=0)), sha256_digest(tar))


# -- distribution files


def os_release(distro_id: str, version_id: str, pretty: str) -> tuple[str, bytes]:
    text = f'PRETTY_NAME="{pretty}"\nID={distro_id}\nVERSION_ID="{version_id}"\n'
    return ("etc/os-release", text.encode())


DEBIAN_12 = os_release("debian", "12", "Debian GNU/Linux 12 (bookworm)")
ALPINE_319 = os_release("alpine", "3.19.1", "Alpine Linux v3.19")
ROCKY_9 = os_release("rocky", "9.3", "Rocky Linux 9.3 (Blue Onyx)")


def dpkg_stanza(name: str, version: str, source: str | None = None, arch: str = "amd64") -> str:
    lines = [f"Package: {name}", "Status: install ok installed", f"Architecture: {arch}"]
    if source is not None:
        lines.append(f"Source: {source}")
    lines += [f"Version: {version}", f"Description: {name}"]
    return "\n".join(lines) + "\n"


LIBSSL3 = dpkg_stanza("libssl3", "3.0.11-1~deb12u1", "openssl")
LIBSTDCXX = dpkg_stanza("libstdc++6", "12.2.0-14+b1", "gcc-12 (12.2.0-14)")
ZLIB = dpkg_stanza("zlib1g", "1:1.2.13.dfsg-1", "zlib")
TZDATA = dpkg_stanza("tzdata", "2024a-0+deb12u1", arch="all")
LIBCURL = dpkg_stanza("libcurl4", "7.88.1-10+deb12u4", "curl")


def dpkg_status(*stanzas: str) -> tuple[str, bytes]:
    return ("var/lib/dpkg/status", "\n".join(stanzas).encode())


def apk_installed() -> tuple[str, bytes]:
    text = (
        "C:Q1QMLmlOCJgGWBhkPfDs1hk7WCzlw=\nP:musl\nV:1.2.4_git20230717-r4\nA:x86_64\no:musl\n\n"
        "C:Q1w9ZNOkFbLS/z7mRNiGtP66uWM9s=\nP:libcrypto3\nV:3.1.4-r5\nA:x86_64\no:openssl\n\n"
        "C:Q1uTr3nW1HbG3Qe0QIw8R9lfUCcfA=\nP:ssl_client\nV:1.36.1-r15\nA:x86_64\no:busybox\n"
    )
    return ("lib/apk/db/installed", text.encode())


def dist_info(directory: str, name: str, version: str) -> tuple[str, bytes]:
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nSummary: {name}\n"
    return (f"{directory}/{name}-{version}.dist-info/METADATA", metadata.encode())


def npm_package(directory: str, name: str, version: str) -> tuple[str, bytes]:
    document = {"name": name, "version": version, "license": "MIT"}
    return (f"{directory}/{name}/package.json", json.dumps(document).encode())


# -- Java


def _zip(members: Mapping[str, bytes], stored: bool = False) -> bytes:
    buffer = io.BytesIO()
    method = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(buffer, "w", compression=method) as archive:
        for name, data in members.items():
            info = zipfile.ZipInfo(name, date_time=(2023, 11, 14, 22, 13, 20))
            info.compress_type = method
            archive.writestr(info, data)
    return buffer.getvalue()


def jar(group: str, artifact: str, version: str) -> bytes:
    pom = f"groupId={group}\nartifactId={artifact}\nversion={version}\n".encode()
    return _zip(
        {
            "META-INF/MANIFEST.MF": b"Manifest-Version: 1.0\r\n\r\n",
            f"META-INF/maven/{group}/{artifact}/pom.properties": pom,
        }
    )


def fat_jar() -> bytes:
    """A Spring Boot jar: the application's own pom.properties and nested library jars
    (stored uncompressed, as Spring Boot requires)."""
    log4j = jar("org.apache.logging.log4j", "log4j-core", "2.14.1")
    api = jar("org.apache.logging.log4j", "log4j-api", "2.14.1")
    return _zip(
        {
            "META-INF/MANIFEST.MF": b"Manifest-Version: 1.0\r\nMain-Class: demo.App\r\n\r\n",
            "META-INF/maven/com.example/demo-app/pom.properties": (
                b"groupId=com.example\nartifactId=demo-app\nversion=1.0.0\n"
            ),
            "BOOT-INF/lib/log4j-core-2.14.1.jar": log4j,
            "BOOT-INF/lib/log4j-api-2.14.1.jar": api,
        },
        stored=True,
    )


# -- binaries (objcopy adds the sections to a small system ELF)

GO_MAGIC = b"\xff Go buildinf:"
_GO_SENTINEL_START = bytes.fromhex("3077af0c9274080241e1c107e6d618e6")
_GO_SENTINEL_END = bytes.fromhex("f932433186182072008242104116d8f2")
GO_MODINFO = (
    "path\texample.com/server/cmd/server\n"
    "mod\texample.com/server\tv1.4.0\th1:abc=\n"
    "dep\tgolang.org/x/net\tv0.17.0\th1:net=\n"
    "build\t-compiler=gc\n"
)
RUST_PACKAGES = [
    {"name": "myapp", "version": "0.1.0", "source": "local", "root": True, "dependencies": [1, 2]},
    {"name": "time", "version": "0.1.45", "source": "crates.io", "dependencies": []},
    {"name": "serde", "version": "1.0.193", "source": "crates.io", "dependencies": []},
]


def _uvarint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | 0x80 if value else byte)
        if not value:
            return bytes(out)


def go_buildinfo(go_version: str, modinfo: str) -> bytes:
    """The `.go.buildinfo` section of Go 1.18+ (inline strings: flags bit 2)."""
    header = GO_MAGIC + bytes([8, 2])
    header += b"\0" * (32 - len(header))
    framed = _GO_SENTINEL_START + modinfo.encode() + _GO_SENTINEL_END
    return header + _uvarint(len(go_version)) + go_version.encode() + _uvarint(len(framed)) + framed


def elf_with_sections(workdir: Path, sections: Mapping[str, bytes]) -> bytes:
    objcopy = shutil.which("objcopy")
    if objcopy is None:
        raise RuntimeError("binutils objcopy is needed to build the binary fixtures")
    workdir.mkdir(parents=True, exist_ok=True)
    source = workdir / "input"
    shutil.copyfile("/bin/true", source)
    args = [objcopy]
    for index, (name, content) in enumerate(sections.items()):
        payload = workdir / f"section{index}"
        payload.write_bytes(content)
        args += [f"--add-section={name}={payload}", f"--set-section-flags={name}=alloc,readonly"]
    output = workdir / "output"
    subprocess.run([*args, str(source), str(output)], check=True, capture_output=True)
    return output.read_bytes()


# -- RPM (made by rpm itself)

RPM_PACKAGES = (
    ("openssl-libs", "1", "3.0.7", "24.el9"),
    ("bash", None, "5.1.8", "6.el9_1"),
)


def rpmdb(workdir: Path) -> bytes:
    """An rpmdb.sqlite written by `rpm --justdb` after `rpmbuild` built tiny packages."""
    for tool in ("rpm", "rpmbuild"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is needed to build the RPM fixture")
    top = workdir / "rpmbuild"
    root = workdir / "root"
    (top / "SPECS").mkdir(parents=True, exist_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    built: list[Path] = []
    for name, epoch, version, release in RPM_PACKAGES:
        spec = top / "SPECS" / f"{name}.spec"
        lines = [f"Name: {name}", f"Version: {version}", f"Release: {release}"]
        if epoch is not None:
            lines.append(f"Epoch: {epoch}")
        lines += ["Summary: fixture", "License: MIT", "BuildArch: noarch"]
        spec.write_text("\n".join(lines) + "\n%description\nfixture\n%files\n")
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
        built.append(top / "out" / "noarch" / f"{name}-{version}-{release}.noarch.rpm")
    subprocess.run(
        ["rpm", "--root", str(root), "--dbpath", "/var/lib/rpm", "-i", "--justdb", "--nodeps"]
        + [str(path) for path in built],
        check=True,
        capture_output=True,
    )
    return (root / "var" / "lib" / "rpm" / "rpmdb.sqlite").read_bytes()


# Tests that build every fixture need Debian's rpm and binutils (scripts/test installs them):
# mark them with `pytest.mark.tools(*FIXTURE_TOOLS)`.
FIXTURE_TOOLS = ("rpm", "rpmbuild", "objcopy")


# -- the images


@dataclass(frozen=True)
class Fixtures:
    images: dict[str, Image]  # by oracle name
    index: ImageIndex  # the multi-architecture image ("multiarch")


def debian() -> Image:
    return image_from_layers(
        Platform(),
        [
            layer([DEBIAN_12, dpkg_status(LIBSSL3, LIBSTDCXX, ZLIB, TZDATA, LIBCURL)]),
            layer([dist_info("usr/lib/python3/dist-packages", "requests", "2.28.1")]),
        ],
        "debian",
    )


def distroless(platform: Platform | None = None) -> Image:
    base_files = dpkg_stanza("base-files", "12.4+deb12u5").replace(
        "Status: install ok installed\n", ""
    )
    libssl = LIBSSL3.replace("Status: install ok installed\n", "")
    return image_from_layers(
        platform or Platform(),
        [
            layer(
                [
                    DEBIAN_12,
                    ("var/lib/dpkg/status.d/base-files", base_files.encode()),
                    ("var/lib/dpkg/status.d/libssl3", libssl.encode()),
                ]
            )
        ],
        "distroless",
    )


def alpine(platform: Platform | None = None) -> Image:
    return image_from_layers(
        platform or Platform(),
        [layer([ALPINE_319, ("etc/alpine-release", b"3.19.1\n"), apk_installed()])],
        "alpine",
    )


def rocky(workdir: Path) -> Image:
    return image_from_layers(
        Platform(),
        [layer([ROCKY_9, ("var/lib/rpm/rpmdb.sqlite", rpmdb(workdir / "rpm"))])],
        "rocky",
    )


def languages(workdir: Path) -> Image:
    go = elf_with_sections(workdir / "go", {".go.buildinfo": go_buildinfo("go1.21.5", GO_MODINFO)})
    rust = elf_with_sections(
        workdir / "rust",
        {".dep-v0": zlib.compress(json.dumps({"packages": RUST_PACKAGES}).encode())},
    )
    return image_from_layers(
        Platform(),
        [
            layer(
                [
                    dist_info("usr/local/lib/python3.11/site-packages", "requests", "2.28.1"),
                    npm_package("app/node_modules", "minimist", "1.2.5"),
                    npm_package("app/node_modules", "lodash", "4.17.21"),
                    ("app/app.jar", fat_jar()),
                ]
            ),
            layer(
                [
                    Entry("usr/local/bin/server", go, 0o755),
                    Entry("usr/local/bin/myapp", rust, 0o755),
                ]
            ),
        ],
        "languages",
    )


def whiteouts() -> Image:
    """A file whiteout, an opaque directory, and a dpkg status rewritten after a removal."""
    python = "usr/lib/python3/dist-packages"
    return image_from_layers(
        Platform(),
        [
            layer(
                [
                    DEBIAN_12,
                    dpkg_status(LIBSSL3, LIBCURL),
                    dist_info(python, "requests", "2.28.1"),
                    npm_package("usr/lib/node_modules", "minimist", "1.2.5"),
                ]
            ),
            layer(
                [
                    dpkg_status(LIBSSL3),  # `apt-get remove libcurl4`
                    (f"{python}/.wh.requests-2.28.1.dist-info", b""),
                    ("usr/lib/node_modules/.wh..wh..opq", b""),
                    npm_package("usr/lib/node_modules", "lodash", "4.17.20"),
                ]
            ),
        ],
        "whiteouts",
    )


def multiarch() -> ImageIndex:
    return image_index([distroless(Platform("linux", "amd64")), alpine(Platform("linux", "arm64"))])


def diff_ids(image: Image) -> list[str]:
    """The image's layers as its config names them (bottom first)."""
    return list(json.loads(image.config.data)["rootfs"]["diff_ids"])


def bomb(platform: Platform | None = None) -> Image:
    return image_from_layers(platform or Platform(), [layer([DEBIAN_12]), bomb_layer()], "bomb")


def fixtures(workdir: Path) -> Fixtures:
    return Fixtures(
        {
            "debian": debian(),
            "distroless": distroless(),
            "alpine": alpine(),
            "rocky": rocky(workdir),
            "languages": languages(workdir),
            "whiteouts": whiteouts(),
        },
        multiarch(),
    )


# -- artifacts that are never scanned


def cosign_signature(subject_digest: str) -> tuple[str, Image]:
    """cosign's legacy signature manifest and the tag it is pushed under."""
    payload = json.dumps(
        {
            "critical": {
                "identity": {"docker-reference": "registry.example/app"},
                "image": {"docker-manifest-digest": subject_digest},
                "type": "cosign container image signature",
            },
            "optional": None,
        }
    ).encode()
    signature_layer = Blob("application/vnd.dev.cosign.simplesigning.v1+json", payload)
    config = Blob(
        "application/vnd.oci.image.config.v1+json", b'{"rootfs":{"type":"layers","diff_ids":[]}}'
    )
    document = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config.descriptor(),
        "layers": [
            signature_layer.descriptor(
                annotations={"dev.cosignproject.cosign/signature": "MEUCIQDfake=="}
            )
        ],
    }
    manifest = Blob("application/vnd.oci.image.manifest.v1+json", _canonical(document))
    tag = subject_digest.replace(":", "-") + ".sig"
    return tag, Image(Platform(), config, (signature_layer,), manifest)


def sbom_referrer(subject: Blob) -> Image:
    """An SBOM attached to an image as a referrer (artifactType, subject), as oras pushes it."""
    sbom = Blob("application/vnd.cyclonedx+json", b'{"bomFormat":"CycloneDX","specVersion":"1.6"}')
    config = Blob("application/vnd.oci.empty.v1+json", b"{}")
    document = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.cyclonedx+json",
        "config": config.descriptor(),
        "layers": [sbom.descriptor()],
        "subject": subject.descriptor(),
    }
    manifest = Blob("application/vnd.oci.image.manifest.v1+json", _canonical(document))
    return Image(Platform(), config, (sbom,), manifest)


def _canonical(document: dict[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


# -- advisories

BUNDLE_V1: dict[str, list[dict[str, Any]]] = {
    "Debian": [
        osv_record(
            "TEST-DEB-OPENSSL",
            "Debian:12",
            "openssl",
            fixed="3.0.11-1~deb12u2",
            aliases=("CVE-2023-5678",),
            cvss_v3=MEDIUM,
        ),
        # Debian 11 only: bookworm's gcc-12 must not match.
        osv_record("TEST-DEB-GCC-BULLSEYE", "Debian:11", "gcc-12", fixed="12.2.0-15", cvss_v3=HIGH),
        # Fixed in exactly the installed version: no finding.
        osv_record("TEST-DEB-ZLIB", "Debian:12", "zlib", fixed="1:1.2.13.dfsg-1", cvss_v3=HIGH),
        osv_record(
            "TEST-DEB-TZDATA-WITHDRAWN", "Debian:12", "tzdata", fixed="2024b-0", withdrawn=True
        ),
        # last_affected is inclusive; no rating anywhere: Unknown.
        osv_record("TEST-DEB-CURL", "Debian:12", "curl", last_affected="7.88.1-10+deb12u4"),
    ],
    "Alpine": [
        osv_record(
            "TEST-ALPINE-OPENSSL", "Alpine:v3.19", "openssl", fixed="3.1.4-r6", cvss_v3=HIGH
        ),
        osv_record(
            "TEST-ALPINE-MUSL", "Alpine:v3.19", "musl", fixed="1.2.4_git20230717-r5", cvss_v3=LOW
        ),
        # `_git` sorts after the release in apk: 1.2.4_git… is later than 1.2.4.
        osv_record("TEST-ALPINE-MUSL-GIT", "Alpine:v3.19", "musl", fixed="1.2.4", cvss_v3=HIGH),
        osv_record(
            "TEST-ALPINE-BUSYBOX", "Alpine:v3.18", "busybox", fixed="1.36.1-r20", cvss_v3=HIGH
        ),
    ],
    "Rocky Linux": [
        osv_record(
            "TEST-ROCKY-OPENSSL",
            "Rocky Linux:9",
            "openssl-libs",
            fixed="1:3.0.7-25.el9",
            cvss_v3=HIGH,
        ),
        osv_record("TEST-ROCKY-BASH", "Rocky Linux:8", "bash", fixed="5.1.8-7.el9", cvss_v3=HIGH),
    ],
    "PyPI": [
        osv_record(
            "GHSA-j8r2-6x86-q33q",
            "PyPI",
            "requests",
            introduced="2.3.0",
            fixed="2.31.0",
            aliases=("CVE-2023-32681",),
            cvss_v3=MEDIUM,
        ),
        osv_record("TEST-PYPI-WITHDRAWN", "PyPI", "requests", fixed="2.99.0", withdrawn=True),
    ],
    "npm": [
        osv_record(
            "GHSA-xvch-5gv4-984h",
            "npm",
            "minimist",
            fixed="1.2.6",
            aliases=("CVE-2021-44906",),
            cvss_v3=CRITICAL,
        ),
        osv_record(
            "GHSA-35jh-r3h4-6jhm",
            "npm",
            "lodash",
            fixed="4.17.21",
            aliases=("CVE-2021-23337",),
            cvss_v3=HIGH,
        ),
    ],
    "Maven": [log4shell()],
    "Go": [osv_record("TEST-GO-NET", "Go", "golang.org/x/net", fixed="0.23.0", cvss_v3=HIGH)],
    "crates.io": [
        osv_record("TEST-RUST-TIME", "crates.io", "time", fixed="0.2.23", cvss_v3=MEDIUM)
    ],
}


def bundle_v2() -> dict[str, list[dict[str, Any]]]:
    """The next generation changes two packages: Alpine's openssl advisory is withdrawn and
    serde gets one. Only images holding openssl (Alpine) or serde are re-matched."""
    bundle = {ecosystem: list(records) for ecosystem, records in BUNDLE_V1.items()}
    bundle["Alpine"] = [
        osv_record(
            "TEST-ALPINE-OPENSSL",
            "Alpine:v3.19",
            "openssl",
            fixed="3.1.4-r6",
            cvss_v3=HIGH,
            withdrawn=True,
            modified="2024-03-01T00:00:00Z",
        ),
        *(record for record in BUNDLE_V1["Alpine"] if record["id"] != "TEST-ALPINE-OPENSSL"),
    ]
    bundle["crates.io"] = [
        *BUNDLE_V1["crates.io"],
        osv_record("TEST-RUST-SERDE", "crates.io", "serde", fixed="1.0.200", cvss_v3=LOW),
    ]
    return bundle


# -- the oracle


def expected(name: str, generation: int = 1) -> dict[str, Any]:
    """The expected findings of image `name` (tests/data/scanning/<name>.json)."""
    document = json.loads((DATA / f"{name}.json").read_text())
    if generation == 2 and "generation2" in document:
        document = {**document, **document["generation2"]}
    return dict(document)


def finding_key(finding: Mapping[str, Any]) -> tuple[str, str, str, str | None, str, str]:
    """What the oracle pins down of a finding (API spelling)."""
    return (
        finding["id"],
        finding["package"],
        finding["installedVersion"],
        finding["fixedVersion"],
        finding["severity"],
        finding["ecosystem"],
    )
