"""Language catalogers: Python dist-info/egg-info, npm node_modules, Java archives."""

from __future__ import annotations

import io
import json
import zipfile

import pytest

from moorage.scanning.catalog import catalog_file, java, npm, python
from moorage.scanning.packages import Ecosystem, Package

MIB = 1024 * 1024

# -- Python

SITE = "usr/local/lib/python3.11/site-packages"

REQUESTS_METADATA = b"""Metadata-Version: 2.1
Name: requests
Version: 2.25.0
Summary: Python HTTP for Humans.
Home-page: https://requests.readthedocs.io
Author: Kenneth Reitz
License: Apache 2.0
Requires-Python: >=2.7, !=3.0.*, !=3.1.*, !=3.2.*, !=3.3.*, !=3.4.*
Requires-Dist: chardet (<4,>=3.0.2)
Requires-Dist: urllib3 (<1.27,>=1.21.1)

Requests: HTTP for Humans
Name: not-a-header-this-is-the-body
"""

EGG_PKG_INFO = b"""Metadata-Version: 1.2
Name: PyYAML
Version: 6.0
Summary: YAML parser and emitter for Python
"""


def test_dist_info_metadata() -> None:
    path = f"{SITE}/requests-2.25.0.dist-info/METADATA"
    findings = catalog_file(path, REQUESTS_METADATA)
    assert findings is not None
    assert findings.packages == (Package(Ecosystem.PYPI, "requests", "2.25.0", path),)
    assert findings.packages[0].purl == "pkg:pypi/requests@2.25.0"


@pytest.mark.parametrize(
    "path",
    [
        "usr/lib/python3/dist-packages/PyYAML-6.0.egg-info/PKG-INFO",
        "usr/lib/python3/dist-packages/PyYAML-6.0.egg-info",  # distutils: a single file
        f"{SITE}/PyYAML-6.0-py3.11.egg/EGG-INFO/PKG-INFO",
    ],
)
def test_egg_info(path: str) -> None:
    assert python.wants(path)
    findings = python.catalog(path, EGG_PKG_INFO)
    assert [(p.name, p.version) for p in findings.packages] == [("PyYAML", "6.0")]
    assert findings.packages[0].purl == "pkg:pypi/pyyaml@6.0"


def test_python_name_with_underscores_in_purl() -> None:
    findings = python.catalog(
        f"{SITE}/typing_extensions-4.9.0.dist-info/METADATA",
        b"Metadata-Version: 2.1\nName: typing_extensions\nVersion: 4.9.0\n",
    )
    assert findings.packages[0].purl == "pkg:pypi/typing-extensions@4.9.0"


@pytest.mark.parametrize(
    ("content", "note"),
    [
        (b"Metadata-Version: 2.1\nVersion: 1.0\n", "invalid or missing Name ''"),
        (b"Metadata-Version: 2.1\nName: -bad-\nVersion: 1.0\n", "invalid or missing Name '-bad-'"),
        (b"Name: ok\n", "invalid or missing Version ''"),
        (b"\xff\xfe\x00garbage", "invalid or missing Name ''"),
    ],
)
def test_malformed_python_metadata(content: bytes, note: str) -> None:
    findings = python.catalog(f"{SITE}/x-1.0.dist-info/METADATA", content)
    assert findings.packages == ()
    assert findings.notes == (note,)


def test_python_wants() -> None:
    assert python.wants(f"{SITE}/requests-2.25.0.dist-info/METADATA")
    assert not python.wants(f"{SITE}/requests-2.25.0.dist-info/RECORD")
    assert not python.wants(f"{SITE}/requests/__init__.py")


# -- npm

APP = "usr/src/app/node_modules"


def package_json(name: str, version: str, **extra: object) -> bytes:
    return json.dumps({"name": name, "version": version, "license": "MIT", **extra}).encode()


