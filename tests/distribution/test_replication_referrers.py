"""Replication carries the supply chain: referrers (signatures, SBOMs, attestations and their own
referrers) and cosign's tags travel with the images a rule copies, to and from a second Moorage
(Referrers API) and Debian's docker-registry (referrers tag schema); scheduled runs mirror
deletions of what a rule copied, and nothing else. Every server is a real process started here;
everything asynchronous is polled with a deadline.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from tests.distribution.test_replication import (
    ACCEPT,
    add_endpoint,
    add_rule,
    executions,
    finished,
    remote_digest,
    run_rule,
    tasks,
)
from tests.support.api import PASSWORD, api_client, create_project, create_user, eventually, unique
from tests.support.auth import ADMIN_PASSWORD, ADMIN_USER, RegistryAuth
from tests.support.distribution import Distribution
from tests.support.images import Blob
from tests.support.oci import (
    OCI_INDEX,
    OCI_MANIFEST,
    Pushed,
    digest_of,
    encode,
    push_image,
    push_manifest,
)
from tests.support.server import RegistryProcess
from tests.support.signing import (
    dsse_bundle,
    ec_key,
    legacy_signature,
    message_signature_bundle,
    public_pem,
    push_bundle,
    push_legacy_signatures,
    signature_tag,
)

pytestmark = pytest.mark.tools("docker-registry")

SBOM_TYPE = "application/spdx+json"
ATTESTATION_TYPE = "application/vnd.in-toto+json"
PAGE = 4  # the second Moorage's page size: its referrers lists come in several pages


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    with RegistryProcess(
        tmp_path_factory.mktemp("chain") / "data",
        env={
            "MOORAGE_REPLICATION_RETRY_BASE_SECONDS": "1",
            "MOORAGE_REPLICATION_RETRY_MAX_SECONDS": "2",
            "MOORAGE_REPLICATION_MAX_ATTEMPTS": "3",
        },
    ).start() as process:
        yield process


@pytest.fixture(scope="module")
def second(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    with RegistryProcess(
        tmp_path_factory.mktemp("chain-second") / "data",
        env={"MOORAGE_MAX_PAGE_SIZE": str(PAGE)},
    ).start() as process:
        yield process


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Distribution]:
    with Distribution(tmp_path_factory.mktemp("chain-target")).start() as registry:
        yield registry


@pytest.fixture
def registry(server: RegistryProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60, auth=RegistryAuth()) as http:
        yield http


def as_blob(pushed: Pushed) -> Blob:
    return Blob(pushed.media_type, pushed.body)


def referrer(client: httpx.Client, repository: str, subject: Pushed, artifact: str) -> Pushed:
    """A referrer of `subject` pushed by digest, as oras and cosign push them."""
    return push_image(client, repository, subject=subject, artifact_type=artifact)


def referrer_digests(client: httpx.Client, repository: str, digest: str) -> set[str]:
    response = client.get(f"/v2/{repository}/referrers/{digest}")
    assert response.status_code == 200, response.text
    return {entry["digest"] for entry in response.json()["manifests"]}


def tag_index(client: httpx.Client, repository: str, digest: str) -> dict[str, Any]:
    """The referrers tag schema's index for `digest` on Distribution."""
    response = client.get(
        f"/v2/{repository}/manifests/{digest.replace(':', '-')}", headers={"Accept": OCI_INDEX}
    )
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    assert document["mediaType"] == OCI_INDEX
    return document


def assert_complete(client: httpx.Client, repository: str, manifest: Pushed) -> None:
    """The manifest and each blob it names are there, byte for byte."""
    response = client.get(f"/v2/{repository}/manifests/{manifest.digest}", headers=ACCEPT)
    assert response.status_code == 200, response.text
    assert response.content == manifest.body
    assert_blobs(client, repository, manifest)


