"""Build real OCI images and image layouts in Python, and push them over the HTTP API.

Images are made from the host's static busybox binary, so they are runnable and realistic in
size; every digest is computed from the bytes, never written down, because the binary changes
with distribution updates. Layers are built deterministically (fixed mtimes, owners and gzip
header) so the same inputs always give the same digests.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import tarfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.support.auth import ADMIN_PASSWORD, ADMIN_USER, basic_header

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"

BUSYBOX = Path("/bin/busybox")
_EPOCH = 1_700_000_000  # a fixed mtime keeps layers reproducible
_CREATED = "2023-11-14T22:13:20Z"


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Blob:
    """Content plus the media type it is referenced with."""

    media_type: str
    data: bytes

    @functools.cached_property
    def digest(self) -> str:
        return sha256_digest(self.data)

    @property
    def size(self) -> int:
        return len(self.data)

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size, **extra}


@dataclass(frozen=True)
class Platform:
    os: str = "linux"
    architecture: str = "amd64"

    def as_dict(self) -> dict[str, str]:
        return {"architecture": self.architecture, "os": self.os}


@dataclass(frozen=True)
class Image:
    platform: Platform
    config: Blob
    layers: tuple[Blob, ...]
    manifest: Blob

    @property
    def blobs(self) -> tuple[Blob, ...]:
        """Config and layers: what must be pushed before the manifest."""
        return (self.config, *self.layers)


@dataclass(frozen=True)
class ImageIndex:
    images: tuple[Image, ...]
    index: Blob


@dataclass(frozen=True)
class Layout:
    """An OCI image layout on disk with one tag pointing at `top` (a manifest or an index)."""

    path: Path
    tag: str
    top: Blob
    contents: dict[str, Blob]  # every blob in the layout (manifests too), by digest

    @property
    def reference(self) -> str:
        """The layout in the `oci:` transport syntax of skopeo and podman."""
        return f"oci:{self.path}:{self.tag}"


# -- layers


@dataclass(frozen=True)
class _Entry:
    name: str
    data: bytes = b""
    mode: int = 0o644
    kind: bytes = tarfile.REGTYPE
    link: str = ""


def _tar(entries: Iterable[_Entry]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for entry in entries:
            info = tarfile.TarInfo(entry.name)
            info.type = entry.kind
            info.mode = entry.mode
            info.mtime = _EPOCH
            info.uname = info.gname = "root"
            info.linkname = entry.link
            info.size = len(entry.data) if entry.kind == tarfile.REGTYPE else 0
            archive.addfile(info, io.BytesIO(entry.data) if info.size else None)
    return buffer.getvalue()


def _directory(name: str) -> _Entry:
    return _Entry(name, mode=0o755, kind=tarfile.DIRTYPE)


def _symlink(name: str, target: str) -> _Entry:
    return _Entry(name, mode=0o777, kind=tarfile.SYMTYPE, link=target)


@dataclass(frozen=True)
class LayerBlob:
    blob: Blob
    diff_id: str  # digest of the uncompressed tar, as the image config records it


def _layer(entries: Iterable[_Entry]) -> LayerBlob:
    tar = _tar(entries)
    # mtime=0 keeps the gzip header, and so the digest, reproducible.
    compressed = gzip.compress(tar, compresslevel=6, mtime=0)
    return LayerBlob(Blob(OCI_LAYER_GZIP, compressed), sha256_digest(tar))


@functools.cache
def busybox_layer() -> LayerBlob:
    """The host's static busybox as /bin/busybox, with sh, ls and cat linked to it."""
    return _layer(
        [
            _directory("bin"),
            _Entry("bin/busybox", BUSYBOX.read_bytes(), mode=0o755),
            _symlink("bin/sh", "busybox"),
            _symlink("bin/ls", "busybox"),
            _symlink("bin/cat", "busybox"),
        ]
    )


def files_layer(files: dict[str, bytes]) -> LayerBlob:
    """A small layer with the given files under etc/."""
    entries = [_directory("etc")]
    entries += [_Entry(f"etc/{name}", data) for name, data in sorted(files.items())]
    return _layer(entries)


# -- images


def _config(platform: Platform, layers: list[LayerBlob], label: str) -> Blob:
    document = {
        "created": _CREATED,
        **platform.as_dict(),
        "config": {
            "Env": ["PATH=/bin"],
            "Entrypoint": ["/bin/sh"],
            "Labels": {"test.label": label},
        },
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        # One history entry per layer, as builders write them.
        "history": [
            {"created": _CREATED, "created_by": f"layer {number}"} for number in range(len(layers))
        ],
    }
    return Blob(OCI_CONFIG, _json(document))