@pytest.mark.parametrize(
    ("path", "wanted"),
    [
        (f"{APP}/lodash/package.json", True),
        (f"{APP}/@babel/core/package.json", True),
        (f"{APP}/mkdirp/node_modules/minimist/package.json", True),
        (f"{APP}/.pnpm/lodash@4.17.20/node_modules/lodash/package.json", True),
        ("usr/lib/node_modules/npm/package.json", True),
        (f"{APP}/uuid/dist/esm-browser/package.json", False),  # a build marker, not a package
        (f"{APP}/@babel/package.json", False),
        (f"{APP}/.package-lock.json", False),
        (f"{APP}/.bin/package.json", False),
        ("usr/src/app/package.json", False),  # the application itself, not an installed package
        (f"{APP}/lodash/index.js", False),
    ],
)
def test_npm_wants(path: str, wanted: bool) -> None:
    assert npm.wants(path) is wanted


def test_npm_packages() -> None:
    lodash = npm.catalog(f"{APP}/lodash/package.json", package_json("lodash", "4.17.20"))
    assert lodash.packages == (
        Package(Ecosystem.NPM, "lodash", "4.17.20", f"{APP}/lodash/package.json"),
    )
    assert lodash.packages[0].purl == "pkg:npm/lodash@4.17.20"
    babel = npm.catalog(
        f"{APP}/@babel/core/package.json",
        package_json("@babel/core", "7.23.9", dependencies={"@babel/types": "^7.23.9"}),
    )
    assert babel.packages[0].purl == "pkg:npm/%40babel/core@7.23.9"