def assert_blobs(client: httpx.Client, repository: str, manifest: Pushed) -> None:
    document = json.loads(manifest.body)
    for descriptor in [document.get("config"), *document.get("layers", [])]:
        if descriptor is None:
            continue
        blob = client.get(f"/v2/{repository}/blobs/{descriptor['digest']}")
        assert blob.status_code == 200, descriptor
        assert digest_of(blob.content) == descriptor["digest"]


def the_task(admin: httpx.Client, run: dict[str, Any]) -> dict[str, Any]:
    found = tasks(admin, run["id"])
    assert len(found) == 1, found
    return found[0]


# -- to a second Moorage: its Referrers API, and its trust policy


def test_a_signed_image_passes_the_trust_policy_of_the_moorage_it_is_replicated_to(
    admin: httpx.Client, registry: httpx.Client, second: RegistryProcess
) -> None:
    key = ec_key()
    with api_client(second) as remote_admin:
        replica = create_project(remote_admin, "replica")
        pusher = create_user(remote_admin, "pusher")
        response = remote_admin.put(
            f"/projects/{replica}/members/user/{pusher}", json={"role": "maintainer"}
        )
        assert response.status_code == 200, response.text
        response = remote_admin.post(
            f"/projects/{replica}/trust-keys", json={"name": "ci-key", "pem": public_pem(key)}
        )
        assert response.status_code == 201, response.text
        response = remote_admin.put(
            f"/projects/{replica}/trust-policies",
            json={
                "rules": [{"verifiers": [{"name": "ci", "type": "cosign-key", "keys": ["ci-key"]}]}]
            },
        )
        assert response.status_code == 200, response.text
    project = create_project(admin, "signed")
    repository = f"{project}/app"
    image = push_image(registry, repository, "v1", layer_count=2)
    push_image(registry, repository, "v2")  # left out by the tag filter
    # cosign 2 (a `.sig` tag), cosign 3 (a bundle referrer), an SBOM, and an attestation of
    # the SBOM (a referrer of a referrer).
    push_legacy_signatures(
        registry, repository, image.digest, [legacy_signature(key, image.digest, repository)]
    )
    bundle = push_bundle(
        registry, repository, as_blob(image), message_signature_bundle(key, image.body)
    )
    sbom = referrer(registry, repository, image, SBOM_TYPE)
    attestation = referrer(registry, repository, sbom, ATTESTATION_TYPE)

    endpoint = add_endpoint(admin, second.url, kind="moorage", username=pusher, password=PASSWORD)
    rule = add_rule(
        admin,
        endpoint,
        repositories=[f"{project}/**"],
        tags=["v1"],
        destinationPrefix=replica,
        stripSegments=1,
    )
    run = run_rule(admin, rule)
    task = the_task(admin, run)
    assert run["status"] == "succeeded", task
    assert task["referrersCopied"] == 3

    destination = f"{replica}/app"
    with httpx.Client(
        base_url=second.url, timeout=60, auth=RegistryAuth(ADMIN_USER, ADMIN_PASSWORD)
    ) as remote:
        # The trust policy is in force: an unsigned image is refused...
        unsigned = push_image(remote, destination, "unsigned")
        refused = remote.get(f"/v2/{destination}/manifests/unsigned", headers=ACCEPT)
        assert refused.status_code == 403, unsigned.digest
        # ...and the replicated one, with its signatures, is pulled.
        pulled = remote.get(f"/v2/{destination}/manifests/v1", headers=ACCEPT)
        assert pulled.status_code == 200, pulled.text
        assert pulled.content == image.body
        assert remote_digest(remote, destination, "v2") is None
        assert remote_digest(remote, destination, signature_tag(image.digest)) is not None
        assert referrer_digests(remote, destination, image.digest) == {bundle, sbom.digest}
        assert referrer_digests(remote, destination, sbom.digest) == {attestation.digest}
        # Unsigned themselves, the SBOM and its attestation are not pulled past the policy;
        # their content is there.
        assert_blobs(remote, destination, sbom)
        assert_blobs(remote, destination, attestation)

    # A second run finds everything there and sends no manifest again.
    again = run_rule(admin, rule)
    assert again["status"] == "succeeded", tasks(admin, again["id"])
    assert the_task(admin, again)["blobsCopied"] == 0


