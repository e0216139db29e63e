"""Virtual projects against the real server: ordered resolution over local and proxy-cache
members (Debian's docker-registry as the upstream), member permissions, push routing, merged
tag lists, and the management API with its audit trail."""

from __future__ import annotations

import json
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
from tests.support.auth import ADMIN_USER, RegistryAuth
from tests.support.distribution import Distribution
from tests.support.oci import (
    OCI_INDEX,
    OCI_MANIFEST,
    Pushed,
    assert_oci_error,
    digest_of,
    fetch_token,
    push_image,
    token_claims,
)
from tests.support.server import RegistryProcess

pytestmark = pytest.mark.tools("docker-registry")

ACCEPT = {"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    with RegistryProcess(tmp_path_factory.mktemp("virtual") / "data").start() as process:
        yield process


@pytest.fixture
def v2(server: RegistryProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=120, auth=RegistryAuth()) as http:
        yield http


def make_virtual(admin: httpx.Client, members: list[str], push_member: str | None = None) -> str:
    project = create_project(admin, "virtual")
    configure(admin, project, members, push_member)
    return project


def configure(
    admin: httpx.Client, project: str, members: list[str], push_member: str | None = None
) -> dict[str, Any]:
    response = admin.put(
        f"/projects/{project}/virtual", json={"members": members, "pushMember": push_member}
    )
    assert response.status_code == 200, response.text
    shown: dict[str, Any] = response.json()
    return shown


def manifest_digest(client: httpx.Client, repository: str, reference: str) -> str | None:
    response = client.get(f"/v2/{repository}/manifests/{reference}", headers=ACCEPT)
    return response.headers["Docker-Content-Digest"] if response.status_code == 200 else None


def pull_blobs(client: httpx.Client, repository: str, image: Pushed) -> None:
    document = json.loads(image.body)
    for descriptor in [document["config"], *document["layers"]]:
        blob = client.get(f"/v2/{repository}/blobs/{descriptor['digest']}")
        assert blob.status_code == 200, blob.text
        assert digest_of(blob.content) == descriptor["digest"]


def user_client(server: RegistryProcess, username: str) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=60, auth=RegistryAuth(username, PASSWORD))


def test_the_first_member_that_has_it_wins(admin: httpx.Client, v2: httpx.Client) -> None:
    first, second = create_project(admin, "first"), create_project(admin, "second")
    in_first = push_image(v2, f"{first}/app", "1")
    in_second = push_image(v2, f"{second}/app", "1")
    only_second = push_image(v2, f"{second}/app", "2")
    virtual = make_virtual(admin, [first, second])

    assert manifest_digest(v2, f"{virtual}/app", "1") == in_first.digest
    assert manifest_digest(v2, f"{virtual}/app", "2") == only_second.digest
    assert manifest_digest(v2, f"{virtual}/app", in_second.digest) == in_second.digest
    pull_blobs(v2, f"{virtual}/app", in_first)
    pull_blobs(v2, f"{virtual}/app", only_second)
    missing = v2.get(f"/v2/{virtual}/app/manifests/3", headers=ACCEPT)
    assert_oci_error(missing, 404, "MANIFEST_UNKNOWN")
    assert_oci_error(v2.get(f"/v2/{virtual}/nothing/tags/list"), 404, "NAME_UNKNOWN")

    # Referrers come from the first member that has referrers of the subject.
    signature = push_image(
        v2, f"{second}/app", subject=in_second, artifact_type="application/example.signature"
    )
    referrers = v2.get(f"/v2/{virtual}/app/referrers/{in_second.digest}")
    assert referrers.status_code == 200
    assert [m["digest"] for m in referrers.json()["manifests"]] == [signature.digest]
    assert v2.get(f"/v2/{virtual}/app/referrers/{in_first.digest}").json()["manifests"] == []

    configure(admin, virtual, [second, first])
    assert manifest_digest(v2, f"{virtual}/app", "1") == in_second.digest


def test_a_proxy_member_is_fetched_through_when_local_members_lack_it(
    upstream: Distribution, admin: httpx.Client, v2: httpx.Client
) -> None:
    local = create_project(admin, "local")
    cache = create_project(admin, "cache")
    response = admin.put(
        f"/projects/{cache}/proxy", json={"url": upstream.url, "allowPrivateNetwork": True}
    )
    assert response.status_code == 200, response.text
    mine = push_image(v2, f"{local}/tool", "1")
    with upstream.client() as client:
        shadowed = push_image(client, "tool", "1")
        theirs = push_image(client, "tool", "2", layer_count=2)
    virtual = make_virtual(admin, [local, cache])

    # In the local member: the proxy member is not asked.
    assert manifest_digest(v2, f"{virtual}/tool", "1") == mine.digest
    assert shadowed.digest != mine.digest
    assert upstream.requests("GET", "/v2/tool/manifests/1", status=None) == 0
    # Not in the local member: fetched through the proxy member, then cached there.
    assert manifest_digest(v2, f"{virtual}/tool", "2") == theirs.digest
    pull_blobs(v2, f"{virtual}/tool", theirs)
    assert manifest_digest(v2, f"{cache}/tool", "2") == theirs.digest
    assert upstream.requests("GET", "/v2/tool/manifests/2") == 1
    pull_blobs(v2, f"{virtual}/tool", theirs)
    for descriptor in json.loads(theirs.body)["layers"]:
        assert upstream.requests("GET", f"/v2/tool/blobs/{descriptor['digest']}") == 1
    # Neither member has it: the upstream's answer (not found) stands.
    assert_oci_error(
        v2.get(f"/v2/{virtual}/tool/manifests/9", headers=ACCEPT), 404, "MANIFEST_UNKNOWN"
    )