@pytest.mark.parametrize(
    ("content", "note"),
    [
        (b'{"name": "lodash", "version": ', "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
        (b'["lodash", "4.17.20"]', "not a JSON object"),
        (b'{"version": "1.0.0"}', "missing or invalid name"),
        (b'{"name": "lodash", "version": 4}', "missing or invalid version"),
        (b'{"name": "has space", "version": "1.0.0"}', "missing or invalid name"),
    ],
)
def test_malformed_package_json_is_skipped(content: bytes, note: str) -> None:
    findings = npm.catalog(f"{APP}/lodash/package.json", content)
    assert findings.packages == ()
    assert findings.notes == (note,)


# -- Java

LOG4J_POM_PROPERTIES = b"""#Created by Apache Maven 3.6.3
version=2.14.1
groupId=org.apache.logging.log4j
artifactId=log4j-core
"""

LOG4J_MANIFEST = b"""Manifest-Version: 1.0
Bundle-SymbolicName: org.apache.logging.log4j.core
Implementation-Title: Apache Log4j Core
Implementation-Version: 2.14.1
Implementation-Vendor-Id: org.apache.logging.log4j
Created-By: Apache Maven 3.6.3

"""

JACKSON_MANIFEST = (
    b"Manifest-Version: 1.0\r\n"
    b"Bundle-SymbolicName: com.fasterxml.jackson.core.jackson-databind\r\n"
    b"Implementation-Vendor-Id: com.fasterxml.jackson.core\r\n"
    b"Implementation-Title: jackson-databind\r\n"
    b"Bundle-Version: 2.13.0\r\n"
    b"Bundle-Description: General data-binding functionality for Jackson: works on core stre\r\n"
    b" aming API\r\n"
    b"\r\n"
)


def jar(files: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def log4j_jar() -> bytes:
    return jar(
        {
            "META-INF/MANIFEST.MF": LOG4J_MANIFEST,
            "META-INF/maven/org.apache.logging.log4j/log4j-core/pom.properties": (
                LOG4J_POM_PROPERTIES
            ),
            "META-INF/maven/org.apache.logging.log4j/log4j-core/pom.xml": b"<project/>",
            "org/apache/logging/log4j/core/Logger.class": b"\xca\xfe\xba\xbe",
        }
    )


def test_jar_with_pom_properties() -> None:
    path = "opt/app/lib/log4j-core-2.14.1.jar"
    findings = catalog_file(path, log4j_jar())
    assert findings is not None
    assert findings.notes == ()
    assert findings.packages == (
        Package(Ecosystem.MAVEN, "org.apache.logging.log4j:log4j-core", "2.14.1", path),
    )
    assert findings.packages[0].purl == "pkg:maven/org.apache.logging.log4j/log4j-core@2.14.1"


def test_jar_identified_by_its_manifest_when_there_is_no_pom() -> None:
    path = "opt/app/lib/jackson-databind-2.13.0.jar"
    findings = java.catalog(path, jar({"META-INF/MANIFEST.MF": JACKSON_MANIFEST}))
    assert [(p.name, p.version) for p in findings.packages] == [
        ("com.fasterxml.jackson.core:jackson-databind", "2.13.0")
    ]
    wrapped = java.parse_manifest(JACKSON_MANIFEST.decode())
    assert wrapped["Bundle-Description"].endswith("works on core streaming API")


def test_jar_identified_by_its_file_name_alone() -> None:
    findings = java.catalog("opt/lib/commons-text-1.9.jar", jar({"a.txt": b"x"}))
    assert [(p.name, p.version) for p in findings.packages] == [("commons-text", "1.9")]
    nothing = java.catalog("opt/lib/app.jar", jar({"a.txt": b"x"}))
    assert nothing.packages == ()
    assert nothing.notes == ()


def test_shaded_jar_reports_each_pom_properties() -> None:
    shaded = jar(
        {
            "META-INF/maven/com.example/service/pom.properties": (
                b"groupId=com.example\nartifactId=service\nversion=1.4.2\n"
            ),
            "META-INF/maven/com.google.guava/guava/pom.properties": (
                b"groupId=com.google.guava\nartifactId=guava\nversion=31.1-jre\n"
            ),
            "META-INF/maven/org.example/unresolved/pom.properties": (
                b"groupId=org.example\nartifactId=unresolved\nversion=${project.version}\n"
            ),
        }
    )
    findings = java.catalog("app/service.jar", shaded)
    assert sorted(p.name for p in findings.packages) == [
        "com.example:service",
        "com.google.guava:guava",
    ]


def test_spring_boot_fat_jar_and_war_recurse_into_nested_jars() -> None:
    jackson = jar({"META-INF/MANIFEST.MF": JACKSON_MANIFEST})
    boot = jar(
        {
            "META-INF/MANIFEST.MF": b"Manifest-Version: 1.0\nStart-Class: com.example.App\n",
            "META-INF/maven/com.example/app/pom.properties": (
                b"groupId=com.example\nartifactId=app\nversion=0.0.1-SNAPSHOT\n"
            ),
            "BOOT-INF/lib/log4j-core-2.14.1.jar": log4j_jar(),
            "BOOT-INF/lib/jackson-databind-2.13.0.jar": jackson,
        },
        compression=zipfile.ZIP_STORED,  # Spring Boot stores nested jars uncompressed
    )
    war = jar({"WEB-INF/lib/app.jar": boot, "WEB-INF/web.xml": b"<web-app/>"})
    path = "usr/local/tomcat/webapps/ROOT.war"
    findings = catalog_file(path, war)
    assert findings is not None
    assert findings.notes == ()
    found = sorted((p.name, p.version, p.location) for p in findings.packages)
    assert found == [
        ("com.example:app", "0.0.1-SNAPSHOT", f"{path}!/WEB-INF/lib/app.jar"),
        (
            "com.fasterxml.jackson.core:jackson-databind",
            "2.13.0",
            f"{path}!/WEB-INF/lib/app.jar!/BOOT-INF/lib/jackson-databind-2.13.0.jar",
        ),
        (
            "org.apache.logging.log4j:log4j-core",
            "2.14.1",
            f"{path}!/WEB-INF/lib/app.jar!/BOOT-INF/lib/log4j-core-2.14.1.jar",
        ),
    ]


def test_nesting_depth_is_capped() -> None:
    archive = log4j_jar()
    for level in range(6):
        archive = jar({f"lib/level{level}.jar": archive})
    findings = java.catalog("deep.jar", archive, java.ArchiveLimits(max_depth=3))
    assert findings.packages == ()
    assert len(findings.notes) == 1
    assert findings.notes[0].endswith("nested deeper than 3; not read")


def test_zip_bomb_member_is_not_read() -> None:
    bomb = jar({"lib/zeros.jar": bytes(64 * MIB)})
    assert len(bomb) < 200_000
    findings = java.catalog("app/bomb.jar", bomb)
    assert findings.packages == ()
    assert findings.notes == (
        "app/bomb.jar!/lib/zeros.jar: compression ratio over 200:1; not read",
    )


def test_nested_archive_over_the_size_cap_is_not_read() -> None:
    big = jar({"lib/big.jar": bytes(3 * MIB)}, compression=zipfile.ZIP_STORED)
    findings = java.catalog("app.jar", big, java.ArchiveLimits(max_member_bytes=1 * MIB))
    assert findings.notes == ("app.jar!/lib/big.jar: larger than 1048576 bytes; not read",)


def test_central_directory_size_is_checked_before_parsing() -> None:
    many = jar({f"com/example/C{index}.class": b"" for index in range(5000)})
    assert java.central_directory_size(many) == sum(
        46 + len(f"com/example/C{index}.class") for index in range(5000)
    )
    limits = java.ArchiveLimits(max_directory_bytes=64 * 1024)
    findings = java.catalog("opt/lib/many-1.0.jar", many, limits)
    assert findings.packages == ()
    assert findings.notes == (
        "opt/lib/many-1.0.jar: central directory larger than 65536 bytes; not read",
    )
    assert [p.name for p in java.catalog("opt/lib/many-1.0.jar", many).packages] == ["many"]


def test_central_directory_size_of_zip64_and_non_zips() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        with archive.open("META-INF/MANIFEST.MF", "w", force_zip64=True) as member:
            member.write(b"Manifest-Version: 1.0\n")
        for index in range(70_000):  # more than 65535 entries needs a zip64 end record
            archive.writestr(zipfile.ZipInfo(f"e{index}"), b"")
    data = buffer.getvalue()
    assert b"PK\x06\x06" in data
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        expected = sum(46 + len(info.filename) + len(info.extra) for info in archive.infolist())
    assert java.central_directory_size(data) == expected
    assert java.central_directory_size(b"not a zip") is None


def test_decompression_budget_across_nested_archives() -> None:
    inner = jar({"pad.bin": bytes(100)}, compression=zipfile.ZIP_STORED)
    outer = jar({f"lib/{index}.jar": inner for index in range(50)})
    limits = java.ArchiveLimits(max_total_bytes=10 * len(inner))
    findings = java.catalog("app.jar", outer, limits)
    assert findings.notes[-1].startswith("stopped after")


def test_zip_member_with_corrupt_content_fails_its_crc_check() -> None:
    pom = "META-INF/maven/org.apache.logging.log4j/log4j-core/pom.properties"
    data = bytearray(jar({pom: LOG4J_POM_PROPERTIES}, compression=zipfile.ZIP_STORED))
    data[data.index(b"version=2.14.1") + 8] ^= 0x01
    findings = java.catalog("broken.jar", bytes(data))
    assert findings.packages == ()
    assert findings.notes == (f"broken.jar!/{pom}: unreadable: Bad CRC-32 for file '{pom}'",)


@pytest.mark.parametrize(
    "content", [b"", b"PK\x03\x04 truncated", b"not a zip at all", b"PK\x05\x06" + bytes(18)]
)
def test_unreadable_archives_are_noted(content: bytes) -> None:
    findings = java.catalog("opt/app/app.jar", content)
    assert findings.packages == ()
    assert all("opt/app/app.jar" in note for note in findings.notes)


def test_java_properties_parsing() -> None:
    text = "# comment\n! also a comment\nversion = 1.0\ngroupId:org.example\nartifactId  app\n"
    assert java.parse_properties(text) == {
        "version": "1.0",
        "groupId": "org.example",
        "artifactId": "app",
    }