def test_a_pull_follows_the_referrers_api_through_its_pages(
    admin: httpx.Client, registry: httpx.Client, second: RegistryProcess
) -> None:
    """The second Moorage pages its referrers lists by `PAGE`: many referrers arrive all."""
    with (
        httpx.Client(
            base_url=second.url, timeout=60, auth=RegistryAuth(ADMIN_USER, ADMIN_PASSWORD)
        ) as remote,
        api_client(second) as remote_admin,
    ):
        upstream = create_project(remote_admin, "upstream")
        repository = f"{upstream}/tool"
        image = push_image(remote, repository, "1.0")
        many = {referrer(remote, repository, image, SBOM_TYPE).digest for _ in range(PAGE * 3 + 1)}
        page = remote.get(f"/v2/{repository}/referrers/{image.digest}")
        assert len(page.json()["manifests"]) == PAGE
        assert "Link" in page.headers
    local = create_project(admin, "pulled")
    endpoint = add_endpoint(
        admin, second.url, kind="moorage", username=ADMIN_USER, password=ADMIN_PASSWORD
    )
    rule = add_rule(
        admin,
        endpoint,
        direction="pull",
        repositories=[repository],
        destinationPrefix=local,
        stripSegments=1,
    )
    run = run_rule(admin, rule)
    task = the_task(admin, run)
    assert run["status"] == "succeeded", task
    assert task["referrersCopied"] == len(many)
    assert referrer_digests(registry, f"{local}/tool", image.digest) == many


# -- to and from Distribution: the referrers tag schema


def test_referrers_reach_distribution_as_a_referrers_tag_index_that_keeps_foreign_entries(
    admin: httpx.Client, registry: httpx.Client, target: Distribution
) -> None:
    key = ec_key()
    project = create_project(admin, "todist")
    repository = f"{project}/app"
    image = push_image(registry, repository, "v1")
    signature = push_legacy_signatures(
        registry, repository, image.digest, [legacy_signature(key, image.digest, repository)]
    )
    bundle = push_bundle(
        registry, repository, as_blob(image), dsse_bundle(key, image.digest, repository)
    )
    sbom = referrer(registry, repository, image, SBOM_TYPE)
    attestation = referrer(registry, repository, sbom, ATTESTATION_TYPE)
    with target.client() as remote:
        # Another tool attached a referrer there already, listed in the referrers tag.
        foreign = push_image(remote, repository, subject=image, artifact_type="application/x-other")
        existing = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [foreign.descriptor(artifactType="application/x-other")],
        }
        push_manifest(
            remote, repository, encode(existing), OCI_INDEX, image.digest.replace(":", "-")
        )
    endpoint = add_endpoint(admin, target.url, kind="distribution")
    rule = add_rule(admin, endpoint, repositories=[f"{project}/**"], tags=["v1"])
    run = run_rule(admin, rule)
    task = the_task(admin, run)
    assert run["status"] == "succeeded", task

    with target.client() as remote:
        assert remote_digest(remote, repository, "v1") == image.digest
        assert remote_digest(remote, repository, signature_tag(image.digest)) == signature
        listed = tag_index(remote, repository, image.digest)["manifests"]
        by_digest = {entry["digest"]: entry for entry in listed}
        assert set(by_digest) == {foreign.digest, bundle, sbom.digest}
        assert by_digest[sbom.digest] == sbom.descriptor(artifactType=SBOM_TYPE)
        assert by_digest[foreign.digest]["artifactType"] == "application/x-other"
        nested = tag_index(remote, repository, sbom.digest)["manifests"]
        assert [entry["digest"] for entry in nested] == [attestation.digest]
        for manifest in (sbom, attestation):
            assert_complete(remote, repository, manifest)
        bundle_body = remote.get(f"/v2/{repository}/manifests/{bundle}", headers=ACCEPT)
        assert bundle_body.status_code == 200
        assert digest_of(bundle_body.content) == bundle

    # Running again changes nothing: the index is not rewritten with duplicates.
    assert run_rule(admin, rule)["status"] == "succeeded"
    with target.client() as remote:
        assert len(tag_index(remote, repository, image.digest)["manifests"]) == 3

    # And back: a pull from Distribution reads the referrers tag (it has no Referrers API).
    local = create_project(admin, "fromdist")
    pull = add_rule(
        admin,
        endpoint,
        direction="pull",
        repositories=[repository],
        tags=["v1"],
        destinationPrefix=local,
        stripSegments=1,
    )
    pulled = run_rule(admin, pull)
    assert pulled["status"] == "succeeded", tasks(admin, pulled["id"])
    mirror = f"{local}/app"
    assert referrer_digests(registry, mirror, image.digest) == {foreign.digest, bundle, sbom.digest}
    assert referrer_digests(registry, mirror, sbom.digest) == {attestation.digest}
    assert remote_digest(registry, mirror, signature_tag(image.digest)) == signature


