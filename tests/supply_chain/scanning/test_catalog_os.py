"""Distribution catalogers: os-release, dpkg (status and status.d), apk and the SQLite rpmdb."""

from __future__ import annotations

import sqlite3
import struct
from pathlib import Path

import pytest

from moorage.scanning.catalog import apk, catalog_file, dpkg, os_release, rpm
from moorage.scanning.packages import Distro, Ecosystem, FileFindings, Package

# -- os-release

DEBIAN_OS_RELEASE = b"""PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
VERSION_CODENAME=bookworm
ID=debian
HOME_URL="https://www.debian.org/"
"""

UBUNTU_OS_RELEASE = b"""PRETTY_NAME="Ubuntu 22.04.4 LTS"
NAME="Ubuntu"
VERSION_ID="22.04"
VERSION="22.04.4 LTS (Jammy Jellyfish)"
ID=ubuntu
ID_LIKE=debian
"""

SID_OS_RELEASE = b"""PRETTY_NAME="Debian GNU/Linux trixie/sid"
NAME="Debian GNU/Linux"
VERSION_CODENAME=trixie
ID=debian
"""


def test_os_release() -> None:
    findings = catalog_file("etc/os-release", DEBIAN_OS_RELEASE)
    assert findings == FileFindings(
        "etc/os-release", distro=Distro("debian", "12", (), "Debian GNU/Linux 12 (bookworm)")
    )
    ubuntu = os_release.parse_os_release(UBUNTU_OS_RELEASE.decode())
    assert ubuntu == Distro("ubuntu", "22.04", ("debian",), "Ubuntu 22.04.4 LTS")


def test_os_release_quoting_and_junk() -> None:
    text = "# comment\nID='rhel'\nVERSION_ID=9.3\nbroken line\nNAME=\"unbalanced\n"
    assert os_release.parse_os_release(text) == Distro("rhel", "9.3")
    assert os_release.parse_os_release("NAME=nothing\n") is None
    assert os_release.parse_os_release("ID=Not Valid\n") is None
    garbage = catalog_file("usr/lib/os-release", b"\xff\xfe garbage")
    assert garbage is not None
    assert garbage.notes == ("no valid ID",)


def test_release_files() -> None:
    alpine = catalog_file("etc/alpine-release", b"3.19.1\n")
    assert alpine is not None
    assert alpine.distro == Distro("alpine", "3.19.1")
    debian = catalog_file("etc/debian_version", b"trixie/sid\n")
    assert debian is not None
    assert debian.distro == Distro("debian", "trixie/sid")
    empty = catalog_file("etc/debian_version", b"\n")
    assert empty is not None
    assert empty.distro is None
    assert empty.notes


def test_choose_distro_precedence_and_fallback() -> None:
    etc = Distro("ubuntu", "22.04")
    usr = Distro("debian", "12")
    assert os_release.choose_distro({"usr/lib/os-release": usr, "etc/os-release": etc}) == etc
    assert os_release.choose_distro({"usr/lib/os-release": usr}) == usr
    alpine = Distro("alpine", "3.19.1")
    assert os_release.choose_distro({"etc/alpine-release": alpine}) == alpine
    sid = os_release.parse_os_release(SID_OS_RELEASE.decode())
    assert sid is not None
    assert sid.version_id is None
    chosen = os_release.choose_distro(
        {"etc/os-release": sid, "etc/debian_version": Distro("debian", "trixie/sid")}
    )
    assert chosen is not None
    assert chosen.version_id == "trixie/sid"
    assert os_release.choose_distro({}) is None


# -- dpkg

