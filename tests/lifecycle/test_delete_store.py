"""Deleting a repository's metadata, on SQLite and on PostgreSQL (the store, in process).

Everything that names the repository goes in one transaction; what another repository still
holds (a manifest, its scan report, a blob) stays; a manifest push racing the deletion lands
wholly before it (and is deleted with it) or wholly after it (and re-creates the repository).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest

from moorage.domain.digest import Digest
from moorage.domain.manifest import parse_manifest
from moorage.domain.mediatypes import OCI_MANIFEST
from moorage.metadata.database import make_engine
from moorage.metadata.lifecycle.deletion_store import DeletionStore
from moorage.metadata.registry.store import MetadataStore
from moorage.metadata.supply_chain.scan_records import ScanRequest
from moorage.metadata.supply_chain.scan_store import ScanStore
from tests.support.backends import query_database

CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"


class Stores:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url, pool_size=8)
        self.metadata = MetadataStore(self.engine)
        self.deletion = DeletionStore(self.engine)
        self.scans = ScanStore(self.engine)

    def rows(self, sql: str, *parameters: object) -> list[tuple[object, ...]]:
        return query_database(self.url, sql, *parameters)


@pytest.fixture
def stores(metadata_url: str) -> Iterator[Stores]:
    opened = Stores(metadata_url)
    try:
        yield opened
    finally:
        opened.engine.dispose()


def _blob(label: str) -> tuple[str, int]:
    data = label.encode()
    return str(Digest.of(data)), len(data)


def push(stores: Stores, repository: str, tag: str | None, *layers: str) -> str:
    """Link a config and `layers` into `repository` and store a manifest of them; its digest."""
    parts = [_blob(f"config of {repository} {tag} {layers}"), *(_blob(layer) for layer in layers)]
    for digest, size in parts:
        stores.metadata.link_blob(repository, digest, size)
    (config, config_size), *rest = parts
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": CONFIG_TYPE, "digest": config, "size": config_size},
        "layers": [{"mediaType": LAYER_TYPE, "digest": d, "size": s} for d, s in rest],
    }
    body = json.dumps(document).encode()
    digest = Digest.of(body)
    stores.metadata.put_manifest(repository, parse_manifest(body, OCI_MANIFEST, digest), body, tag)
    return str(digest)


def scan(stores: Stores, repository: str, digest: str) -> None:
    stores.scans.request([ScanRequest(repository, digest, OCI_MANIFEST, "builtin", False)])


def count(stores: Stores, table: str, where: str = "1 = 1", *parameters: object) -> int:
    sql = f"SELECT COUNT(*) FROM {table} WHERE {where}"  # noqa: S608 - the tests' own names
    return int(stores.rows(sql, *parameters)[0][0])


def names_it(stores: Stores, name: str) -> dict[str, int]:
    """Rows of every table that names the repository (by id or by name)."""
    ids = [row[0] for row in stores.rows("SELECT id FROM repositories WHERE name = ?", name)]
    counts = {"repositories": len(ids)}
    for table in ("tags", "repository_manifests", "repository_blobs", "proxy_tag_checks"):
        counts[table] = sum(count(stores, table, "repository_id = ?", i) for i in ids)
    counts["scan_jobs"] = count(stores, "scan_jobs", "repository = ?", name)
    counts["scan_reports"] = count(stores, "scan_reports", "repository = ?", name)
    return counts


def test_deleting_a_repository_removes_everything_that_names_it(stores: Stores) -> None:
    first = push(stores, "team/app", "v1", "layer one", "shared layer")
    second = push(stores, "team/app", "v2", "layer two")
    untagged = push(stores, "team/app", None, "layer three")
    stores.metadata.mark_tag_checked("team/app", "v1", datetime.now(UTC))
    for digest in (first, second, untagged):
        scan(stores, "team/app", digest)
    assert any(names_it(stores, "team/app").values())

    deleted = stores.deletion.delete_repository("team/app")

    assert deleted is not None
    assert (deleted.tags, deleted.manifests, deleted.blobs) == (2, 3, 7)
    assert deleted.unshared_manifests == 3
    assert not any(names_it(stores, "team/app").values())
    for digest in (first, second, untagged):
        assert count(stores, "scan_reports", "digest = ?", digest) == 0
        assert count(stores, "scan_jobs", "digest = ?", digest) == 0
    assert stores.metadata.list_repositories(None, 100) == []
    assert stores.metadata.list_tags("team/app", None, 100) is None
    assert stores.metadata.resolve_digest("team/app", first) is None
    # Blob rows and manifest rows stay: garbage collection frees what nothing references.
    assert count(stores, "blobs") == 7
    assert stores.deletion.delete_repository("team/app") is None


def test_what_another_repository_holds_stays(stores: Stores) -> None:
    shared = push(stores, "team/app", "v1", "shared layer")
    assert stores.metadata.mount_blob("team/app", "team/other", _blob("shared layer")[0])
    # The same manifest in another repository (a promotion or a copy links it there).
    parts = [
        _blob(f"config of team/app v1 {('shared layer',)}"),
        _blob("shared layer"),
    ]
    for digest, size in parts:
        stores.metadata.link_blob("team/other", digest, size)
    body = stores.metadata.manifest_body(shared)
    assert body is not None
    parsed = parse_manifest(body, OCI_MANIFEST, Digest.parse(shared))
    stores.metadata.put_manifest("team/other", parsed, body, "copy")
    scan(stores, "team/app", shared)

    deleted = stores.deletion.delete_repository("team/app")

    assert deleted is not None
    assert deleted.unshared_manifests == 0
    assert stores.metadata.resolve_tag("team/other", "copy") is not None
    assert stores.metadata.blob_size_in_repository("team/other", parts[1][0]) is not None
    # The report stays, and now names a repository that still holds the manifest.
    assert stores.rows("SELECT repository FROM scan_reports WHERE digest = ?", shared) == [
        ("team/other",)
    ]
    assert stores.rows("SELECT repository FROM scan_jobs WHERE digest = ?", shared) == [
        ("team/other",)
    ]


def test_a_repository_whose_name_extends_another_is_not_touched(stores: Stores) -> None:
    push(stores, "team/app", "v1", "a")
    push(stores, "team/app-2", "v1", "b")
    push(stores, "team/app/sub", "v1", "c")
    push(stores, "teamx/app", "v1", "d")
    push(stores, "team_/app", "v1", "e")
    assert stores.deletion.repositories_of("team") == ["team/app", "team/app-2", "team/app/sub"]
    assert stores.deletion.repositories_of("team_") == ["team_/app"]
    stores.deletion.delete_repository("team/app")
    assert stores.metadata.list_repositories(None, 100) == [
        "team/app-2",
        "team/app/sub",
        "team_/app",
        "teamx/app",
    ]
    for name in ("team/app-2", "team/app/sub", "teamx/app", "team_/app"):
        assert stores.metadata.resolve_tag(name, "v1") is not None


def _replication_rule(stores: Stores, name: str, direction: str) -> int:
    now = datetime.now(UTC)
    if not count(stores, "replication_endpoints", "name = ?", "remote"):
        stores.rows(
            "INSERT INTO replication_endpoints (name, url, kind, credential_kind, verify_tls,"
            " allow_private_network, timeout_seconds, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            "remote",
            "https://remote.example",
            "moorage",
            "none",
            True,
            False,
            30,
            now,
        )
    endpoint = stores.rows("SELECT id FROM replication_endpoints WHERE name = ?", "remote")[0][0]
    stores.rows(
        "INSERT INTO replication_rules (name, endpoint_id, direction, filters, strip_segments,"
        ' "trigger", replicate_deletions, mirror_deletions, enabled, updated_at)'
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        name,
        endpoint,
        direction,
        "{}",
        0,
        "manual",
        False,
        True,
        True,
        now,
    )
    return int(stores.rows("SELECT id FROM replication_rules WHERE name = ?", name)[0][0])


def _copy(stores: Stores, rule: int, source: str, destination: str) -> None:
    stores.rows(
        "INSERT INTO replication_copies (rule_id, source, destination, tag, digest, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        rule,
        source,
        destination,
        "v1",
        "sha256:" + "1" * 64,
        datetime.now(UTC),
    )


def test_pull_replication_forgets_its_copies_into_the_repository(stores: Stores) -> None:
    """A pull rule's mirrored deletions remove only what it put there: after the repository
    is deleted (and maybe pushed again by someone else) nothing there is the rule's. A push
    rule's copies name the remote: they stay, so the remote copies are mirrored away."""
    push(stores, "team/app", "v1", "a")
    pull = _replication_rule(stores, "pull-in", "pull")
    push_rule = _replication_rule(stores, "push-out", "push")
    _copy(stores, pull, "upstream/app", "team/app")
    _copy(stores, pull, "upstream/other", "team/other")
    _copy(stores, push_rule, "team/app", "remote/app")

    stores.deletion.delete_repository("team/app")

    remaining: list[Any] = sorted(
        (row[0], row[1])
        for row in stores.rows("SELECT rule_id, destination FROM replication_copies")
    )
    assert remaining == sorted([(pull, "team/other"), (push_rule, "remote/app")])