def test_a_cycle_ends_and_an_index_brings_its_childrens_referrers(
    admin: httpx.Client, registry: httpx.Client, target: Distribution
) -> None:
    """An index that is a referrer of its own child is copied once; the run ends."""
    project = create_project(admin, "cycle")
    repository = f"{project}/multi"
    child = push_image(registry, repository)
    index_document = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [child.descriptor(platform={"os": "linux", "architecture": "amd64"})],
    }
    index = push_manifest(registry, repository, encode(index_document), OCI_INDEX, "v1")
    child_sbom = referrer(registry, repository, child, SBOM_TYPE)
    looped = {**index_document, "subject": child.descriptor(), "artifactType": "application/x-loop"}
    loop = push_manifest(registry, repository, encode(looped), OCI_INDEX)
    endpoint = add_endpoint(admin, target.url, kind="distribution")
    rule = add_rule(admin, endpoint, repositories=[f"{project}/**"], tags=["v1"])
    run = run_rule(admin, rule)
    task = the_task(admin, run)
    assert run["status"] == "succeeded", task
    assert task["referrersCopied"] == 2
    with target.client() as remote:
        assert remote_digest(remote, repository, "v1") == index.digest
        listed = {e["digest"] for e in tag_index(remote, repository, child.digest)["manifests"]}
        assert listed == {child_sbom.digest, loop.digest}
        assert_complete(remote, repository, child_sbom)


def test_an_event_rule_carries_signatures_pushed_later_and_restores_a_missing_subject(
    admin: httpx.Client, registry: httpx.Client, target: Distribution
) -> None:
    key = ec_key()
    project = create_project(admin, "later")
    repository = f"{project}/app"
    endpoint = add_endpoint(admin, target.url, kind="distribution")
    rule = add_rule(admin, endpoint, trigger="event", repositories=[f"{project}/**"], tags=["v1"])
    image = push_image(registry, repository, "v1")
    with target.client() as remote:
        eventually(
            lambda: polled_digest(remote, repository, "v1") == image.digest,
            timeout=60,
            what="the image to arrive",
        )
        eventually(
            lambda: all(
                run["status"] in ("succeeded", "failed", "partial")
                for run in executions(admin, rule)
            ),
            timeout=60,
            what="the first copy to finish",
        )
        # The image goes away at the target; then it is signed here.
        deleted = remote.delete(f"/v2/{repository}/manifests/{image.digest}")
        assert deleted.status_code == 202, deleted.text
        assert remote_digest(remote, repository, "v1") is None
    sbom = referrer(registry, repository, image, SBOM_TYPE)
    signature = push_legacy_signatures(
        registry, repository, image.digest, [legacy_signature(key, image.digest, repository)]
    )
    with target.client() as remote:
        eventually(
            lambda: polled_digest(remote, repository, signature_tag(image.digest)) == signature,
            timeout=60,
            what="the signature tag to arrive",
        )
        eventually(
            lambda: polled_digest(remote, repository, image.digest.replace(":", "-")) is not None,
            timeout=60,
            what="the referrers tag to arrive",
        )
        # Its subject was sent again first.
        assert remote_digest(remote, repository, "v1") == image.digest
        listed = tag_index(remote, repository, image.digest)["manifests"]
        assert sbom.digest in {entry["digest"] for entry in listed}
        assert_complete(remote, repository, sbom)
    for run in executions(admin, rule):
        state = finished(admin, run["id"])
        assert state["status"] == "succeeded", json.dumps([state, tasks(admin, run["id"])])