DEBIAN_STATUS = b"""Package: libssl3
Status: install ok installed
Priority: optional
Section: libs
Installed-Size: 6150
Maintainer: Debian OpenSSL Team <pkg-openssl-devel@alioth-lists.debian.net>
Architecture: amd64
Multi-Arch: same
Source: openssl
Version: 3.0.11-1~deb12u2
Depends: libc6 (>= 2.34)
Description: Secure Sockets Layer toolkit - shared libraries
 This package is part of the OpenSSL project's implementation of the SSL
 and TLS cryptographic protocols for secure communication over the
 Internet.
 .
 It provides the libssl and libcrypto shared libraries.
Homepage: https://www.openssl.org/

Package: bsdutils
Essential: yes
Status: install ok installed
Priority: required
Section: utils
Installed-Size: 335
Maintainer: util-linux packagers <util-linux@packages.debian.org>
Architecture: amd64
Multi-Arch: foreign
Source: util-linux (2.38.1-5+deb12u1)
Version: 1:2.38.1-5+deb12u1
Description: basic utilities from 4.4BSD-Lite

Package: libstdc++6
Status: install ok installed
Architecture: amd64
Source: gcc-12 (12.2.0-14)
Version: 12.2.0-14+b1
Description: GNU Standard C++ Library v3

Package: tzdata
Status: install ok installed
Architecture: all
Version: 2024a-0+deb12u1
Description: time zone and daylight-saving time data

Package: libgcrypt20
Status: deinstall ok config-files
Architecture: amd64
Version: 1.10.1-3
Config-Version: 1.10.1-3
"""


def test_dpkg_status_binary_and_source_packages() -> None:
    findings = dpkg.catalog(dpkg.STATUS_PATH, DEBIAN_STATUS)
    assert findings.notes == ()
    by_name = {package.name: package for package in findings.packages}
    assert set(by_name) == {"libssl3", "bsdutils", "libstdc++6", "tzdata"}  # not config-files
    libssl = by_name["libssl3"]
    assert (libssl.source_name, libssl.source_version) == ("openssl", "3.0.11-1~deb12u2")
    assert libssl.purl == "pkg:deb/debian/libssl3@3.0.11-1~deb12u2?arch=amd64&upstream=openssl"
    bsdutils = by_name["bsdutils"]
    assert bsdutils.version == "1:2.38.1-5+deb12u1"
    assert (bsdutils.source_name, bsdutils.source_version) == ("util-linux", "2.38.1-5+deb12u1")
    libstdcxx = by_name["libstdc++6"]
    assert (libstdcxx.source_name, libstdcxx.source_version) == ("gcc-12", "12.2.0-14")
    assert libstdcxx.purl == (
        "pkg:deb/debian/libstdc%2B%2B6@12.2.0-14%2Bb1?arch=amd64&upstream=gcc-12%4012.2.0-14"
    )
    tzdata = by_name["tzdata"]
    assert (tzdata.source_name, tzdata.source_version) == ("tzdata", "2024a-0+deb12u1")
    assert tzdata.purl == "pkg:deb/debian/tzdata@2024a-0%2Bdeb12u1?arch=all"
    assert all(package.location == dpkg.STATUS_PATH for package in findings.packages)


DISTROLESS_BASE_FILES = b"""Package: base-files
Version: 12.4+deb12u5
Architecture: amd64
Maintainer: Santiago Vila <sanvila@debian.org>
Installed-Size: 344
Section: admin
Priority: required
Description: Debian base system miscellaneous files
"""

DISTROLESS_LIBSSL = b"""Package: libssl3
Version: 3.0.11-1~deb12u2
Architecture: amd64
Source: openssl
Description: Secure Sockets Layer toolkit - shared libraries
"""


def test_dpkg_status_d_from_distroless() -> None:
    assert dpkg.wants("var/lib/dpkg/status.d/base-files")
    assert dpkg.wants("var/lib/dpkg/status.d/libssl3")
    # Read for the files each package owns, not as a stanza.
    assert dpkg.wants("var/lib/dpkg/status.d/libssl3.md5sums")
    assert not dpkg.wants("var/lib/dpkg/status.d/")
    assert not dpkg.wants("var/lib/dpkg/status-old")
    base = dpkg.catalog("var/lib/dpkg/status.d/base-files", DISTROLESS_BASE_FILES)
    assert base.packages == (
        Package(
            Ecosystem.DEBIAN,
            "base-files",
            "12.4+deb12u5",
            "var/lib/dpkg/status.d/base-files",
            source_name="base-files",
            source_version="12.4+deb12u5",
            arch="amd64",
        ),
    )
    libssl = dpkg.catalog("var/lib/dpkg/status.d/libssl3", DISTROLESS_LIBSSL)
    assert [(p.name, p.source_name) for p in libssl.packages] == [("libssl3", "openssl")]