def _json(document: dict[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def image_from_layers(platform: Platform, layers: list[LayerBlob], label: str) -> Image:
    config = _config(platform, layers, label)
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.descriptor(),
        "layers": [layer.blob.descriptor() for layer in layers],
    }
    manifest = Blob(OCI_MANIFEST, _json(document))
    return Image(platform, config, tuple(layer.blob for layer in layers), manifest)


def busybox_image(platform: Platform | None = None, label: str = "busybox") -> Image:
    """A runnable two-layer image: busybox, plus a layer naming its platform and label."""
    platform = platform or Platform()
    extra = files_layer(
        {
            "motd": f"hello from {label}\n".encode(),
            "platform": f"{platform.os}/{platform.architecture}\n".encode(),
        }
    )
    return image_from_layers(platform, [busybox_layer(), extra], label)


def tiny_image(label: str, platform: Platform | None = None) -> Image:
    """A small image whose layer and config are unique to `label` (for bulk pushes)."""
    layer = files_layer(
        {"label": label.encode(), "filler": hashlib.sha512(label.encode()).digest()}
    )
    return image_from_layers(platform or Platform(), [layer], label)


def image_index(images: Iterable[Image]) -> ImageIndex:
    children = tuple(images)
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            image.manifest.descriptor(platform=image.platform.as_dict()) for image in children
        ],
    }
    return ImageIndex(children, Blob(OCI_INDEX, _json(document)))


def multiarch_busybox(label: str = "busybox") -> ImageIndex:
    """linux/amd64 and linux/arm64 children, each with its own config and platform layer."""
    return image_index(
        busybox_image(Platform("linux", arch), f"{label}-{arch}") for arch in ("amd64", "arm64")
    )


# -- layouts


def write_layout(path: Path, tag: str, content: Image | ImageIndex) -> Layout:
    """Write an OCI image layout whose index.json tags `content` as `tag`."""
    blobs: dict[str, Blob] = {}
    images = content.images if isinstance(content, ImageIndex) else (content,)
    for image in images:
        for blob in (*image.blobs, image.manifest):
            blobs[blob.digest] = blob
    top = content.index if isinstance(content, ImageIndex) else content.manifest
    blobs[top.digest] = top
    blob_dir = path / "blobs" / "sha256"
    blob_dir.mkdir(parents=True, exist_ok=True)
    for digest, blob in blobs.items():
        (blob_dir / digest.removeprefix("sha256:")).write_bytes(blob.data)
    (path / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [top.descriptor(annotations={REF_NAME: tag})],
    }
    (path / "index.json").write_text(json.dumps(index))
    return Layout(path, tag, top, blobs)


def read_layout_tag(path: Path, tag: str) -> dict[str, Any]:
    """The descriptor index.json of a layout holds for `tag`."""
    index = json.loads((path / "index.json").read_text())
    for descriptor in index["manifests"]:
        if descriptor.get("annotations", {}).get(REF_NAME) == tag:
            return dict(descriptor)
    raise KeyError(f"{tag} is not in {path}/index.json")


def layout_blob(path: Path, digest: str) -> bytes:
    algorithm, hex_part = digest.split(":", 1)
    return (path / "blobs" / algorithm / hex_part).read_bytes()


# -- tokens for raw requests