def polled_digest(client: httpx.Client, repository: str, reference: str) -> str | None:
    """`remote_digest` for polls of Distribution while it is written to: its filesystem driver
    rewrites a tag's link in place, so a read at that moment can answer 500."""
    response = client.head(f"/v2/{repository}/manifests/{reference}", headers=ACCEPT)
    if response.status_code == 404 or response.status_code >= 500:
        return None
    assert response.status_code == 200, response.text
    return response.headers["Docker-Content-Digest"]


# -- a source that answers garbage


class GarbageReferrers(BaseHTTPRequestHandler):
    """A registry of one image whose Referrers API answers something that is not JSON."""

    image: Pushed
    blobs: dict[str, bytes]

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        image = type(self).image
        if path == "/v2/":
            self._send(200, b"{}", {"Content-Type": "application/json"})
        elif path == "/v2/vendor/app/tags/list":
            self._send(200, encode({"name": "vendor/app", "tags": ["v1"]}), {})
        elif path in ("/v2/vendor/app/manifests/v1", f"/v2/vendor/app/manifests/{image.digest}"):
            headers = {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": image.digest}
            self._send(200, image.body, headers)
        elif path.startswith("/v2/vendor/app/blobs/") and path[21:] in type(self).blobs:
            self._send(200, type(self).blobs[path[21:]], {})
        elif path.startswith("/v2/vendor/app/referrers/"):
            self._send(200, b'{"manifests": "<html>oops', {"Content-Type": OCI_INDEX})
        else:
            self._send(404, b"", {})


def test_a_source_with_a_garbage_referrers_listing_fails_clearly_and_keeps_the_image(
    admin: httpx.Client, registry: httpx.Client
) -> None:
    config = encode({"architecture": "amd64", "os": "linux"})
    layer = b"layer of the garbage source"
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": digest_of(config),
            "size": len(config),
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": digest_of(layer),
                "size": len(layer),
            }
        ],
    }
    body = encode(document)
    handler = type(
        "Handler",
        (GarbageReferrers,),
        {
            "image": Pushed(OCI_MANIFEST, digest_of(body), body),
            "blobs": {digest_of(config): config, digest_of(layer): layer},
        },
    )
    source = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=source.serve_forever, daemon=True)
    thread.start()
    try:
        local = create_project(admin, "garbage")
        endpoint = add_endpoint(admin, f"http://127.0.0.1:{source.server_address[1]}")
        rule = add_rule(
            admin,
            endpoint,
            direction="pull",
            repositories=["vendor/app"],
            destinationPrefix=local,
            stripSegments=1,
        )
        run = run_rule(admin, rule)
        task = the_task(admin, run)
        assert run["status"] == "failed"
        assert "referrers list of vendor/app@" in task["error"], task
        assert "not JSON" in task["error"], task
        # The image itself came in and stays.
        assert remote_digest(registry, f"{local}/app", "v1") == digest_of(body)
    finally:
        source.shutdown()
        source.server_close()
        thread.join()


# -- mirrored deletions


