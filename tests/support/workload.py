"""A bounded registry workload for the garbage-collection stress tests: eight clients (threads,
one httpx connection pool each) push, re-push, mount, tag, re-tag, delete and pull against a
real server or a two-node deployment, and keep a ledger of what must exist afterwards.

Ownership keeps the ledger exact without locking the registry: every manifest and every tag
belongs to the client that made it (its config names the run, the client and a counter), so no
other client moves or deletes it. Layers are where clients meet: a pool of shared layers goes
into images of every client and every repository, so one client's delete and another's push
race on the same blob links, which is what a concurrent garbage collector must survive.

Failures a concurrent GC may legitimately cause are retried the way a registry client would:
a mount refused (the client uploads instead), MANIFEST_BLOB_UNKNOWN because a blob was
collected between its HEAD and the manifest PUT (upload again, PUT again), an upload refused
while its blob is being deleted. Requests cut by a node that died (haproxy answers 502/503,
or the connection drops) are retried and counted as interruptions. Everything else is a
failure, recorded with the operation; the tests fail on any.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.support.auth import RegistryAuth

CLIENTS = 8
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
# The empty config of every artifact: one blob that every referrer of every client shares.
EMPTY_CONFIG = b"{}"
SIGNATURE_TYPE = "application/vnd.example.stress.signature"
SHARED_LAYERS = 12
# A manifest push is tried this often when its blobs keep disappearing before the PUT.
PUSH_ATTEMPTS = 6
# A request cut by a dying node (or refused by haproxy while no node passes its health
# check) is sent again after a pause, for this long.
INTERRUPTION_WINDOW = 120.0
INTERRUPTION_PAUSE = 0.25
# What a blob upload may answer while a concurrent GC deletes the same blob (the commit-time
# state check of the contract refuses it); the client uploads again.
RETRYABLE_UPLOAD_STATUSES = frozenset({409, 503})
# haproxy's answers for a request whose node went away.
PROXY_OUTAGE_STATUSES = frozenset({502, 503, 504})

# Operation weights: pushes dominate so the registry grows while deletes make garbage.
OPERATIONS = {
    "push": 26,
    "repush": 8,
    "mount": 10,
    "index": 5,
    "referrer": 5,
    "tag": 8,
    "retag": 6,
    "untag": 6,
    "delete": 14,
    "pull": 22,
}


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Unexpected(Exception):
    """A response no legitimate race explains."""


@dataclass(frozen=True)
class Image:
    """A manifest with the content of every blob it references (config first); an index
    names its child manifests, a referrer (an artifact) its subject."""

    body: bytes
    blobs: tuple[tuple[str, bytes], ...]
    media_type: str = OCI_MANIFEST
    children: tuple[str, ...] = ()
    subject: str | None = None

    @property
    def digest(self) -> str:
        return sha256(self.body)

    @property
    def blob_digests(self) -> frozenset[str]:
        return frozenset(digest for digest, _ in self.blobs)


@dataclass
class Ledger:
    """What the workload left in the registry: manifests per repository, tags, what it deleted
    (and did not push again), and every blob digest it ever uploaded."""

    manifests: dict[tuple[str, str], Image] = field(default_factory=dict)
    tags: dict[tuple[str, str], str] = field(default_factory=dict)
    deleted: set[tuple[str, str]] = field(default_factory=set)
    uploaded: set[str] = field(default_factory=set)

    @property
    def repositories(self) -> set[str]:
        return {repository for repository, _ in (*self.manifests, *self.deleted)}

    def referrers(self, repository: str, subject: str) -> set[str]:
        return {
            digest
            for (repo, digest), image in self.manifests.items()
            if repo == repository and image.subject == subject
        }

    def parents(self, repository: str, child: str) -> set[str]:
        """Indexes of the repository that list `child` (the registry refuses to delete it)."""
        return {
            digest
            for (repo, digest), image in self.manifests.items()
            if repo == repository and child in image.children
        }

    def untagged(self) -> set[tuple[str, str]]:
        tagged = {(repository, digest) for (repository, _), digest in self.tags.items()}
        return set(self.manifests) - tagged

    def merge(self, other: Ledger) -> None:
        self.manifests.update(other.manifests)
        self.tags.update(other.tags)
        self.deleted |= other.deleted
        self.uploaded |= other.uploaded


@dataclass
class WorkloadResult:
    ledger: Ledger
    failures: list[str]
    # Retries and refusals by kind, operations done by kind, interruptions (see the module).
    stats: Counter[str]
    seconds: float
    # The first few interrupted requests of each client, for the report of a failed test.
    interruptions: list[str] = field(default_factory=list)

    @property
    def operations(self) -> int:
        return sum(count for kind, count in self.stats.items() if kind.startswith("op:"))


@dataclass
class Workload:
    """Parameters of one run; `run()` drives the clients and returns their merged ledger."""

    url: str
    seconds: float
    operations: int
    seed: int = 13
    run_id: str = "run"
    clients: int = CLIENTS
    # Repositories in two projects, so mounts also cross projects.
    repositories: tuple[str, ...] = ()
    stop: threading.Event = field(default_factory=threading.Event)
    # Operations finished so far by all clients (for a test that acts in the middle of a run).
    completed: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def count_operation(self) -> None:
        with self._lock:
            self.completed += 1

    def __post_init__(self) -> None:
        if not self.repositories:
            self.repositories = tuple(
                f"stress-{self.run_id}-{project}/app{index}"
                for project, count in (("a", 3), ("b", 2))
                for index in range(count)
            )

    def shared_layer(self, index: int) -> tuple[str, bytes]:
        rng = random.Random(f"{self.seed}/shared/{index}")
        data = f"{self.run_id}/shared/{index}/".encode() + rng.randbytes(rng.randint(64, 1024))
        return sha256(data), data

    def run(self) -> WorkloadResult:
        started = time.monotonic()
        deadline = started + self.seconds
        per_client = max(1, self.operations // self.clients)
        workers = [_Client(self, number, deadline, per_client) for number in range(self.clients)]
        with ThreadPoolExecutor(self.clients, thread_name_prefix="stress-client") as pool:
            for future in [pool.submit(worker.run) for worker in workers]:
                future.result()
        ledger, failures, interruptions, stats = Ledger(), [], [], Counter[str]()
        for worker in workers:
            ledger.merge(worker.ledger)
            failures.extend(worker.failures)
            interruptions.extend(worker.interruption_samples)
            stats.update(worker.stats)
        return WorkloadResult(ledger, failures, stats, time.monotonic() - started, interruptions)


class _Client:
    def __init__(self, workload: Workload, number: int, deadline: float, budget: int) -> None:
        self.workload = workload
        self.number = number
        self.deadline = deadline
        self.budget = budget
        self.rng = random.Random(f"{workload.seed}/client/{number}")
        self.ledger = Ledger()
        self.failures: list[str] = []
        self.stats: Counter[str] = Counter()
        self.interruption_samples: list[str] = []
        self.counter = 0
        self.http = httpx.Client(
            base_url=workload.url, auth=RegistryAuth(), timeout=120, follow_redirects=True
        )
        self.actions: dict[str, Callable[[], None]] = {
            "push": self.push_new,
            "repush": self.repush,
            "mount": self.mount_copy,
            "index": self.push_index,
            "referrer": self.push_referrer,
            "tag": self.tag,
            "retag": self.retag,
            "untag": self.untag,
            "delete": self.delete_manifest,
            "pull": self.pull,
        }

    def run(self) -> None:
        kinds, weights = list(OPERATIONS), list(OPERATIONS.values())
        try:
            for _ in range(self.budget):
                if time.monotonic() > self.deadline or self.workload.stop.is_set():
                    break
                kind = self.rng.choices(kinds, weights)[0] if self.ledger.manifests else "push"
                self.stats[f"op:{kind}"] += 1
                try:
                    self.actions[kind]()
                except Exception as error:  # any of them fails the test, with the others
                    self.failures.append(f"client {self.number} {kind}: {error!r}")
                self.workload.count_operation()
        finally:
            self.http.close()

    # -- content

    def unique(self, what: str) -> bytes:
        self.counter += 1
        return f"{self.workload.run_id}/c{self.number}/{what}/{self.counter}/".encode()

    def new_image(self) -> Image:
        config = json.dumps(
            {"architecture": "amd64", "os": "linux", "stress": self.unique("config").decode()}
        ).encode()
        layers = []
        for _ in range(self.rng.randint(1, 3)):
            if self.rng.random() < 0.5:
                layers.append(self.workload.shared_layer(self.rng.randrange(SHARED_LAYERS)))
            else:
                data = self.unique("layer") + self.rng.randbytes(self.rng.randint(32, 2048))
                layers.append((sha256(data), data))
        layers = list(dict(layers).items())  # a layer once per manifest
        document = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
            "layers": [
                {"mediaType": OCI_LAYER, "digest": digest, "size": len(data)}
                for digest, data in layers
            ],
        }
        body = json.dumps(document, separators=(",", ":")).encode()
        return Image(body, ((sha256(config), config), *layers))

    def pick_own(
        self, repository: str | None = None, *, plain: bool = False
    ) -> tuple[str, str] | None:
        """One of this client's manifests (`plain`: an image, neither index nor referrer)."""
        keys = sorted(
            key
            for key, image in self.ledger.manifests.items()
            if repository in (None, key[0])
            and not (plain and (image.media_type != OCI_MANIFEST or image.subject))
        )
        return self.rng.choice(keys) if keys else None

    def descriptor(self, image: Image) -> dict[str, Any]:
        return {"mediaType": image.media_type, "digest": image.digest, "size": len(image.body)}

    def new_index(self, children: list[Image]) -> Image:
        document = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {**self.descriptor(child), "platform": {"os": "linux", "architecture": arch}}
                for child, arch in zip(children, ("amd64", "arm64"), strict=False)
            ],
            "annotations": {"stress": self.unique("index").decode()},
        }
        body = json.dumps(document, separators=(",", ":")).encode()
        return Image(body, (), OCI_INDEX, tuple(child.digest for child in children))

    def new_referrer(self, subject: Image) -> Image:
        """A signature-like artifact: the shared empty config, one unique small layer."""
        payload = self.unique("signature") + self.rng.randbytes(64)
        document = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": SIGNATURE_TYPE,
            "config": {"mediaType": OCI_EMPTY, "digest": sha256(EMPTY_CONFIG), "size": 2},
            "layers": [
                {"mediaType": SIGNATURE_TYPE, "digest": sha256(payload), "size": len(payload)}
            ],
            "subject": self.descriptor(subject),
        }
        body = json.dumps(document, separators=(",", ":")).encode()
        blobs = ((sha256(EMPTY_CONFIG), EMPTY_CONFIG), (sha256(payload), payload))
        return Image(body, blobs, subject=subject.digest)

    def new_tag(self) -> str:
        self.counter += 1
        return f"c{self.number}-{self.counter}"

    # -- HTTP with retries for requests cut by a dying node

    def send(self, method: str, url: str, **kwargs: Any) -> tuple[httpx.Response, bool]:
        """The response, and whether an earlier attempt was cut off (so it may have acted).
        Cut-off attempts are sent again, with a pause, for up to INTERRUPTION_WINDOW."""
        interrupted = False
        deadline = time.monotonic() + INTERRUPTION_WINDOW
        while True:
            try:
                response = self.http.request(method, url, **kwargs)
            except httpx.TransportError as error:
                kind, what = "connection", type(error).__name__
            else:
                if _from_proxy(response):
                    kind, what = f"proxy-{response.status_code}", response.text[:100]
                elif response.status_code == 401:
                    # The token service sat on a node that went away mid-challenge.
                    kind, what = "401", response.text[:100]
                else:
                    return response, interrupted
            interrupted = True
            self.interrupted(kind, f"{method} {url}: {what}")
            if time.monotonic() > deadline:
                raise Unexpected(f"{method} {url}: interrupted for {INTERRUPTION_WINDOW:g}s")
            time.sleep(INTERRUPTION_PAUSE)

    def interrupted(self, kind: str, what: str) -> None:
        self.stats["interruptions"] += 1
        self.stats[f"interrupted:{kind}"] += 1
        if len(self.interruption_samples) < 5:
            self.interruption_samples.append(what)

    # -- blobs

    def blob_exists(self, repository: str, digest: str) -> bool:
        response, _ = self.send("HEAD", f"/v2/{repository}/blobs/{digest}")
        if response.status_code not in (200, 404):
            raise Unexpected(f"HEAD blob {digest} in {repository}: {response.status_code}")
        return response.status_code == 200

    def upload(self, repository: str, digest: str, data: bytes) -> None:
        for _ in range(PUSH_ATTEMPTS):
            response, _ = self.send(
                "POST",
                f"/v2/{repository}/blobs/uploads/",
                params={"digest": digest},
                content=data,
                headers={"Content-Type": "application/octet-stream"},
            )
            if response.status_code == 201:
                self.ledger.uploaded.add(digest)
                return
            if response.status_code not in RETRYABLE_UPLOAD_STATUSES:
                raise Unexpected(f"upload {digest} to {repository}: {_describe(response)}")
            self.stats["retry:upload-refused"] += 1
        raise Unexpected(f"upload {digest} to {repository} refused {PUSH_ATTEMPTS} times")

    def mount(self, repository: str, source: str, digest: str, data: bytes) -> None:
        response, _ = self.send(
            "POST", f"/v2/{repository}/blobs/uploads/", params={"mount": digest, "from": source}
        )
        if response.status_code == 201:
            self.stats["mounted"] += 1
            return
        if response.status_code != 202:
            raise Unexpected(f"mount {digest} {source} -> {repository}: {_describe(response)}")
        # Refused (the source lost it meanwhile, or GC is deleting it): upload into the session.
        self.stats["retry:mount-refused"] += 1
        location = response.headers["Location"]
        separator = "&" if "?" in location else "?"
        response, _ = self.send(
            "PUT",
            f"{location}{separator}digest={digest}",
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        if response.status_code == 201:
            self.ledger.uploaded.add(digest)
        elif response.status_code in RETRYABLE_UPLOAD_STATUSES:
            self.stats["retry:upload-refused"] += 1
            self.upload(repository, digest, data)
        else:
            raise Unexpected(f"upload after refused mount of {digest}: {_describe(response)}")

    # -- manifests

    def push(
        self, repository: str, image: Image, tag: str | None, mount_from: str | None = None
    ) -> None:
        """Make sure every blob is in `repository` (HEAD, then mount or upload what is not),
        then PUT the manifest; again from the blobs while the PUT finds one missing."""
        force = False
        for _ in range(PUSH_ATTEMPTS):
            for digest, data in image.blobs:
                if not force and self.blob_exists(repository, digest):
                    continue
                if mount_from is not None and not force:
                    self.mount(repository, mount_from, digest, data)
                else:
                    self.upload(repository, digest, data)
            response, _ = self.send(
                "PUT",
                f"/v2/{repository}/manifests/{tag or image.digest}",
                content=image.body,
                headers={"Content-Type": image.media_type},
            )
            if response.status_code == 201:
                returned = response.headers.get("Docker-Content-Digest")
                if returned != image.digest:
                    raise Unexpected(f"pushed {image.digest}, registry says {returned}")
                key = (repository, image.digest)
                self.ledger.manifests[key] = image
                self.ledger.deleted.discard(key)
                if tag is not None:
                    self.ledger.tags[(repository, tag)] = image.digest
                return
            if _error_code(response) != "MANIFEST_BLOB_UNKNOWN":
                raise Unexpected(f"PUT manifest {image.digest}: {_describe(response)}")
            self.stats["retry:manifest-blob-unknown"] += 1
            force = True
        raise Unexpected(f"manifest {image.digest}: blobs kept vanishing ({PUSH_ATTEMPTS} tries)")

    def push_new(self) -> None:
        repository = self.rng.choice(self.workload.repositories)
        tag = self.new_tag() if self.rng.random() < 0.75 else None
        self.push(repository, self.new_image(), tag)

    def repush(self) -> None:
        key = self.pick_own()
        assert key is not None
        tags = [tag for (repo, tag), d in self.ledger.tags.items() if (repo, d) == key]
        self.push(key[0], self.ledger.manifests[key], self.rng.choice(sorted(tags) or [None]))

    def mount_copy(self) -> None:
        key = self.pick_own(plain=True)
        if key is None:
            return self.push_new()
        source = key[0]
        target = self.rng.choice([r for r in self.workload.repositories if r != source])
        self.push(target, self.ledger.manifests[key], self.new_tag(), mount_from=source)

    def push_index(self) -> None:
        key = self.pick_own(plain=True)
        if key is None:
            return self.push_new()
        repository = key[0]
        others = [k for k in [self.pick_own(repository, plain=True)] if k and k != key]
        children = [self.ledger.manifests[k] for k in (key, *others)]
        tag = self.new_tag() if self.rng.random() < 0.75 else None
        self.push(repository, self.new_index(children), tag)

    def push_referrer(self) -> None:
        key = self.pick_own(plain=True)
        if key is None:
            return self.push_new()
        repository, _ = key
        self.push(repository, self.new_referrer(self.ledger.manifests[key]), None)

    def tag(self) -> None:
        key = self.pick_own()
        assert key is not None
        self.push(key[0], self.ledger.manifests[key], self.new_tag())

    def retag(self) -> None:
        tags = sorted(self.ledger.tags)
        if not tags:
            return self.tag()
        repository, tag = self.rng.choice(tags)
        key = self.pick_own(repository)
        assert key is not None
        self.push(repository, self.ledger.manifests[key], tag)

    def untag(self) -> None:
        tags = sorted(self.ledger.tags)
        if not tags:
            return self.pull()
        repository, tag = self.rng.choice(tags)
        response, interrupted = self.send("DELETE", f"/v2/{repository}/manifests/{tag}")
        if not (response.status_code == 202 or (interrupted and response.status_code == 404)):
            raise Unexpected(f"DELETE tag {repository}:{tag}: {_describe(response)}")
        del self.ledger.tags[(repository, tag)]

    def delete_manifest(self) -> None:
        """Delete one manifest that no index of its repository lists (the registry refuses
        those), with its referrers first, as a client deleting an image with its signatures."""
        keys = sorted(k for k in self.ledger.manifests if not self.ledger.parents(*k))
        if not keys:
            return self.push_new()
        repository, digest = self.rng.choice(keys)
        for referrer in sorted(self.ledger.referrers(repository, digest)):
            self.delete(repository, referrer)
        self.delete(repository, digest)

    def delete(self, repository: str, digest: str) -> None:
        key = (repository, digest)
        response, interrupted = self.send("DELETE", f"/v2/{repository}/manifests/{digest}")
        if not (response.status_code == 202 or (interrupted and response.status_code == 404)):
            raise Unexpected(f"DELETE manifest {repository}@{digest}: {_describe(response)}")
        del self.ledger.manifests[key]
        self.ledger.deleted.add(key)
        for tag_key in [k for k, d in self.ledger.tags.items() if (k[0], d) == key]:
            del self.ledger.tags[tag_key]

    def pull(self) -> None:
        key = self.pick_own()
        assert key is not None
        repository, digest = key
        tags = sorted(t for (r, t), d in self.ledger.tags.items() if (r, d) == key)
        reference = self.rng.choice(tags) if tags and self.rng.random() < 0.5 else digest
        response, _ = self.send(
            "GET",
            f"/v2/{repository}/manifests/{reference}",
            headers={"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"},
        )
        if response.status_code != 200 or sha256(response.content) != digest:
            raise Unexpected(f"pull {repository}:{reference}: {_describe(response)}")
        for blob in self.ledger.manifests[key].blob_digests:
            response, _ = self.send("GET", f"/v2/{repository}/blobs/{blob}")
            if response.status_code != 200 or sha256(response.content) != blob:
                raise Unexpected(f"pull blob {blob} of {repository}: {_describe(response)}")


def _from_proxy(response: httpx.Response) -> bool:
    """haproxy's own answer (no node took the request): every Moorage response names it."""
    return (
        response.status_code in PROXY_OUTAGE_STATUSES
        and response.headers.get("Server") != "moorage"
    )


def _error_code(response: httpx.Response) -> str | None:
    try:
        errors = response.json()["errors"]
        return str(errors[0]["code"])
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def _describe(response: httpx.Response) -> str:
    return f"{response.status_code} {response.text[:300]!r}"