def race(stores: Stores, number: int, layers: tuple[str, str]) -> tuple[str | None, object]:
    """Push a fresh image into team/app and delete team/app at the same moment; (the pushed
    digest or the push's error, what the deletion returned)."""
    start = threading.Barrier(2)

    def pushing() -> str | None:
        start.wait()
        try:
            return push(stores, "team/app", f"r{number}", *layers)
        except Exception as error:  # links landed before the deletion, the manifest after
            return type(error).__name__

    def deleting() -> object:
        start.wait()
        return stores.deletion.delete_repository("team/app")

    with ThreadPoolExecutor(2) as pool:
        pushed, deleted = pool.submit(pushing), pool.submit(deleting)
        return pushed.result(), deleted.result()


def test_a_manifest_push_racing_the_deletion_lands_wholly_before_or_after(stores: Stores) -> None:
    """Each round: a push of a fresh image into the repository and its deletion run at once.
    Afterwards the repository holds no tag (the push landed before and went with it, or it was
    refused for blobs the deletion unlinked) or exactly that image, complete: its manifest,
    its tag and every blob it needs, linked to the repository."""
    for number in range(12):
        layers = (f"round {number} layer", "shared layer")
        push(stores, "team/app", "base", "base layer")
        pushed, deleted = race(stores, number, layers)
        assert deleted is not None
        tags = stores.metadata.list_tags("team/app", None, 100)
        if tags:
            assert tags == [f"r{number}"]
            assert pushed is not None
            assert pushed.startswith("sha256:"), pushed
            assert stores.metadata.resolve_digest("team/app", pushed) is not None
            for layer in layers:
                digest = _blob(layer)[0]
                assert stores.metadata.blob_size_in_repository("team/app", digest) is not None
        else:
            assert count(stores, "repository_manifests") == 0
        assert stores.metadata.manifests_with_missing_blobs() == []
        stores.deletion.delete_repository("team/app")


def test_a_check_that_refuses_undoes_the_whole_deletion(stores: Stores) -> None:
    """The check sees the tags as the deletion's own transaction reads them; what it raises
    leaves everything in place."""
    push(stores, "team/app", "v1", "a")
    push(stores, "team/app", "latest", "b")
    before = names_it(stores, "team/app")
    seen: list[list[str]] = []

    def refuse(tags: list[str]) -> None:
        seen.append(sorted(tags))
        raise PermissionError("immutable")

    with pytest.raises(PermissionError):
        stores.deletion.delete_repository("team/app", check=refuse)

    assert seen == [["latest", "v1"]]
    assert names_it(stores, "team/app") == before
    assert stores.metadata.resolve_tag("team/app", "v1") is not None
    deleted = stores.deletion.delete_repository("team/app", check=lambda tags: None)
    assert deleted is not None
    assert deleted.tags == 2