def test_scheduled_runs_mirror_deletions_of_what_the_rule_copied_and_nothing_else(
    admin: httpx.Client, registry: httpx.Client, target: Distribution
) -> None:
    project = create_project(admin, "mirror")
    repository = f"{project}/app"
    kept = push_image(registry, repository, "v1")
    gone = push_image(registry, repository, "v2")
    endpoint = add_endpoint(admin, target.url, kind="distribution")
    rule = add_rule(
        admin,
        endpoint,
        repositories=[f"{project}/**"],
        tags=["v*"],
        trigger="schedule",
        intervalSeconds=3600,
        mirrorDeletions=True,
    )
    assert rule["mirrorDeletions"] is True
    plain = add_rule(admin, endpoint, repositories=[f"{project}/**"], tags=["v*"])
    assert plain["mirrorDeletions"] is False
    assert run_rule(admin, rule)["status"] == "succeeded"
    with target.client() as remote:
        foreign = push_image(remote, repository, "v9")  # not the rule's: never deleted
        assert remote_digest(remote, repository, "v2") == gone.digest
    assert registry.delete(f"/v2/{repository}/manifests/v2").status_code == 202
    # A rule that does not mirror deletions leaves the copy alone.
    quiet = run_rule(admin, plain)
    assert {task["operation"] for task in tasks(admin, quiet["id"])} == {"copy"}
    with target.client() as remote:
        assert remote_digest(remote, repository, "v2") == gone.digest
    run = run_rule(admin, rule)
    assert run["status"] == "succeeded", tasks(admin, run["id"])
    deletes = [task for task in tasks(admin, run["id"]) if task["operation"] == "delete"]
    assert [(task["tag"], task["digest"]) for task in deletes] == [("v2", gone.digest)]
    with target.client() as remote:
        assert remote_digest(remote, repository, "v2") is None
        assert remote_digest(remote, repository, "v1") == kept.digest
        assert remote_digest(remote, repository, "v9") == foreign.digest
    # Once deleted, it is forgotten: the next run deletes nothing.
    again = run_rule(admin, rule)
    assert all(task["operation"] == "copy" for task in tasks(admin, again["id"]))

    # Distribution deletes by digest: a manifest that another tag there names too stays.
    shared = push_image(registry, repository, "v3")
    assert run_rule(admin, rule)["status"] == "succeeded"
    with target.client() as remote:
        push_manifest(remote, repository, shared.body, shared.media_type, "alias")
    assert registry.delete(f"/v2/{repository}/manifests/v3").status_code == 202
    refused = run_rule(admin, rule)
    (delete,) = [task for task in tasks(admin, refused["id"]) if task["operation"] == "delete"]
    assert delete["status"] == "failed"
    assert "also tagged alias" in delete["error"], delete
    with target.client() as remote:
        assert remote_digest(remote, repository, "v3") == shared.digest
        assert remote_digest(remote, repository, "alias") == shared.digest
    # Left alone once, it is no longer the rule's to delete.
    last = run_rule(admin, rule)
    assert all(task["operation"] == "copy" for task in tasks(admin, last["id"]))


def test_pull_rules_mirror_deletions_of_the_tags_they_brought_in(
    admin: httpx.Client, registry: httpx.Client, target: Distribution
) -> None:
    upstream = unique("up")
    repository = f"{upstream}/lib"
    with target.client() as remote:
        first = push_image(remote, repository, "1.0")
        second = push_image(remote, repository, "2.0")
    local = create_project(admin, "mirrored")
    endpoint = add_endpoint(admin, target.url, kind="distribution")
    rule = add_rule(
        admin,
        endpoint,
        direction="pull",
        repositories=[repository],
        destinationPrefix=local,
        stripSegments=1,
        mirrorDeletions=True,
    )
    assert run_rule(admin, rule)["status"] == "succeeded"
    mirror = f"{local}/lib"
    own = push_image(registry, mirror, "local")  # pushed here by a user: not the rule's
    with target.client() as remote:
        deleted = remote.delete(f"/v2/{repository}/manifests/{second.digest}")
        assert deleted.status_code == 202, deleted.text
    run = run_rule(admin, rule)
    assert run["status"] == "succeeded", tasks(admin, run["id"])
    assert remote_digest(registry, mirror, "2.0") is None
    assert remote_digest(registry, mirror, "1.0") == first.digest
    assert remote_digest(registry, mirror, "local") == own.digest