def test_content_comes_only_from_members_the_caller_may_pull(
    server: RegistryProcess, admin: httpx.Client, v2: httpx.Client
) -> None:
    hidden, visible = create_project(admin, "hidden"), create_project(admin, "visible")
    secret = push_image(v2, f"{hidden}/app", "1")
    public = push_image(v2, f"{visible}/app", "1")
    only_hidden = push_image(v2, f"{hidden}/app", "2")
    virtual = make_virtual(admin, [hidden, visible])
    reader = create_user(admin, "reader")
    set_role(admin, virtual, reader, "guest")
    set_role(admin, visible, reader, "guest")

    with user_client(server, reader) as client:
        assert manifest_digest(client, f"{virtual}/app", "1") == public.digest
        pull_blobs(client, f"{virtual}/app", public)
        # Neither the tag nor the digest nor a blob of the unreadable member is served.
        assert_oci_error(
            client.get(f"/v2/{virtual}/app/manifests/2", headers=ACCEPT), 404, "MANIFEST_UNKNOWN"
        )
        by_digest = client.get(f"/v2/{virtual}/app/manifests/{secret.digest}", headers=ACCEPT)
        assert_oci_error(by_digest, 404, "MANIFEST_UNKNOWN")
        config = json.loads(only_hidden.body)["config"]["digest"]
        assert_oci_error(client.get(f"/v2/{virtual}/app/blobs/{config}"), 404, "BLOB_UNKNOWN")
        tags = client.get(f"/v2/{virtual}/app/tags/list")
        assert tags.json()["tags"] == ["1"]

    # Pull on a member alone does not open the virtual project.
    member_only = create_user(admin, "member-only")
    set_role(admin, visible, member_only, "guest")
    with user_client(server, member_only) as client:
        refused = client.get(f"/v2/{virtual}/app/manifests/1", headers=ACCEPT)
        assert_oci_error(refused, 401, "UNAUTHORIZED")
        assert manifest_digest(client, f"{visible}/app", "1") == public.digest

    # The token names each member with what the caller may do there, nothing more.
    token = fetch_token(server.url, [f"repository:{virtual}/app:pull"], (reader, PASSWORD))
    access = {entry["name"]: entry["actions"] for entry in token_claims(token)["access"]}
    assert access == {f"{virtual}/app": ["pull"], f"{visible}/app": ["pull"]}


def test_pushes_go_to_the_push_member_and_need_push_there(
    server: RegistryProcess, admin: httpx.Client, v2: httpx.Client
) -> None:
    target, other = create_project(admin, "target"), create_project(admin, "other")
    virtual = make_virtual(admin, [other, target], push_member=target)
    pushed = push_image(v2, f"{virtual}/svc", "1")
    assert manifest_digest(v2, f"{target}/svc", "1") == pushed.digest
    assert v2.get(f"/v2/{other}/svc/tags/list").status_code == 404
    assert manifest_digest(v2, f"{virtual}/svc", "1") == pushed.digest

    # Push on the virtual project is not push on the member.
    developer = create_user(admin, "developer")
    set_role(admin, virtual, developer, "developer")
    set_role(admin, target, developer, "guest")
    with user_client(server, developer) as client:
        refused = client.post(f"/v2/{virtual}/svc/blobs/uploads/")
        assert refused.status_code in (401, 403), refused.text
        set_role(admin, target, developer, "developer")
        eventually(
            lambda: client.post(f"/v2/{virtual}/svc/blobs/uploads/").status_code == 202,
            what="push with push on the member",
        )
        started = client.post(f"/v2/{virtual}/svc/blobs/uploads/")
        assert started.headers["Location"].startswith(f"/v2/{target}/svc/blobs/uploads/")


def test_without_a_push_member_pushes_and_deletes_are_refused(
    admin: httpx.Client, v2: httpx.Client
) -> None:
    member = create_project(admin, "member")
    pushed = push_image(v2, f"{member}/app", "1")
    virtual = make_virtual(admin, [member])
    error = assert_oci_error(v2.post(f"/v2/{virtual}/app/blobs/uploads/"), 403, "DENIED")
    assert "no push member" in error["message"]
    error = assert_oci_error(
        v2.put(
            f"/v2/{virtual}/app/manifests/2",
            content=pushed.body,
            headers={"Content-Type": OCI_MANIFEST},
        ),
        403,
        "DENIED",
    )
    deleted = v2.delete(f"/v2/{virtual}/app/manifests/{pushed.digest}")
    error = assert_oci_error(deleted, 403, "DENIED")
    assert "holds no content of its own" in error["message"]
    assert manifest_digest(v2, f"{member}/app", "1") == pushed.digest

    def refusals() -> list[dict[str, Any]]:
        response = admin.get("/audit-logs", params={"project": virtual, "action": "policy:denied"})
        found: list[dict[str, Any]] = response.json()
        return found

    eventually(lambda: len(refusals()) >= 3, what="refusals audited")
    assert {entry["details"]["policy"] for entry in refusals()} == {"virtual-project"}


