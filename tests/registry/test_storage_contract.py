"""The storage-driver contract, run against every driver: the filesystem and S3 (moto's server).

"Two nodes" are two driver instances over the same storage; a crashed node is a child process
killed with SIGKILL in the middle of an upload.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from moorage.domain.digest import Digest
from moorage.hashing import new_resumable, resume
from moorage.storage.base import StorageDriver, UploadBusyError, UploadMissingError
from moorage.storage.filesystem import FilesystemStorage
from moorage.storage.s3 import MiB, S3Options, S3Storage
from tests.support.processes import kill_group, spawn
from tests.support.services import S3Server
from tests.support.wait import wait_until

PART = 5 * MiB  # the smallest part S3 accepts, so multi-part cases stay small for moto
LEASE_SECONDS = 2.0
REPO_ROOT = Path(__file__).resolve().parents[2]

Spec = dict[str, Any]


def driver_from(spec: Spec) -> StorageDriver:
    if spec["kind"] == "filesystem":
        return FilesystemStorage(Path(spec["root"]))
    return S3Storage(
        S3Options(
            bucket=spec["bucket"],
            endpoint=spec["endpoint"],
            region=spec["region"],
            access_key=spec["access_key"],
            secret_key=spec["secret_key"],
            prefix="registry/",
            part_size=PART,
            lease_seconds=LEASE_SECONDS,
        )
    )


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    with S3Server() as server:
        yield server


@pytest.fixture(params=["filesystem", "s3"])
def spec(request: pytest.FixtureRequest, tmp_path: Path) -> Spec:
    if request.param == "filesystem":
        return {"kind": "filesystem", "root": str(tmp_path / "storage")}
    server: S3Server = request.getfixturevalue("s3_server")
    bucket = server.create_bucket(f"contract-{os.urandom(6).hex()}")
    return {
        "kind": "s3",
        "bucket": bucket,
        "endpoint": server.endpoint,
        "region": server.region,
        "access_key": server.access_key,
        "secret_key": server.secret_key,
    }


@pytest.fixture
def node(spec: Spec) -> Callable[[], StorageDriver]:
    """A new driver instance (a node) on the test's storage."""
    return lambda: driver_from(spec)