MALFORMED_STATUS = b"""Package: zlib1g
Status: install ok installed
Architecture: amd64
Source: zlib
Version: 1:1.2.13.dfsg-1

Package: missing-version
Status: install ok installed
Architecture: amd64

this line has no colon
Package: no-colon-line
Version: 1.0

 continuation without a field
Package: orphan-continuation
Version: 1.0

Package: Bad_Name
Status: install ok installed
Version: 1.0

Package: bad-version
Status: install ok installed
Version: 1.0 with spaces

Package: bad-status
Status: installed
Version: 1.0

Package: bad-source
Status: install ok installed
Source: openssl (3.0 (nested))
Version: 3.0

Package: libc6
Status: install ok installed
Architecture: amd64
Source: glibc
Version: 2.36-9+deb12u4
"""


def test_malformed_dpkg_stanzas_are_skipped_and_the_rest_kept() -> None:
    findings = dpkg.catalog(dpkg.STATUS_PATH, MALFORMED_STATUS)
    assert [(p.name, p.version) for p in findings.packages] == [
        ("zlib1g", "1:1.2.13.dfsg-1"),
        ("libc6", "2.36-9+deb12u4"),
    ]
    assert len(findings.notes) == 7
    assert findings.notes[0] == "line 7: no Version; stanza skipped"
    assert "line 11: malformed stanza skipped" in findings.notes


def test_dpkg_garbage_and_notes_cap() -> None:
    findings = dpkg.catalog(dpkg.STATUS_PATH, b"\x00\xff\xfe" * 1000)
    assert findings.packages == ()
    many = b"\n\n".join(b"Package: p%d\nStatus: install ok installed" % i for i in range(100))
    capped = dpkg.catalog(dpkg.STATUS_PATH, many)
    assert len(capped.notes) == 21
    assert capped.notes[-1] == "and 80 more problems"


# -- apk

ALPINE_INSTALLED = b"""C:Q1QMLmlOCJgGWBhkPfDs1hk7WCzlw=
P:musl
V:1.2.4_git20230717-r4
A:x86_64
S:407278
I:667648
T:the musl c library (libc) implementation
U:https://musl.libc.org/
L:MIT
o:musl
m:Natanael Copa <ncopa@alpinelinux.org>
t:1705009000
c:ca7f2ab5e88794e4e654b40776f8a92256f50639
p:so:libc.musl-x86_64.so.1=1
F:lib
R:ld-musl-x86_64.so.1
a:0:0:755
Z:Q1Hf8Xxp+oBrp0ozOzxT0L2YKcC5Y=
R:libc.musl-x86_64.so.1
a:0:0:777
Z:Q17yJ3JFNypA4mxhJJr0ou6CzsJVI=

C:Q1w9ZNOkFbLS/z7mRNiGtP66uWM9s=
P:libcrypto3
V:3.1.4-r5
A:x86_64
S:1788237
I:4227072
T:Crypto library from openssl
U:https://www.openssl.org/
L:Apache-2.0
o:openssl
m:Ariadne Conner <ariadne@dereferenced.org>
t:1707138330
c:9b6f7b8a1f8e2d0d1b0a5c9f5e6d1c2b3a4f5e6d
D:so:libc.musl-x86_64.so.1
p:so:libcrypto.so.3=3
F:lib
R:libcrypto.so.3

C:Q1uTr3nW1HbG3Qe0QIw8R9lfUCcfA=
P:ssl_client
V:1.36.1-r15
A:x86_64
o:busybox
F:usr/bin
R:ssl_client

C:Q1abc=
P:alpine-baselayout-data
V:3.4.3-r2
A:x86_64
o:alpine-baselayout
"""