def test_tags_lists_merge_the_members(admin: httpx.Client, v2: httpx.Client) -> None:
    first, second = create_project(admin, "first"), create_project(admin, "second")
    for tag in ("a", "c", "e"):
        push_image(v2, f"{first}/app", tag)
    for tag in ("b", "c", "d"):
        push_image(v2, f"{second}/app", tag)
    virtual = make_virtual(admin, [first, second])
    tags = v2.get(f"/v2/{virtual}/app/tags/list")
    assert tags.json() == {"name": f"{virtual}/app", "tags": ["a", "b", "c", "d", "e"]}

    seen: list[str] = []
    url: str | None = f"/v2/{virtual}/app/tags/list?n=2"
    while url is not None:
        page = v2.get(url)
        assert page.status_code == 200
        assert len(page.json()["tags"]) <= 2
        seen.extend(page.json()["tags"])
        link = page.headers.get("Link")
        url = link.split(";")[0].strip("<>") if link else None
    assert seen == ["a", "b", "c", "d", "e"]


def test_the_virtual_project_api_validates_and_audits(
    server: RegistryProcess, upstream: Distribution, admin: httpx.Client, v2: httpx.Client
) -> None:
    local = create_project(admin, "local")
    cache = create_project(admin, "cache")
    body = {"url": upstream.url, "allowPrivateNetwork": True}
    assert admin.put(f"/projects/{cache}/proxy", json=body).status_code == 200
    virtual = create_project(admin, "virtual")
    path = f"/projects/{virtual}/virtual"

    assert_problem(admin.get(path), 404)
    assert_problem(admin.put(path, json={"members": []}), 422)
    assert_problem(admin.put(path, json={"members": [local] * 17}), 422)
    assert_problem(admin.put(path, json={"members": [local, local]}), 400)
    assert_problem(admin.put(path, json={"members": [virtual]}), 400)
    assert_problem(admin.put(path, json={"members": ["no-such-project"]}), 400)
    assert_problem(admin.put(path, json={"members": [local], "pushMember": cache}), 400)
    assert_problem(admin.put(path, json={"members": [local, cache], "pushMember": cache}), 400)
    assert_problem(admin.put("/projects/no-such-project/virtual", json={"members": [local]}), 404)
    # A proxy-cache project cannot become virtual, nor a virtual one a proxy cache.
    assert_problem(admin.put(f"/projects/{cache}/virtual", json={"members": [local]}), 409)
    # A project with repositories would have them hidden.
    push_image(v2, f"{local}/app", "1")
    assert_problem(admin.put(f"/projects/{local}/virtual", json={"members": [cache]}), 409)

    shown = configure(admin, virtual, [local, cache], push_member=local)
    assert shown["members"] == [local, cache]
    assert shown["pushMember"] == local
    assert shown["updatedBy"] == ADMIN_USER
    assert admin.get(path).json()["members"] == [local, cache]
    assert_problem(admin.put(f"/projects/{virtual}/proxy", json=body), 409)
    # Virtual projects do not nest, either way round.
    outer = create_project(admin, "outer")
    assert_problem(admin.put(f"/projects/{outer}/virtual", json={"members": [virtual]}), 400)
    member_virtual = create_project(admin, "member-virtual")
    configure(admin, member_virtual, [cache])
    assert_problem(admin.put(f"/projects/{cache}/virtual", json={"members": [local]}), 409)

    # Project admins read; only system administrators change.
    owner = create_user(admin, "owner")
    set_role(admin, virtual, owner, "project-admin")
    with api_client(server, owner, PASSWORD) as client:
        assert client.get(path).json()["members"] == [local, cache]
        assert_problem(client.put(path, json={"members": [local]}), 403)
        assert_problem(client.delete(path), 403)

    assert admin.delete(path).status_code == 204
    assert_problem(admin.get(path), 404)
    assert_problem(admin.delete(path), 404)

    def entries(action: str) -> list[dict[str, Any]]:
        response = admin.get("/audit-logs", params={"project": virtual, "action": action})
        assert response.status_code == 200, response.text
        found: list[dict[str, Any]] = response.json()
        return found

    eventually(
        lambda: bool(entries("virtual:configure")) and bool(entries("virtual:remove")),
        what="virtual project changes audited",
    )
    (configured,) = entries("virtual:configure")
    assert configured["actor"] == ADMIN_USER
    assert configured["details"] == {"members": [local, cache], "push_member": local}