def content(size: int, seed: int = 0) -> bytes:
    block = hashlib.sha256(f"{seed}".encode()).digest()
    return (block * (size // len(block) + 1))[:size]


def digest_of(data: bytes) -> Digest:
    return Digest("sha256", hashlib.sha256(data).hexdigest())


def store_blob(driver: StorageDriver, upload_id: str, data: bytes, step: int = 1 << 16) -> Digest:
    driver.create_upload(upload_id)
    writer = driver.open_upload(upload_id)
    try:
        for start in range(0, len(data), step):
            writer.write(data[start : start + step])
        writer.commit(digest_of(data))
    finally:
        writer.close()
    return digest_of(data)


def read_blob(driver: StorageDriver, digest: Digest) -> bytes:
    with driver.open_blob(digest) as stream:
        return stream.read()


def append(driver: StorageDriver, upload_id: str, data: bytes) -> int:
    """One PATCH as the upload service does it: hash resumed or rebuilt, bytes, state saved."""
    writer = driver.open_upload(upload_id)
    try:
        hasher = hasher_for(driver, upload_id, writer)
        for start in range(0, len(data), 1 << 16):
            chunk = data[start : start + (1 << 16)]
            writer.write(chunk)
            hasher.update(chunk)
        state = hasher.state()
        assert state is not None
        driver.save_digest_state(upload_id, writer.size, state)
        return writer.size
    finally:
        writer.close()


def hasher_for(driver: StorageDriver, upload_id: str, writer: Any) -> Any:
    saved = driver.load_digest_state(upload_id)
    if saved is not None and saved[0] == writer.size:
        resumed = resume("sha256", saved[1])
        if resumed is not None:
            return resumed
    hasher = new_resumable("sha256")
    for chunk in writer.read_all():
        hasher.update(chunk)
    return hasher


# -- blobs


@pytest.mark.parametrize("size", [0, 1, PART - 1, PART, PART + 1, 2 * PART + 3])
def test_blob_round_trip_keeps_every_byte(node: Callable[[], StorageDriver], size: int) -> None:
    driver = node()
    data = content(size, seed=size)
    digest = store_blob(driver, f"u{size}", data, step=PART // 3 + 7)
    other = node()
    assert other.blob_size(digest) == size
    assert read_blob(other, digest) == data
    assert list(other.list_uploads()) == []


def test_blob_reader_seeks_and_reads_in_pieces(node: Callable[[], StorageDriver]) -> None:
    driver = node()
    data = content(3 * MiB + 5)
    digest = store_blob(driver, "seek", data)
    with driver.open_blob(digest) as stream:
        assert stream.read(10) == data[:10]
        stream.seek(2 * MiB)
        assert stream.read(100) == data[2 * MiB : 2 * MiB + 100]
        stream.seek(5)
        assert stream.read() == data[5:]


def test_missing_blob_has_no_size_and_cannot_be_opened(node: Callable[[], StorageDriver]) -> None:
    driver = node()
    digest = digest_of(b"never stored")
    assert driver.blob_size(digest) is None
    with pytest.raises(FileNotFoundError):
        driver.open_blob(digest)
    driver.delete_blob(digest)  # deleting what is not there is not an error


def test_deleted_blob_is_gone_for_every_node(node: Callable[[], StorageDriver]) -> None:
    first, second = node(), node()
    digest = store_blob(first, "d", b"to be deleted")
    second.delete_blob(digest)
    assert first.blob_size(digest) is None
    assert list(first.list_blobs()) == []


def test_bulk_delete_crosses_the_request_limit(
    spec: Spec, node: Callable[[], StorageDriver]
) -> None:
    driver = node()
    if isinstance(driver, S3Storage):
        # More than one DeleteObjects request's worth, written straight into the bucket.
        stored = {digest_of(f"blob {index}".encode()) for index in range(1003)}
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda digest: driver._put(driver._blob_key(digest), b""), stored))
    else:
        stored = {store_blob(driver, f"b{index}", f"blob {index}".encode()) for index in range(30)}
    keep = store_blob(driver, "keep", b"kept")
    assert set(driver.list_blobs()) == stored | {keep}
    assert driver.delete_blobs(sorted(stored, key=str)) == len(stored)
    assert list(driver.list_blobs()) == [keep]


def test_presigned_url_serves_the_blob(spec: Spec, node: Callable[[], StorageDriver]) -> None:
    driver = node()
    data = content(100_000, seed=3)
    digest = store_blob(driver, "url", data)
    url = driver.blob_url(digest, 60)
    if spec["kind"] == "filesystem":
        assert url is None
        assert driver.local_path(digest) is not None
        return
    assert url is not None
    assert spec["secret_key"] not in url
    with urllib.request.urlopen(url) as response:  # noqa: S310 - our own loopback endpoint
        assert response.read() == data
    # (moto does not check signatures, so a forged URL cannot be tested against it)


# -- uploads


def test_upload_appends_across_requests_and_reads_back(node: Callable[[], StorageDriver]) -> None:
    driver = node()
    data = content(2 * PART + 1000, seed=1)
    driver.create_upload("up")
    pieces = [data[:1000], data[1000 : PART + 10], data[PART + 10 :]]
    offset = 0
    for piece in pieces:
        offset += len(piece)
        assert append(driver, "up", piece) == offset
        assert driver.upload_size("up") == offset
    writer = driver.open_upload("up")
    try:
        assert writer.size == len(data)
        assert b"".join(writer.read_all()) == data
        writer.commit(digest_of(data))
    finally:
        writer.close()
    assert read_blob(driver, digest_of(data)) == data
    assert driver.upload_size("up") is None
    with pytest.raises(UploadMissingError):
        driver.open_upload("up")


def test_an_upload_id_is_created_once(node: Callable[[], StorageDriver]) -> None:
    driver = node()
    driver.create_upload("once")
    with pytest.raises(FileExistsError):
        node().create_upload("once")


@pytest.mark.parametrize("upload_id", ["", "a/b", "..", "x.state"])
def test_malformed_upload_ids_are_unknown(
    node: Callable[[], StorageDriver], upload_id: str
) -> None:
    driver = node()
    with pytest.raises(UploadMissingError):
        driver.open_upload(upload_id)
    assert driver.upload_size(upload_id) is None
    assert driver.upload_activity(upload_id) is None


def test_an_upload_is_busy_for_every_other_node(node: Callable[[], StorageDriver]) -> None:
    first, second = node(), node()
    first.create_upload("busy")
    writer = first.open_upload("busy")
    try:
        writer.write(b"abc")
        with pytest.raises(UploadBusyError):
            second.open_upload("busy")
        with pytest.raises(UploadBusyError):
            first.open_upload("busy")
        assert second.delete_upload_if_idle("busy") is False
    finally:
        writer.close()
    assert append(second, "busy", b"def") == 6
    assert second.delete_upload_if_idle("busy") is True
    assert first.upload_size("busy") is None


def test_chunked_upload_started_on_one_node_finishes_on_another(
    node: Callable[[], StorageDriver],
) -> None:
    first, second = node(), node()
    data = content(PART + 12345, seed=2)
    first.create_upload("moving")
    append(first, "moving", data[: PART // 2])
    append(second, "moving", data[PART // 2 : PART + 1])
    append(first, "moving", data[PART + 1 :])
    writer = second.open_upload("moving")
    try:
        saved = second.load_digest_state("moving")
        assert saved is not None
        assert saved[0] == len(data)
        hasher = hasher_for(second, "moving", writer)
        assert hasher.hexdigest() == digest_of(data).hex
        writer.commit(digest_of(data))
    finally:
        writer.close()
    assert read_blob(first, digest_of(data)) == data


def test_a_digest_state_for_other_bytes_is_never_used(
    node: Callable[[], StorageDriver],
) -> None:
    driver = node()
    driver.create_upload("state")
    append(driver, "state", b"first")
    # A state claimed for the stored size but not of the stored bytes (saved while nobody
    # writes): whatever the driver keeps, the digest the service rebuilds is the bytes'.
    driver.save_digest_state("state", 5, b"garbage")
    writer = driver.open_upload("state")
    try:
        assert (
            hasher_for(driver, "state", writer).hexdigest() == hashlib.sha256(b"first").hexdigest()
        )
    finally:
        writer.close()


def test_cancelled_upload_leaves_nothing(node: Callable[[], StorageDriver]) -> None:
    first, second = node(), node()
    first.create_upload("gone")
    append(first, "gone", content(PART + 7))
    second.delete_upload("gone")
    assert first.upload_size("gone") is None
    assert first.upload_activity("gone") is None
    assert list(first.list_uploads()) == []
    with pytest.raises(UploadMissingError):
        first.open_upload("gone")
    assert list(first.list_blobs()) == []


def test_uploads_are_listed_with_their_activity(node: Callable[[], StorageDriver]) -> None:
    driver = node()
    for upload_id in ("one", "two"):
        driver.create_upload(upload_id)
    append(driver, "two", b"data")
    listed = dict(node().list_uploads())
    assert set(listed) == {"one", "two"}
    assert all(isinstance(when, float) and when > 0 for when in listed.values())
    assert driver.upload_activity("two") == pytest.approx(listed["two"], abs=1)


def test_refused_digest_commits_nothing(node: Callable[[], StorageDriver]) -> None:
    """The upload service verifies before commit and deletes the session when it fails."""
    driver = node()
    data = content(PART + 3, seed=9)
    driver.create_upload("bad")
    append(driver, "bad", data)
    writer = driver.open_upload("bad")
    try:
        claimed = digest_of(b"something else")
        if hasher_for(driver, "bad", writer).hexdigest() != claimed.hex:
            driver.delete_upload("bad")
    finally:
        writer.close()
    assert list(driver.list_blobs()) == []
    assert driver.blob_size(digest_of(data)) is None
    assert list(driver.list_uploads()) == []


# -- a node that dies in the middle of an upload

_CRASHING_NODE = """
import json, sys, time
from tests.registry.test_storage_contract import driver_from
spec, upload_id, data_size = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
from tests.registry.test_storage_contract import content
data = content(data_size, seed=4)
driver = driver_from(spec)
writer = driver.open_upload(upload_id)
start = writer.size
for offset in range(start, data_size, 1 << 16):
    writer.write(data[offset : offset + (1 << 16)])
print("written", flush=True)
time.sleep(600)
"""


def test_a_node_killed_mid_upload_leaves_a_session_another_node_finishes(
    spec: Spec, node: Callable[[], StorageDriver]
) -> None:
    survivor = node()
    data = content(3 * PART, seed=4)
    survivor.create_upload("crash")
    append(survivor, "crash", data[: PART + 99])
    child = spawn(
        [sys.executable, "-c", _CRASHING_NODE, json.dumps(spec), "crash", str(2 * PART)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"written\n"
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    finally:
        kill_group(child)

    def reopened() -> Any:
        try:
            return survivor.open_upload("crash")
        except UploadBusyError:
            return None

    writer = wait_until(reopened, 30, "the dead node's lease to end")
    try:
        # Whatever the dead node stored is a prefix of the data; the session goes on from it.
        size = writer.size
        assert PART + 99 <= size <= 2 * PART
        hasher = hasher_for(survivor, "crash", writer)
        rest = data[size:]
        writer.write(rest)
        hasher.update(rest)
        assert hasher.hexdigest() == digest_of(data).hex
        writer.commit(digest_of(data))
    finally:
        writer.close()
    assert read_blob(node(), digest_of(data)) == data
    assert list(survivor.list_uploads()) == []


# S3 only: the filesystem driver's flock is held as long as the process lives, so there is no
# lease to lose.
@pytest.mark.parametrize("spec", ["s3"], indirect=True)
def test_a_paused_node_that_lost_its_lease_cannot_store(
    spec: Spec, node: Callable[[], StorageDriver]
) -> None:
    survivor = node()
    data = content(PART + 500, seed=5)
    survivor.create_upload("paused")
    child = spawn(
        [sys.executable, "-c", _CRASHING_NODE.replace("time.sleep(600)", _CLOSE_ON_INPUT),
         json.dumps(spec), "paused", str(PART + 100)],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stdin=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert child.stdout is not None
        assert child.stdin is not None
        assert child.stdout.readline() == b"written\n"
        os.killpg(child.pid, signal.SIGSTOP)

        def taken_over() -> Any:
            try:
                return survivor.open_upload("paused")
            except UploadBusyError:
                return None

        writer = wait_until(taken_over, 30, "the paused node's lease to expire")
        try:
            assert writer.size == 0
            writer.write(data)
        finally:
            writer.close()
        os.killpg(child.pid, signal.SIGCONT)
        child.stdin.write(b"close\n")
        child.stdin.flush()
        assert child.stdout.readline() == b"refused\n"
        child.wait(30)
    finally:
        kill_group(child)
    assert survivor.upload_size("paused") == len(data)
    writer = survivor.open_upload("paused")
    try:
        assert b"".join(writer.read_all()) == data
    finally:
        writer.close()


_CLOSE_ON_INPUT = """
sys.stdin.readline()
from moorage.storage.base import UploadBusyError
try:
    writer.close()
    print("stored", flush=True)
except UploadBusyError:
    print("refused", flush=True)
"""


# -- serving blobs kept in S3 (redirect, or streamed through the node)


@pytest.mark.parametrize("redirect", [False, True])
def test_blobs_in_s3_pull_whole_and_in_ranges(
    s3_server: S3Server, tmp_path: Path, redirect: bool
) -> None:
    import httpx

    from tests.support.auth import RegistryAuth
    from tests.support.oci import push_blob_chunked
    from tests.support.server import RegistryProcess

    bucket = s3_server.create_bucket(f"serve-{os.urandom(6).hex()}")
    environment = {
        "MOORAGE_STORAGE": "s3",
        "MOORAGE_S3_BUCKET": bucket,
        "MOORAGE_S3_ENDPOINT": s3_server.endpoint,
        "MOORAGE_S3_ACCESS_KEY": s3_server.access_key,
        "MOORAGE_S3_SECRET_KEY": s3_server.secret_key,
        "MOORAGE_S3_REDIRECT": "true" if redirect else "false",
        "MOORAGE_S3_PRESIGN_SECONDS": "60",
    }
    data = content(PART + 4321, seed=11)
    with (
        RegistryProcess(tmp_path / "data", env=environment).start() as server,
        httpx.Client(base_url=server.url, timeout=60, auth=RegistryAuth()) as client,
    ):
        digest = push_blob_chunked(client, "t/s3-blobs", data, 1 << 20)
        url = f"/v2/t/s3-blobs/blobs/{digest}"
        head = client.head(url)
        assert head.status_code == 200
        assert head.headers["Content-Length"] == str(len(data))
        assert head.headers["Docker-Content-Digest"] == digest
        first = client.get(url)
        if redirect:
            assert first.status_code == 307
            assert first.headers["Location"].startswith(s3_server.endpoint)
            assert s3_server.secret_key not in first.headers["Location"]
        whole = client.get(url, follow_redirects=True)
        assert whole.status_code == 200
        assert whole.content == data
        assert digest_of(whole.content) == Digest.parse(digest)
        ranged = client.get(url, headers={"Range": "bytes=100-199"}, follow_redirects=True)
        assert ranged.status_code == 206
        assert ranged.content == data[100:200]
        assert s3_server.secret_key not in server.logs()


# -- the upload service over each driver, two nodes sharing one metadata database


def _upload_services(spec: Spec, tmp_path: Path) -> tuple[Any, Any, Callable[[], None]]:
    from datetime import timedelta

    from moorage.metadata.database import make_engine, migrate
    from moorage.metadata.registry.store import MetadataStore
    from moorage.services.events import EventBus
    from moorage.services.registry.uploads import UploadIds, UploadLimits, UploadService
    from moorage.services.threads import Threads

    engine = make_engine(f"sqlite+pysqlite:///{tmp_path / 'moorage.db'}", pool_size=2)
    migrate(engine)
    metadata = MetadataStore(engine)
    threads = Threads(4)
    services = [
        UploadService(
            driver_from(spec),
            metadata,
            threads,
            EventBus(),
            UploadLimits(1 << 30, timedelta(hours=1)),
            UploadIds(lambda: b"k" * 32),
        )
        for _ in range(2)
    ]

    def close() -> None:
        threads.shutdown()
        metadata.close()

    return services[0], services[1], close


async def _body(data: bytes, step: int = 1 << 16) -> Any:
    for start in range(0, len(data), step):
        yield data[start : start + step]


def test_upload_service_moves_between_nodes_and_refuses_a_wrong_digest(
    spec: Spec, tmp_path: Path
) -> None:
    import asyncio

    from moorage.domain.errors import ErrorCode, RegistryError
    from moorage.domain.events import Actor

    node_a, node_b, close = _upload_services(spec, tmp_path)
    actor = Actor("admin", "user", id=1)
    data = content(PART + 777, seed=21)
    half = len(data) // 2
    storage = driver_from(spec)

    async def scenario() -> None:
        good = await node_a.start("t/app", actor)
        assert await node_a.append("t/app", good, None, half, _body(data[:half]), actor) == half
        size = await node_b.finish(
            "t/app", good, digest_of(data), None, len(data) - half, _body(data[half:]), actor
        )
        assert size == len(data)

        bad = await node_b.start("t/app", actor)
        await node_b.append("t/app", bad, None, half, _body(data[:half]), actor)
        claimed = digest_of(data[:half] + b"x" * (len(data) - half))
        with pytest.raises(RegistryError) as refused:
            await node_a.finish(
                "t/app", bad, claimed, None, len(data) - half, _body(data[half:]), actor
            )
        assert refused.value.code is ErrorCode.DIGEST_INVALID

    try:
        asyncio.run(scenario())
    finally:
        close()
    assert read_blob(storage, digest_of(data)) == data
    assert list(storage.list_blobs()) == [digest_of(data)]
    assert list(storage.list_uploads()) == []


def test_two_servers_on_one_bucket_continue_each_others_uploads(
    s3_server: S3Server, tmp_path: Path
) -> None:
    """Two `moorage serve` processes (one database file, one bucket): a chunked upload opened
    on one, continued and finished on the other, pulled from both."""
    import httpx

    from tests.support.auth import RegistryAuth
    from tests.support.oci import patch_chunk, start_upload, with_digest
    from tests.support.server import RegistryProcess

    bucket = s3_server.create_bucket(f"nodes-{os.urandom(6).hex()}")
    environment = {
        "MOORAGE_STORAGE": "s3",
        "MOORAGE_S3_BUCKET": bucket,
        "MOORAGE_S3_ENDPOINT": s3_server.endpoint,
        "MOORAGE_S3_ACCESS_KEY": s3_server.access_key,
        "MOORAGE_S3_SECRET_KEY": s3_server.secret_key,
    }
    data = content(PART + 54321, seed=31)
    cut = PART // 2 + 3
    data_dir = tmp_path / "data"
    with (
        RegistryProcess(data_dir, env=environment).start() as node_a,
        RegistryProcess(data_dir, env=environment).start() as node_b,
        httpx.Client(base_url=node_a.url, timeout=60, auth=RegistryAuth()) as on_a,
        httpx.Client(base_url=node_b.url, timeout=60, auth=RegistryAuth()) as on_b,
    ):
        location = start_upload(on_a, "t/nodes")
        first = patch_chunk(on_a, location, data[:cut], 0)
        assert first.status_code == 202, first.text
        path = first.headers["Location"]
        status = on_b.get(path)
        assert status.status_code == 204
        assert status.headers["Range"] == f"0-{cut - 1}"
        second = patch_chunk(on_b, path, data[cut:], cut)
        assert second.status_code == 202, second.text
        done = on_a.put(with_digest(second.headers["Location"], str(digest_of(data))))
        assert done.status_code == 201, done.text
        for client in (on_a, on_b):
            pulled = client.get(f"/v2/t/nodes/blobs/{digest_of(data)}")
            assert pulled.status_code == 200
            assert pulled.content == data


# -- configuration


def test_s3_settings_need_a_bucket_and_never_show_the_secret(tmp_path: Path) -> None:
    from moorage.config import ConfigError, load_settings

    with pytest.raises(ConfigError, match="s3_bucket"):
        load_settings(environ={"MOORAGE_STORAGE": "s3"})
    settings = load_settings(
        environ={
            "MOORAGE_STORAGE": "s3",
            "MOORAGE_S3_BUCKET": "b",
            "MOORAGE_S3_SECRET_KEY": "very-secret-value",
        }
    )
    assert "very-secret-value" not in repr(settings)
    assert "very-secret-value" not in str(settings.model_dump())
    assert settings.resolved_s3_secret_key() == "very-secret-value"
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-a-file\n")
    from_file = load_settings(
        environ={
            "MOORAGE_STORAGE": "s3",
            "MOORAGE_S3_BUCKET": "b",
            "MOORAGE_S3_SECRET_KEY_FILE": str(secret_file),
        }
    )
    assert from_file.resolved_s3_secret_key() == "from-a-file"
    assert from_file.s3_redirect is False


def test_the_factory_builds_the_configured_driver(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from moorage.config import load_settings
    from moorage.storage.factory import make_storage

    filesystem = make_storage(load_settings(environ={"MOORAGE_DATA_DIR": str(tmp_path)}))
    assert isinstance(filesystem, FilesystemStorage)
    # No keys in the settings: boto3's standard AWS environment variables are used.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    bucket = s3_server.create_bucket(f"factory-{os.urandom(6).hex()}")
    driver = make_storage(
        load_settings(
            environ={
                "MOORAGE_STORAGE": "s3",
                "MOORAGE_S3_BUCKET": bucket,
                "MOORAGE_S3_ENDPOINT": s3_server.endpoint,
                "MOORAGE_S3_PREFIX": "team/",
            }
        )
    )
    assert isinstance(driver, S3Storage)
    digest = store_blob(driver, "factory", b"through the factory")
    assert read_blob(driver, digest) == b"through the factory"
    assert driver.blob_url(digest, 60) is not None
    assert f"/{bucket}/team/blobs/sha256/{digest.hex[:2]}/{digest.hex}" in str(
        driver.blob_url(digest, 60)
    )