def test_apk_installed_with_origins_and_git_versions() -> None:
    findings = apk.catalog(apk.INSTALLED_PATH, ALPINE_INSTALLED)
    assert findings.notes == ()
    summary = [(p.name, p.version, p.source_name, p.arch) for p in findings.packages]
    assert summary == [
        ("musl", "1.2.4_git20230717-r4", "musl", "x86_64"),
        ("libcrypto3", "3.1.4-r5", "openssl", "x86_64"),
        ("ssl_client", "1.36.1-r15", "busybox", "x86_64"),
        ("alpine-baselayout-data", "3.4.3-r2", "alpine-baselayout", "x86_64"),
    ]
    assert findings.packages[1].purl == (
        "pkg:apk/alpine/libcrypto3@3.1.4-r5?arch=x86_64&upstream=openssl"
    )


MALFORMED_INSTALLED = b"""P:zlib
V:1.3.1-r0
A:x86_64
o:zlib

P:no-version
A:x86_64

P:bad line
V:1.0
this is not a key:value line

V:1.0-r0
o:nameless

P:weird
V:not-a-version-r0

P:bad-arch
V:1.0-r0
A:x86 64

P:busybox
V:1.36.1-r15
o:busybox
"""


def test_malformed_apk_stanzas_are_skipped_and_the_rest_kept() -> None:
    findings = apk.catalog(apk.INSTALLED_PATH, MALFORMED_INSTALLED)
    assert [p.name for p in findings.packages] == ["zlib", "busybox"]
    assert findings.notes == (
        "line 6: no version (V:); stanza skipped",
        "line 9: malformed line 'this is not a key:value line'; stanza skipped",
        "line 13: no name (P:); stanza skipped",
        "line 16: invalid version 'not-a-version-r0'; stanza skipped",
        "line 19: invalid arch 'x86 64'; stanza skipped",
    )


# -- rpm


def rpm_header(tags: dict[int, str | int]) -> bytes:
    """An RPM header blob as rpmdb stores it: counts, index entries, then the data store."""
    entries, store = [], bytearray()
    for tag, value in sorted(tags.items()):
        if isinstance(value, int):
            store += bytes(-len(store) % 4)  # int32 values are 4-byte aligned
            entries.append(struct.pack(">IIII", tag, rpm.TYPE_INT32, len(store), 1))
            store += struct.pack(">i", value)
        else:
            entries.append(struct.pack(">IIII", tag, rpm.TYPE_STRING, len(store), 1))
            store += value.encode() + b"\x00"
    return struct.pack(">II", len(entries), len(store)) + b"".join(entries) + bytes(store)


def rpm_package(name: str, version: str, release: str, **extra: str | int) -> bytes:
    tags: dict[int, str | int] = {
        rpm.TAG_NAME: name,
        rpm.TAG_VERSION: version,
        rpm.TAG_RELEASE: release,
        rpm.TAG_ARCH: str(extra.get("arch", "x86_64")),
        5000: "an unrelated tag",
    }
    if "epoch" in extra:
        tags[rpm.TAG_EPOCH] = int(extra["epoch"])
    if "source" in extra:
        tags[rpm.TAG_SOURCERPM] = str(extra["source"])
    return rpm_header(tags)


def rpmdb(path: Path, blobs: list[bytes], wal: bool = True) -> bytes:
    """An rpmdb.sqlite shaped like rpm 4.16+ writes it (WAL journal, Packages(hnum, blob))."""
    connection = sqlite3.connect(path)
    if wal:
        connection.execute("PRAGMA journal_mode = WAL")
    connection.execute(
        "CREATE TABLE Packages (hnum INTEGER PRIMARY KEY AUTOINCREMENT, blob BLOB NOT NULL)"
    )
    connection.execute("CREATE TABLE Name (key TEXT NOT NULL, hnum INTEGER NOT NULL)")
    connection.executemany("INSERT INTO Packages (blob) VALUES (?)", [(b,) for b in blobs])
    connection.commit()
    connection.close()  # checkpoints the WAL into the main file, as rpm does on exit
    return path.read_bytes()


