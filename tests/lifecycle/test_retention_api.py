"""Retention against a real server: policies through the API, dry and real runs over pushed
images (indexes, referrers, immutable tags, promotions), last-pull times from real pulls, the
schedule, audit, and who may do what."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.api import (
    PASSWORD,
    api_client,
    assert_problem,
    create_project,
    create_user,
    eventually,
    set_role,
)
from tests.support.oci import (
    Pushed,
    platform,
    push_image,
    push_index,
    push_manifest,
)
from tests.support.server import RegistryProcess

SIGNATURE_TYPE = "application/vnd.dev.cosign.artifact.sig.v1+json"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    data_dir = tmp_path_factory.mktemp("retention") / "data"
    env = {"MOORAGE_PULL_FLUSH_SECONDS": "0.2", "MOORAGE_RETENTION_CHECK_SECONDS": "1"}
    with RegistryProcess(data_dir, env=env).start() as process:
        yield process


def put_policy(
    admin: httpx.Client, project: str, *rules: dict[str, Any], **extra: Any
) -> httpx.Response:
    return admin.put(f"/projects/{project}/retention-policy", json={"rules": list(rules), **extra})


def run(admin: httpx.Client, project: str, *, dry_run: bool) -> dict[str, Any]:
    response = admin.post(f"/projects/{project}/retention-runs", json={"dryRun": dry_run})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    assert body["status"] == "succeeded", body
    return body


def decisions(admin: httpx.Client, project: str, run_id: int) -> dict[str, dict[str, Any]]:
    """digest -> decision (every page)."""
    found: dict[str, dict[str, Any]] = {}
    after = 0
    while True:
        response = admin.get(
            f"/projects/{project}/retention-runs/{run_id}/decisions",
            params={"limit": 3, "after": after},
        )
        assert response.status_code == 200, response.text
        page = response.json()
        for item in page:
            found[f"{item['repository']}@{item['digest']}"] = item
        if len(page) < 3:
            return found
        after = page[-1]["id"]


def gone(decided: dict[str, dict[str, Any]]) -> set[str]:
    return {key for key, item in decided.items() if item["outcome"] in ("removed", "would-remove")}


def exists(v2: httpx.Client, repository: str, digest: str) -> bool:
    response = v2.head(f"/v2/{repository}/manifests/{digest}")
    assert response.status_code in (200, 404), response.text
    return response.status_code == 200


def signature_of(v2: httpx.Client, repository: str, subject: Pushed) -> Pushed:
    return push_image(v2, repository, subject=subject, artifact_type=SIGNATURE_TYPE)


def key(repository: str, pushed: Pushed) -> str:
    return f"{repository}@{pushed.digest}"


# -- policies


def test_policy_crud(admin: httpx.Client) -> None:
    project = create_project(admin, "ret")
    assert_problem(admin.get(f"/projects/{project}/retention-policy"), 404)
    rule = {"criterion": "latestPushed", "count": 3, "tags": ["v*"]}
    created = put_policy(admin, project, rule, cron="0 3 * * *")
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["rules"][0]["count"] == 3
    assert body["rules"][0]["repositories"] == ["**"]
    assert body["cron"] == "0 3 * * *"
    assert body["nextRunAt"] is not None
    updated = put_policy(admin, project, {"criterion": "always"}, enabled=False)
    assert updated.status_code == 200, updated.text
    assert updated.json()["rules"][0]["criterion"] == "always"
    assert updated.json()["nextRunAt"] is None
    listed = admin.get("/retention-policies")
    assert listed.status_code == 200
    assert project in [p["project"] for p in listed.json()]
    assert admin.delete(f"/projects/{project}/retention-policy").status_code == 204
    assert_problem(admin.delete(f"/projects/{project}/retention-policy"), 404)
    assert_problem(admin.post(f"/projects/{project}/retention-runs", json={}), 422)


BAD_POLICIES: list[tuple[str, dict[str, Any]]] = [
    ("count zero", {"rules": [{"criterion": "latestPushed", "count": 0}]}),
    ("count absurd", {"rules": [{"criterion": "latestPushed", "count": 10**9}]}),
    ("count missing", {"rules": [{"criterion": "latestPulled"}]}),
    ("days negative", {"rules": [{"criterion": "pushedWithinDays", "days": -1}]}),
    ("count and days", {"rules": [{"criterion": "latestPushed", "count": 1, "days": 2}]}),
    ("always with count", {"rules": [{"criterion": "always", "count": 2}]}),
    ("unknown criterion", {"rules": [{"criterion": "oldest", "count": 1}]}),
    ("bad repository glob", {"rules": [{"criterion": "always", "repositories": ["A/**"]}]}),
    ("triple star", {"rules": [{"criterion": "always", "repositories": ["***"]}]}),
    ("bad tag glob", {"rules": [{"criterion": "always", "tags": ["v/1"]}]}),
    ("long tag glob", {"rules": [{"criterion": "always", "tags": ["v" * 200]}]}),
    ("too many patterns", {"rules": [{"criterion": "always", "tags": ["a"] * 17}]}),
    ("no rules", {"rules": []}),
    ("too many rules", {"rules": [{"criterion": "always"}] * 16}),
    ("selects nothing", {"rules": [{"criterion": "always", "tags": []}]}),
    ("bad cron", {"rules": [{"criterion": "always"}], "cron": "61 * * * *"}),
    ("never firing cron", {"rules": [{"criterion": "always"}], "cron": "0 0 31 2 *"}),
    ("unknown field", {"rules": [{"criterion": "always", "keepForever": True}]}),
    ("rules not a list", {"rules": "always"}),
]


@pytest.mark.parametrize(("name", "body"), BAD_POLICIES, ids=[n for n, _ in BAD_POLICIES])
def test_bad_policies_are_problems(admin: httpx.Client, name: str, body: dict[str, Any]) -> None:
    project = create_project(admin, "retbad")
    response = admin.put(f"/projects/{project}/retention-policy", json=body)
    problem = assert_problem(response, 422)
    assert problem["detail"], problem
    assert_problem(admin.get(f"/projects/{project}/retention-policy"), 404)


def test_unknown_project_and_run(admin: httpx.Client) -> None:
    assert_problem(put_policy(admin, "no-such-project-x", {"criterion": "always"}), 404)
    project = create_project(admin, "retrun")
    assert_problem(admin.get(f"/projects/{project}/retention-runs/999999"), 404)
    assert_problem(admin.get(f"/projects/{project}/retention-runs/99999999999999999999"), 404)
    # A run is found only under its own project (permissions are per project).
    assert put_policy(admin, project, {"criterion": "always"}).status_code == 201
    own = run(admin, project, dry_run=True)
    other = create_project(admin, "retrun")
    assert_problem(admin.get(f"/projects/{other}/retention-runs/{own['id']}"), 404)
    assert_problem(admin.get(f"/projects/{other}/retention-runs/{own['id']}/decisions"), 404)
    assert admin.get(f"/projects/{other}/retention-runs").json() == []
    assert admin.get(f"/projects/{project}/retention-runs/{own['id']}").json() == own


# -- runs


def test_dry_run_equals_real_run(admin: httpx.Client, v2: httpx.Client) -> None:
    project = create_project(admin, "retdry")
    app, other, untouched = f"{project}/app", f"{project}/other", f"{project}/keep/all"
    versions = [push_image(v2, app, f"v{i}") for i in range(1, 6)]
    signed = signature_of(v2, app, versions[0])  # dies with v1
    sbom_of_signature = signature_of(v2, app, signed)  # and so does this
    recent_signature = signature_of(v2, app, versions[4])  # lives with v5
    dev = push_image(v2, app, "dev-1")
    untagged = push_image(v2, app)
    # An index nobody selects goes with its untagged children, index first.
    old_children = [push_image(v2, app), push_image(v2, app)]
    old_index = push_index(
        v2,
        app,
        [(old_children[0], platform()), (old_children[1], platform("linux", "arm64"))],
        "multi-old",
    )
    # A kept index keeps its children.
    kept_children = [push_image(v2, app)]
    kept_index = push_index(v2, app, [(kept_children[0], platform())], "release-1")
    other_images = [push_image(v2, other, f"v{i}") for i in range(1, 4)]
    elsewhere = push_image(v2, untouched, "x")
    response = put_policy(
        admin,
        project,
        {
            "criterion": "latestPushed",
            "count": 2,
            "tags": ["v*"],
            "excludeRepositories": ["keep/**"],
        },
        {"criterion": "always", "tags": ["release-*"], "excludeRepositories": ["keep/**"]},
    )
    assert response.status_code == 201, response.text

    dry = run(admin, project, dry_run=True)
    dry_decisions = decisions(admin, project, dry["id"])
    expected_gone = {
        *(key(app, v) for v in versions[:3]),
        key(app, signed),
        key(app, sbom_of_signature),
        key(app, dev),
        key(app, untagged),
        key(app, old_index),
        *(key(app, c) for c in old_children),
        key(other, other_images[0]),
    }
    assert gone(dry_decisions) == expected_gone
    assert dry["removed"] == len(expected_gone)
    # Nothing was deleted by the dry run.
    assert all(exists(v2, app, v.digest) for v in versions)
    # Why what stays, stays.
    assert dry_decisions[key(app, versions[4])]["rule"] == 1
    assert "rule 1" in dry_decisions[key(app, versions[4])]["reason"]
    assert dry_decisions[key(app, kept_index)]["rule"] == 2
    assert "child of kept index" in dry_decisions[key(app, kept_children[0])]["reason"]
    assert "referrer of kept" in dry_decisions[key(app, recent_signature)]["reason"]
    assert "referrer of" in dry_decisions[key(app, signed)]["reason"]
    assert key(untouched, elsewhere) not in dry_decisions  # excluded: not even evaluated

    real = run(admin, project, dry_run=False)
    real_decisions = decisions(admin, project, real["id"])
    assert gone(real_decisions) == gone(dry_decisions)
    assert {item["outcome"] for item in real_decisions.values()} <= {"kept", "removed"}
    for item in real_decisions.values():
        repository, digest = item["repository"], item["digest"]
        assert exists(v2, repository, digest) == (item["outcome"] == "kept"), item
    assert exists(v2, untouched, elsewhere.digest)
    # Tags of deleted artifacts are gone with them; the referrers listing no longer shows
    # the deleted signature.
    assert v2.get(f"/v2/{app}/manifests/v1").status_code == 404
    assert v2.get(f"/v2/{app}/manifests/v5").status_code == 200
    referrers = v2.get(f"/v2/{app}/referrers/{versions[0].digest}")
    assert referrers.status_code == 200
    assert referrers.json()["manifests"] == []

    # A second real run finds nothing more to remove.
    again = run(admin, project, dry_run=False)
    assert again["removed"] == 0

    history = admin.get(f"/projects/{project}/retention-runs")
    assert history.status_code == 200
    assert [r["id"] for r in history.json()] == [again["id"], real["id"], dry["id"]]
    assert [r["dryRun"] for r in history.json()] == [False, False, True]
    only_removed = admin.get(
        f"/projects/{project}/retention-runs/{real['id']}/decisions",
        params={"outcome": "removed", "limit": 1000},
    )
    assert {f"{i['repository']}@{i['digest']}" for i in only_removed.json()} == expected_gone


def test_immutable_and_promoted_are_protected(admin: httpx.Client, v2: httpx.Client) -> None:
    dev = create_project(admin, "retdev")
    staging = create_project(admin, "retstg")
    for project, stage in ((dev, "dev"), (staging, "staging")):
        response = admin.put(f"/projects/{project}/stage", json={"stage": stage})
        assert response.status_code == 200, response.text
    app = f"{dev}/app"
    frozen = push_image(v2, app, "1.0")
    promoted = push_image(v2, app, "2.0")
    plain = push_image(v2, app, "3.0")
    newest = push_image(v2, app, "4.0")
    rule = admin.post(
        f"/projects/{dev}/immutable-tag-rules", json={"repositories": "**", "tags": "1.*"}
    )
    assert rule.status_code == 201, rule.text
    promotion = admin.post(
        "/promotions", json={"source": f"{app}:2.0", "destination": f"{staging}/app:2.0"}
    )
    assert promotion.status_code == 201, promotion.text
    assert put_policy(admin, dev, {"criterion": "latestPushed", "count": 1}).status_code == 201

    dry = decisions(admin, dev, run(admin, dev, dry_run=True)["id"])
    assert "immutable tag 1.0" in dry[key(app, frozen)]["reason"]
    assert f"promoted to {staging}/app" in dry[key(app, promoted)]["reason"]
    assert gone(dry) == {key(app, plain)}
    real = decisions(admin, dev, run(admin, dev, dry_run=False)["id"])
    assert gone(real) == gone(dry)
    assert exists(v2, app, frozen.digest)
    assert exists(v2, app, promoted.digest)
    assert exists(v2, app, newest.digest)
    assert not exists(v2, app, plain.digest)

    # removeProtected lifts the promotion protection; the immutability policy of the
    # registry still refuses to delete an immutable tag, and the dry run says so too.
    response = put_policy(
        admin, dev, {"criterion": "latestPushed", "count": 1, "removeProtected": True}
    )
    assert response.status_code == 200, response.text
    dry = decisions(admin, dev, run(admin, dev, dry_run=True)["id"])
    assert dry[key(app, promoted)]["outcome"] == "would-remove"
    assert dry[key(app, frozen)]["outcome"] == "refused"
    assert "immutable" in dry[key(app, frozen)]["reason"]
    real = decisions(admin, dev, run(admin, dev, dry_run=False)["id"])
    assert gone(real) == gone(dry) == {key(app, promoted)}
    assert real[key(app, frozen)]["outcome"] == "refused"
    assert exists(v2, app, frozen.digest)
    assert not exists(v2, app, promoted.digest)


def test_last_pulled_times_come_from_real_pulls(admin: httpx.Client, v2: httpx.Client) -> None:
    project = create_project(admin, "retpull")
    app = f"{project}/app"
    images = [push_image(v2, app, f"t{i}") for i in range(3)]
    assert put_policy(admin, project, {"criterion": "latestPulled", "count": 1}).status_code == 201
    never = decisions(admin, project, run(admin, project, dry_run=True)["id"])
    assert gone(never) == {key(app, image) for image in images}  # nothing was ever pulled

    pulled = v2.get(f"/v2/{app}/manifests/t1", headers={"Accept": images[1].media_type})
    assert pulled.status_code == 200

    def kept_by_pull() -> bool:
        decided = decisions(admin, project, run(admin, project, dry_run=True)["id"])
        return decided[key(app, images[1])]["outcome"] == "kept"

    eventually(kept_by_pull, what="the pull to be recorded")
    decided = decisions(admin, project, run(admin, project, dry_run=True)["id"])
    assert gone(decided) == {key(app, images[0]), key(app, images[2])}


def test_a_tag_pushed_after_evaluation_is_not_lost(admin: httpx.Client, v2: httpx.Client) -> None:
    """Evaluation and deletion are separate steps: the run re-reads each artifact's tags just
    before deleting it; here the dry run's decision would remove `old`, then `old` gets a new
    tag, and the real run (evaluated afresh) keeps it."""
    project = create_project(admin, "retrace")
    app = f"{project}/app"
    old = push_image(v2, app, "old")
    push_image(v2, app, "new")
    assert put_policy(admin, project, {"criterion": "latestPushed", "count": 1}).status_code == 201
    assert key(app, old) in gone(decisions(admin, project, run(admin, project, dry_run=True)["id"]))
    push_manifest(v2, app, old.body, old.media_type, "newest")
    real = decisions(admin, project, run(admin, project, dry_run=False)["id"])
    assert real[key(app, old)]["outcome"] == "kept"
    assert exists(v2, app, old.digest)


def test_schedule_runs_once_and_is_audited(admin: httpx.Client, v2: httpx.Client) -> None:
    project = create_project(admin, "retcron")
    app = f"{project}/app"
    old, new = push_image(v2, app, "a"), push_image(v2, app, "b")
    response = put_policy(
        admin, project, {"criterion": "latestPushed", "count": 1}, cron="* * * * *"
    )
    assert response.status_code == 201, response.text

    def scheduled() -> list[dict[str, Any]]:
        runs = admin.get(f"/projects/{project}/retention-runs").json()
        return [r for r in runs if r["trigger"] == "schedule" and r["status"] != "running"]

    eventually(lambda: bool(scheduled()), timeout=150, what="a scheduled run")
    first = scheduled()[-1]
    assert first["dryRun"] is False
    assert first["requestedBy"] == "moorage"
    assert not exists(v2, app, old.digest)
    assert exists(v2, app, new.digest)

    def audited(action: str) -> list[dict[str, Any]]:
        found = admin.get(f"/projects/{project}/audit-logs", params={"action": action})
        assert found.status_code == 200, found.text
        entries: list[dict[str, Any]] = found.json()
        return entries

    eventually(lambda: bool(audited("retention:run")), what="retention:run audited")
    entry = audited("retention:run")[-1]
    assert entry["details"]["trigger"] == "schedule"
    assert entry["details"]["removed"] == 1
    eventually(lambda: bool(audited("manifest:deleted")), what="the deletion audited")
    assert audited("manifest:deleted")[0]["resource"] == f"{app}@{old.digest}"
    eventually(lambda: bool(audited("retention:policy-create")), what="the policy audited")


def test_permissions(server: RegistryProcess, admin: httpx.Client) -> None:
    project = create_project(admin, "retperm")
    assert put_policy(admin, project, {"criterion": "always"}).status_code == 201
    developer, guest, outsider = (create_user(admin, n) for n in ("retdev", "retguest", "retout"))
    set_role(admin, project, developer, "developer")
    set_role(admin, project, guest, "guest")
    policy = {"rules": [{"criterion": "always"}]}
    for username in (developer, guest):
        with api_client(server, username, PASSWORD) as http:
            assert http.get(f"/projects/{project}/retention-policy").status_code == 200
            assert http.get(f"/projects/{project}/retention-runs").status_code == 200
            assert_problem(http.put(f"/projects/{project}/retention-policy", json=policy), 403)
            assert_problem(http.delete(f"/projects/{project}/retention-policy"), 403)
            assert_problem(
                http.post(f"/projects/{project}/retention-runs", json={"dryRun": False}), 403
            )
            assert_problem(http.get("/retention-policies"), 403)
    with api_client(server, outsider, PASSWORD) as http:
        response = http.get(f"/projects/{project}/retention-policy")
        assert response.status_code in (403, 404)
        assert_problem(
            http.post(f"/projects/{project}/retention-runs", json={}), response.status_code
        )
    with api_client(server, None) as anonymous:
        assert_problem(anonymous.put(f"/projects/{project}/retention-policy", json=policy), 401)
        assert_problem(anonymous.get(f"/projects/{project}/retention-runs"), 401)
    maintainer = create_user(admin, "retmaint")
    set_role(admin, project, maintainer, "maintainer")
    with api_client(server, maintainer, PASSWORD) as http:
        assert http.put(f"/projects/{project}/retention-policy", json=policy).status_code == 200
        assert http.post(f"/projects/{project}/retention-runs", json={}).status_code == 201