def registry_token(
    base_url: str,
    *scopes: str,
    username: str | None = ADMIN_USER,
    password: str = ADMIN_PASSWORD,
) -> str:
    """A registry token for `scopes` from the token service; `username=None` is anonymous."""
    headers = {"Authorization": basic_header(username, password)} if username is not None else {}
    params = httpx.QueryParams([("service", "moorage"), *(("scope", scope) for scope in scopes)])
    response = httpx.get(f"{base_url}/service/token", params=params, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    return str(response.json()["token"])


def push_token(base_url: str, repository: str) -> str:
    """An administrator's token that may pull and push `repository`."""
    return registry_token(base_url, f"repository:{repository}:pull,push")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- pushing and reading over the HTTP API


def push_blob(client: httpx.Client, repository: str, blob: Blob) -> None:
    """Monolithic upload (`POST ?digest=`)."""
    response = client.post(
        f"/v2/{repository}/blobs/uploads/",
        params={"digest": blob.digest},
        content=blob.data,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert response.status_code == 201, response.text


def push_manifest(client: httpx.Client, repository: str, reference: str, manifest: Blob) -> str:
    """PUT a manifest; returns the Docker-Content-Digest the registry answered."""
    response = client.put(
        f"/v2/{repository}/manifests/{reference}",
        content=manifest.data,
        headers={"Content-Type": manifest.media_type},
    )
    assert response.status_code == 201, response.text
    return response.headers["Docker-Content-Digest"]


def push_image(client: httpx.Client, repository: str, image: Image, tag: str | None) -> str:
    for blob in image.blobs:
        push_blob(client, repository, blob)
    return push_manifest(client, repository, tag or image.manifest.digest, image.manifest)


def fetch_blob(client: httpx.Client, repository: str, digest: str) -> bytes:
    response = client.get(f"/v2/{repository}/blobs/{digest}")
    assert response.status_code == 200, f"{digest}: {response.status_code} {response.text}"
    return response.content


def fetch_manifest(client: httpx.Client, repository: str, reference: str) -> httpx.Response:
    response = client.get(
        f"/v2/{repository}/manifests/{reference}",
        headers={"Accept": ", ".join([OCI_MANIFEST, OCI_INDEX])},
    )
    assert response.status_code == 200, f"{reference}: {response.status_code} {response.text}"
    return response


# -- chunked uploads


def start_upload(client: httpx.Client, repository: str) -> str:
    """Open an upload session; returns its Location (a path on the registry)."""
    response = client.post(f"/v2/{repository}/blobs/uploads/")
    assert response.status_code == 202, response.text
    return response.headers["Location"]


def upload_id(location: str) -> str:
    return location.rstrip("/").rsplit("/", 1)[1].split("?", 1)[0]


def stored_size(range_header: str) -> int:
    """Bytes an upload holds, from its `Range: 0-<last>` header (only for non-empty uploads)."""
    start, end = range_header.split("-")
    assert start == "0", range_header
    return int(end) + 1


def patch_chunk(client: httpx.Client, location: str, data: bytes, start: int) -> httpx.Response:
    response = client.patch(
        location,
        content=data,
        headers={
            "Content-Type": "application/octet-stream",
            "Content-Range": f"{start}-{start + len(data) - 1}",
        },
    )
    assert response.status_code == 202, response.text
    assert stored_size(response.headers["Range"]) == start + len(data)
    return response


def finish_upload(
    client: httpx.Client, location: str, digest: str, last_chunk: bytes = b"", start: int = 0
) -> httpx.Response:
    headers = {"Content-Type": "application/octet-stream"}
    if last_chunk:
        headers["Content-Range"] = f"{start}-{start + len(last_chunk) - 1}"
    response = client.put(location, params={"digest": digest}, content=last_chunk, headers=headers)
    assert response.status_code == 201, response.text
    return response


def push_blob_chunked(client: httpx.Client, repository: str, blob: Blob, pieces: int = 2) -> None:
    """POST, one PATCH per piece but the last, then PUT with the last piece."""
    location = start_upload(client, repository)
    step = max(1, -(-blob.size // pieces))
    offset = 0
    while blob.size - offset > step:
        response = patch_chunk(client, location, blob.data[offset : offset + step], offset)
        location = response.headers["Location"]
        offset += step
    finish_upload(client, location, blob.digest, blob.data[offset:], offset)


class HeldBody:
    """A request body sent in pieces that stops after `hold_at` bytes until released.

    While it is held the request is in flight with a known number of bytes sent, so a test can
    kill or stop the server at a precise point of a streaming upload.
    """

    def __init__(self, data: bytes, hold_at: int, piece: int = 64 * 1024) -> None:
        self.data = data
        self.hold_at = hold_at
        self.piece = piece
        self.release = threading.Event()

    def __iter__(self) -> Iterator[bytes]:
        offset = 0
        while offset < len(self.data):
            if offset >= self.hold_at and not self.release.is_set():
                self.release.wait(timeout=120)
            end = min(offset + self.piece, len(self.data))
            if offset < self.hold_at < end:
                end = self.hold_at
            yield self.data[offset:end]
            offset = end


class BackgroundRequest:
    """Runs one streaming request on its own connection in a thread; keeps its outcome."""

    def __init__(self, base_url: str, method: str, url: str, **kwargs: Any) -> None:
        self.response: httpx.Response | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(base_url, method, url), kwargs=kwargs, daemon=True
        )
        self._thread.start()

    def _run(self, base_url: str, method: str, url: str, **kwargs: Any) -> None:
        try:
            with httpx.Client(base_url=base_url, timeout=120) as client:
                self.response = client.request(method, url, **kwargs)
        except BaseException as error:  # the test decides which failures are expected
            self.error = error

    def join(self, timeout: float = 60) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the request did not finish"


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return -1
