"""Real clients against the real server: skopeo (copy, inspect, list-tags, delete) and podman.

Every tool runs with a private policy, registries.conf, auth file, HOME and storage under the
test's temporary directory, so nothing in /etc/containers, the user's home or the host's image
store changes what is tested. The registry requires authentication: skopeo is given the
administrator's credentials on its command line, podman signs in first.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.auth import ADMIN_PASSWORD, ADMIN_USER, RegistryAuth
from tests.support.images import (
    Image,
    ImageIndex,
    Layout,
    busybox_image,
    fetch_blob,
    fetch_manifest,
    layout_blob,
    multiarch_busybox,
    read_layout_tag,
    sha256_digest,
    write_layout,
)
from tests.support.server import RegistryProcess
from tests.support.tools import require_tool

pytestmark = [
    pytest.mark.clients,
    pytest.mark.tools("skopeo"),
]

_TIMEOUT = 180
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
ADMIN_CREDS = f"{ADMIN_USER}:{ADMIN_PASSWORD}"


@dataclass(frozen=True)
class ToolEnvironment:
    """Private configuration for the containers tools (skopeo, podman)."""

    root: Path
    env: dict[str, str]
    policy: Path
    registries_d: Path


def tool_environment(root: Path) -> ToolEnvironment:
    home = root / "home"
    tmp = root / "tmp"
    registries_d = root / "registries.d"
    for directory in (home, tmp, registries_d):
        directory.mkdir(parents=True, exist_ok=True)
    policy = root / "policy.json"
    policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    registries_conf = root / "registries.conf"
    registries_conf.write_text("unqualified-search-registries = []\n")
    auth = root / "auth.json"
    auth.write_text("{}")
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_RUNTIME_DIR": str(root / "run"),
        "TMPDIR": str(tmp),
        "CONTAINERS_REGISTRIES_CONF": str(registries_conf),
        "REGISTRY_AUTH_FILE": str(auth),
    }
    return ToolEnvironment(root, env, policy, registries_d)


@pytest.fixture(scope="module")
def tools(tmp_path_factory: pytest.TempPathFactory) -> ToolEnvironment:
    return tool_environment(tmp_path_factory.mktemp("containers-tools"))


def _execute(
    command: list[str], env: dict[str, str], stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        command, env=env, input=stdin, capture_output=True, timeout=_TIMEOUT, check=False
    )


def _run(
    command: list[str], env: dict[str, str], stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    result = _execute(command, env, stdin)
    assert result.returncode == 0, (
        f"{' '.join(command)} exited {result.returncode}:\n{result.stderr.decode(errors='replace')}"
    )
    return result


@dataclass(frozen=True)
class Skopeo:
    """skopeo with private configuration; `creds` (user:secret) signs in to every registry
    reference, None makes every reference anonymous (`--no-creds` and its kin)."""

    tools: ToolEnvironment
    creds: str | None = ADMIN_CREDS

    def command(self, *args: str) -> list[str]:
        return [
            "skopeo",
            "--policy",
            str(self.tools.policy),
            "--registries.d",
            str(self.tools.registries_d),
            *args,
        ]

    def run(self, *args: str) -> bytes:
        return _run(self.command(*args), self.tools.env).stdout

    def attempt(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        """Run without requiring success; the caller checks the outcome."""
        return _execute(self.command(*args), self.tools.env)

    def creds_args(self, flag: str = "--creds") -> list[str]:
        """`--creds user:secret` (or `--src-creds`, `--dest-creds`); without creds, the
        matching `--no-creds` flag."""
        if self.creds is None:
            return [flag.replace("creds", "no-creds")]
        return [flag, self.creds]

    def copy_args(self, source: str, destination: str, *extra: str) -> list[str]:
        return [
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            "--preserve-digests",
            *self.creds_args("--src-creds"),
            *self.creds_args("--dest-creds"),
            *extra,
            source,
            destination,
        ]

    def copy(self, source: str, destination: str, *extra: str) -> None:
        self.run(*self.copy_args(source, destination, *extra))

    def inspect(self, reference: str, *extra: str) -> bytes:
        return self.run("inspect", "--tls-verify=false", *self.creds_args(), *extra, reference)


@pytest.fixture(scope="module")
def skopeo(tools: ToolEnvironment) -> Skopeo:
    return Skopeo(tools)


@pytest.fixture(scope="module")
def single_layout(tmp_path_factory: pytest.TempPathFactory) -> tuple[Image, Layout]:
    image = busybox_image(label="single")
    return image, write_layout(tmp_path_factory.mktemp("layout") / "single", "v1", image)


@pytest.fixture(scope="module")
def index_layout(tmp_path_factory: pytest.TempPathFactory) -> tuple[ImageIndex, Layout]:
    index = multiarch_busybox(label="multi")
    return index, write_layout(tmp_path_factory.mktemp("layout") / "multi", "v1", index)


def docker_ref(server: RegistryProcess, repository: str, reference: str) -> str:
    separator = "@" if reference.startswith("sha256:") else ":"
    return f"docker://{server.host}/{repository}{separator}{reference}"


def assert_image_in_registry(client: httpx.Client, repository: str, image: Image) -> None:
    """The manifest is served byte for byte and every blob reads back with its digest."""
    response = fetch_manifest(client, repository, image.manifest.digest)
    assert response.headers["Docker-Content-Digest"] == image.manifest.digest
    assert response.content == image.manifest.data
    for blob in image.blobs:
        content = fetch_blob(client, repository, blob.digest)
        assert sha256_digest(content) == blob.digest
        assert len(content) == blob.size


def assert_layout_blobs_intact(path: Path) -> set[str]:
    """Every blob file in a layout hashes to its name; returns their digests."""
    digests = set()
    for blob_file in (path / "blobs" / "sha256").iterdir():
        digest = f"sha256:{blob_file.name}"
        assert sha256_digest(blob_file.read_bytes()) == digest
        digests.add(digest)
    return digests


@pytest.mark.tools("umoci")
def test_built_layout_is_valid_for_umoci(
    single_layout: tuple[Image, Layout], tmp_path: Path
) -> None:
    image, layout = single_layout
    bundle = tmp_path / "bundle"
    subprocess.run(
        ["umoci", "unpack", "--image", f"{layout.path}:{layout.tag}", str(bundle)],
        check=True,
        capture_output=True,
        timeout=_TIMEOUT,
    )
    busybox = (bundle / "rootfs" / "bin" / "busybox").read_bytes()
    assert busybox == Path("/bin/busybox").read_bytes()
    assert (bundle / "rootfs" / "bin" / "sh").readlink() == Path("busybox")
    assert json.loads(layout.top.data)["config"]["digest"] == image.config.digest


def test_copy_layout_to_registry_and_back_preserves_digests(
    skopeo: Skopeo,
    registry: RegistryProcess,
    client: httpx.Client,
    repo: str,
    single_layout: tuple[Image, Layout],
    tmp_path: Path,
) -> None:
    image, layout = single_layout
    skopeo.copy(layout.reference, docker_ref(registry, repo, "v1"))

    by_tag = fetch_manifest(client, repo, "v1")
    assert by_tag.headers["Docker-Content-Digest"] == layout.top.digest == image.manifest.digest
    assert_image_in_registry(client, repo, image)

    out = tmp_path / "out"
    skopeo.copy(docker_ref(registry, repo, "v1"), f"oci:{out}:copied")
    assert read_layout_tag(out, "copied")["digest"] == image.manifest.digest
    stored = assert_layout_blobs_intact(out)
    assert stored == {blob.digest for blob in (*image.blobs, image.manifest)}
    assert layout_blob(out, image.manifest.digest) == image.manifest.data


def test_copy_multiarch_index_with_all(
    skopeo: Skopeo,
    registry: RegistryProcess,
    client: httpx.Client,
    repo: str,
    index_layout: tuple[ImageIndex, Layout],
    tmp_path: Path,
) -> None:
    index, layout = index_layout
    skopeo.copy(layout.reference, docker_ref(registry, repo, "multi"), "--all")

    response = fetch_manifest(client, repo, "multi")
    assert response.headers["Docker-Content-Digest"] == index.index.digest
    assert response.content == index.index.data
    for image in index.images:
        assert_image_in_registry(client, repo, image)

    out = tmp_path / "out"
    skopeo.copy(docker_ref(registry, repo, "multi"), f"oci:{out}:multi", "--all")
    assert read_layout_tag(out, "multi")["digest"] == index.index.digest
    assert assert_layout_blobs_intact(out) == set(layout.contents)


def test_copy_converting_to_docker_schema2(
    skopeo: Skopeo,
    registry: RegistryProcess,
    client: httpx.Client,
    repo: str,
    single_layout: tuple[Image, Layout],
) -> None:
    image, layout = single_layout
    destination = docker_ref(registry, repo, "docker")
    skopeo.run(
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        *skopeo.creds_args("--dest-creds"),
        "--format",
        "v2s2",
        layout.reference,
        destination,
    )

    response = client.get(f"/v2/{repo}/manifests/docker", headers={"Accept": DOCKER_MANIFEST})
    assert response.status_code == 200
    assert response.headers["Content-Type"] == DOCKER_MANIFEST
    assert response.headers["Docker-Content-Digest"] == sha256_digest(response.content)
    converted = response.json()
    # Same bytes under Docker media types: every blob keeps its digest.
    assert converted["config"]["digest"] == image.config.digest
    assert [layer["digest"] for layer in converted["layers"]] == [
        layer.digest for layer in image.layers
    ]
    for blob in image.blobs:
        assert sha256_digest(fetch_blob(client, repo, blob.digest)) == blob.digest
    assert json.loads(skopeo.inspect(destination, "--raw")) == converted


def test_inspect_image(
    skopeo: Skopeo,
    registry: RegistryProcess,
    repo: str,
    single_layout: tuple[Image, Layout],
) -> None:
    image, layout = single_layout
    skopeo.copy(layout.reference, docker_ref(registry, repo, "v1"))
    reference = docker_ref(registry, repo, "v1")

    summary = json.loads(skopeo.inspect(reference))
    assert summary["Digest"] == image.manifest.digest
    assert (summary["Architecture"], summary["Os"]) == ("amd64", "linux")
    assert summary["Layers"] == [layer.digest for layer in image.layers]
    assert summary["Labels"] == {"test.label": "single"}
    assert summary["RepoTags"] == ["v1"]

    assert skopeo.inspect(reference, "--raw") == image.manifest.data
    assert skopeo.inspect(reference, "--config", "--raw") == image.config.data
    config = json.loads(skopeo.inspect(reference, "--config"))
    expected_config = json.loads(image.config.data)
    assert config["rootfs"] == expected_config["rootfs"]
    assert config["config"]["Entrypoint"] == ["/bin/sh"]


def test_inspect_index_picks_the_requested_platform(
    skopeo: Skopeo,
    registry: RegistryProcess,
    repo: str,
    index_layout: tuple[ImageIndex, Layout],
) -> None:
    index, layout = index_layout
    skopeo.copy(layout.reference, docker_ref(registry, repo, "multi"), "--all")
    reference = docker_ref(registry, repo, "multi")

    assert skopeo.inspect(reference, "--raw") == index.index.data
    for image in index.images:
        arch = image.platform.architecture
        summary = json.loads(
            skopeo.run(
                "--override-arch",
                arch,
                "inspect",
                "--tls-verify=false",
                *skopeo.creds_args(),
                reference,
            )
        )
        assert summary["Architecture"] == arch
        assert summary["Layers"] == [layer.digest for layer in image.layers]
        assert summary["Labels"] == {"test.label": f"multi-{arch}"}


def test_list_tags(
    skopeo: Skopeo,
    registry: RegistryProcess,
    repo: str,
    single_layout: tuple[Image, Layout],
) -> None:
    _, layout = single_layout
    tags = ["v1", "v2", "latest", "1.0.0-rc.1"]
    for tag in tags:
        skopeo.copy(layout.reference, docker_ref(registry, repo, tag))

    listed = json.loads(
        skopeo.run(
            "list-tags",
            "--tls-verify=false",
            *skopeo.creds_args(),
            f"docker://{registry.host}/{repo}",
        )
    )
    assert listed["Repository"] == f"{registry.host}/{repo}"
    assert sorted(listed["Tags"]) == sorted(tags)


def test_delete_removes_tag_and_digest(
    skopeo: Skopeo,
    registry: RegistryProcess,
    client: httpx.Client,
    repo: str,
    tmp_path: Path,
) -> None:
    image = busybox_image(label="to-delete")
    layout = write_layout(tmp_path / "layout", "v1", image)
    skopeo.copy(layout.reference, docker_ref(registry, repo, "doomed"))
    assert fetch_manifest(client, repo, "doomed").status_code == 200

    skopeo.run(
        "delete", "--tls-verify=false", *skopeo.creds_args(), docker_ref(registry, repo, "doomed")
    )

    for reference in ("doomed", image.manifest.digest):
        response = client.get(f"/v2/{repo}/manifests/{reference}")
        assert response.status_code == 404
        assert response.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    assert "doomed" not in client.get(f"/v2/{repo}/tags/list").json()["tags"]


def test_copy_between_repositories_on_one_server(
    skopeo: Skopeo,
    registry: RegistryProcess,
    client: httpx.Client,
    repo: str,
    index_layout: tuple[ImageIndex, Layout],
) -> None:
    index, layout = index_layout
    source, target = f"{repo}/source", f"{repo}/target"
    skopeo.copy(layout.reference, docker_ref(registry, source, "v1"), "--all")
    skopeo.copy(docker_ref(registry, source, "v1"), docker_ref(registry, target, "v1"), "--all")

    response = fetch_manifest(client, target, "v1")
    assert response.headers["Docker-Content-Digest"] == index.index.digest
    for image in index.images:
        assert_image_in_registry(client, target, image)


def test_copy_between_two_servers(
    skopeo: Skopeo,
    registry: RegistryProcess,
    repo: str,
    single_layout: tuple[Image, Layout],
    start_registry: Callable[..., RegistryProcess],
) -> None:
    image, layout = single_layout
    other = start_registry()
    skopeo.copy(layout.reference, docker_ref(registry, repo, "v1"))
    skopeo.copy(docker_ref(registry, repo, "v1"), docker_ref(other, "mirror/busybox", "v1"))

    with httpx.Client(base_url=other.url, timeout=60, auth=RegistryAuth()) as other_client:
        response = fetch_manifest(other_client, "mirror/busybox", "v1")
        assert response.headers["Docker-Content-Digest"] == image.manifest.digest
        assert_image_in_registry(other_client, "mirror/busybox", image)


# -- podman


@dataclass(frozen=True)
class Podman:
    tools: ToolEnvironment

    def command(self, *args: str) -> list[str]:
        return ["podman", "--storage-driver", "vfs", *args]

    def run(self, *args: str, stdin: bytes | None = None) -> bytes:
        return _run(self.command(*args), self.tools.env, stdin).stdout

    def attempt(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        """Run without requiring success; the caller checks the outcome."""
        return _execute(self.command(*args), self.tools.env)

    def login(self, host: str, username: str, password: str) -> None:
        """Sign in; the credentials go to the private auth file (REGISTRY_AUTH_FILE)."""
        self.run(
            "login",
            "--tls-verify=false",
            "--username",
            username,
            "--password-stdin",
            host,
            stdin=password.encode(),
        )

    def image_info(self, reference: str) -> dict[str, Any]:
        found: list[dict[str, Any]] = json.loads(self.run("image", "inspect", reference))
        return found[0]


def podman_environment(root: Path) -> Podman:
    """podman with vfs storage, its own store, configuration and auth file under `root`."""
    tools = tool_environment(root)
    storage_conf = tools.root / "storage.conf"
    storage_conf.write_text(
        "[storage]\n"
        'driver = "vfs"\n'
        f'runroot = "{tools.root / "runroot"}"\n'
        f'graphroot = "{tools.root / "graphroot"}"\n'
    )
    containers_conf = tools.root / "containers.conf"
    # No journald or systemd here: events go nowhere, cgroups are managed directly.
    containers_conf.write_text('[engine]\nevents_logger = "none"\ncgroup_manager = "cgroupfs"\n')
    tools.env["CONTAINERS_STORAGE_CONF"] = str(storage_conf)
    tools.env["CONTAINERS_CONF"] = str(containers_conf)
    tools.env["CONTAINERS_POLICY_JSON"] = str(tools.policy)
    return Podman(tools)


@pytest.fixture
def podman(tmp_path: Path) -> Iterator[Podman]:
    require_tool("podman")
    tool = podman_environment(tmp_path / "podman")
    yield tool
    # vfs layers are plain directories; drop them through podman so its locks stay consistent.
    tool.attempt("rmi", "--all", "--force")


def test_podman_pull_tag_push_and_pull_by_digest(
    podman: Podman,
    skopeo: Skopeo,
    registry: RegistryProcess,
    client: httpx.Client,
    repo: str,
    single_layout: tuple[Image, Layout],
) -> None:
    image, layout = single_layout
    skopeo.copy(layout.reference, docker_ref(registry, repo, "v1"))
    source = f"{registry.host}/{repo}:v1"
    target = f"{registry.host}/{repo}/retagged:v2"
    podman.login(registry.host, ADMIN_USER, ADMIN_PASSWORD)

    podman.run("pull", "--quiet", "--tls-verify=false", source)
    pulled = podman.image_info(source)
    # Podman names an image by its config digest.
    assert f"sha256:{pulled['Id']}" == image.config.digest
    assert pulled["Digest"] == image.manifest.digest

    podman.run("tag", source, target)
    digest_file = podman.tools.root / "pushed-digest"
    podman.run("push", "--quiet", "--tls-verify=false", "--digestfile", str(digest_file), target)
    pushed_digest = digest_file.read_text().strip()
    response = fetch_manifest(client, f"{repo}/retagged", "v2")
    assert response.headers["Docker-Content-Digest"] == pushed_digest
    assert sha256_digest(response.content) == pushed_digest
    pushed_manifest = json.loads(response.content)
    for descriptor in [pushed_manifest["config"], *pushed_manifest["layers"]]:
        content = fetch_blob(client, f"{repo}/retagged", descriptor["digest"])
        assert hashlib.sha256(content).hexdigest() == descriptor["digest"].split(":")[1]

    podman.run("rmi", "--all", "--force")
    by_digest = f"{registry.host}/{repo}/retagged@{pushed_digest}"
    podman.run("pull", "--quiet", "--tls-verify=false", by_digest)
    repulled = podman.image_info(by_digest)
    assert f"sha256:{repulled['Id']}" == image.config.digest
    assert pushed_digest in [entry.split("@")[1] for entry in repulled["RepoDigests"]]