UBI9_PACKAGES = [
    rpm_package("openssl-libs", "3.0.7", "24.el9", epoch=1, source="openssl-3.0.7-24.el9.src.rpm"),
    rpm_package("bash", "5.1.8", "6.el9_1", source="bash-5.1.8-6.el9_1.src.rpm"),
    rpm_package("tzdata", "2024a", "1.el9", arch="noarch", source="tzdata-2024a-1.el9.src.rpm"),
    rpm_package("gpg-pubkey", "fd431d51", "4ae0493b"),
]


def test_rpmdb_sqlite(tmp_path: Path) -> None:
    data = rpmdb(tmp_path / "rpmdb.sqlite", UBI9_PACKAGES)
    assert data[18:20] == b"\x02\x02"  # a WAL database, as on a real system
    findings = catalog_file("usr/lib/sysimage/rpm/rpmdb.sqlite", data)
    assert findings is not None
    assert findings.notes == ()
    summary = [
        (p.name, p.version, p.source_name, p.source_version, p.arch) for p in findings.packages
    ]
    assert summary == [
        ("openssl-libs", "1:3.0.7-24.el9", "openssl", "1:3.0.7-24.el9", "x86_64"),
        ("bash", "5.1.8-6.el9_1", "bash", "5.1.8-6.el9_1", "x86_64"),
        ("tzdata", "2024a-1.el9", "tzdata", "2024a-1.el9", "noarch"),
    ]
    assert findings.packages[0].purl == (
        "pkg:rpm/openssl-libs@3.0.7-24.el9?arch=x86_64&epoch=1"
        "&upstream=openssl-3.0.7-24.el9.src.rpm"
    )


def test_rpmdb_with_a_bad_header_keeps_the_others(tmp_path: Path) -> None:
    good = rpm_package("bash", "5.1.8", "6.el9_1")
    truncated = good[:20]
    lying = struct.pack(">II", 1000, 10) + good[8:]
    unterminated = rpm_header({rpm.TAG_NAME: "x"})[:-1]
    nameless = rpm_header({rpm.TAG_VERSION: "1.0", rpm.TAG_RELEASE: "1"})
    data = rpmdb(tmp_path / "rpmdb.sqlite", [truncated, lying, good, unterminated, nameless])
    findings = rpm.catalog("var/lib/rpm/rpmdb.sqlite", data)
    assert [p.name for p in findings.packages] == ["bash"]
    assert len(findings.notes) == 4
    assert findings.notes[0].startswith("header 1: header sizes exceed the blob")


def test_rpmdb_that_is_not_a_database_or_has_no_table(tmp_path: Path) -> None:
    assert rpm.catalog("var/lib/rpm/rpmdb.sqlite", b"garbage" * 100).notes == (
        "unreadable rpm database: not an SQLite database",
    )
    connection = sqlite3.connect(tmp_path / "view.sqlite")
    connection.execute("CREATE TABLE t (blob BLOB)")
    connection.execute("CREATE VIEW Packages AS SELECT rowid AS hnum, blob FROM t")
    connection.commit()
    connection.close()
    findings = rpm.catalog("var/lib/rpm/rpmdb.sqlite", (tmp_path / "view.sqlite").read_bytes())
    assert findings.notes == ("unreadable rpm database: no Packages table",)
    data = bytearray(rpmdb(tmp_path / "rpmdb.sqlite", UBI9_PACKAGES, wal=False))
    data[4096:8192] = b"\xa5" * 4096  # corrupt the first table page
    damaged = rpm.catalog("var/lib/rpm/rpmdb.sqlite", bytes(data))
    assert damaged.notes
    assert damaged.notes[0].startswith("unreadable rpm database")


@pytest.mark.parametrize(
    ("path", "wanted"),
    [
        ("var/lib/rpm/rpmdb.sqlite", True),
        ("usr/lib/sysimage/rpm/rpmdb.sqlite", True),
        ("var/lib/rpm/Packages", False),
        ("lib/apk/db/installed", False),
    ],
)
def test_rpm_wants(path: str, wanted: bool) -> None:
    assert rpm.wants(path) is wanted
