"""Immutable tags: the rule semantics, the management API, enforcement on a real server, the
audit trail, and the compare-and-set that keeps a decision from resting on a stale state."""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moorage.domain.access import _regex, _simulate, _tokens, glob_match
from moorage.domain.digest import Digest
from moorage.domain.errors import RegistryError
from moorage.domain.events import Actor, DomainEvent
from moorage.domain.immutability import (
    ImmutableTagRule,
    RuleError,
    RuleMode,
    is_cosign_tag,
    make_rule,
    protecting_rule,
    validate_rule_set,
)
from moorage.domain.manifest import parse_manifest
from moorage.domain.names import Reference
from moorage.domain.policy import Allow, Decision, DecisionPoint, PolicyContext, PolicySet
from moorage.metadata.access.iam_store import IamStore
from moorage.metadata.database import make_engine
from moorage.metadata.registry.registry_records import PreconditionFailedError, TagPrecondition
from moorage.metadata.registry.store import MetadataStore
from moorage.services.events import EventBus
from moorage.services.registry.immutability import (
    ImmutabilityService,
    ImmutableTagPolicy,
    RuleInput,
)
from moorage.services.registry.registry import RegistryService
from moorage.services.threads import Threads
from moorage.storage.filesystem import FilesystemStorage
from tests.support.api import (
    PASSWORD,
    api_client,
    assert_problem,
    create_project,
    create_user,
    eventually,
    set_role,
)
from tests.support.auth import RegistryAuth
from tests.support.oci import (
    OCI_CONFIG,
    OCI_LAYER,
    OCI_MANIFEST,
    Pushed,
    assert_oci_error,
    digest_of,
    encode,
    push_image,
    put_manifest,
)
from tests.support.server import RegistryProcess

RULES = "/projects/{project}/immutable-tag-rules"
SIG_TAG = "sha256-" + "ab" * 32 + ".sig"
_serials = itertools.count()
MAX_RULES = 15  # docs/security.md: "A project has at most 15 rules"


def rules_path(project: str) -> str:
    return RULES.format(project=project)


def put_rules(admin: httpx.Client, project: str, *rules: dict[str, str]) -> list[dict[str, Any]]:
    response = admin.put(rules_path(project), json={"rules": list(rules)})
    assert response.status_code == 200, response.text
    stored: list[dict[str, Any]] = response.json()
    return stored


@pytest.fixture
def v2(api_registry: RegistryProcess) -> Iterator[httpx.Client]:
    """The registry protocol on the API tests' server, as the administrator."""
    with httpx.Client(base_url=api_registry.url, timeout=60, auth=RegistryAuth()) as http:
        yield http


def denied_message(response: httpx.Response) -> str:
    return str(assert_oci_error(response, 403, "DENIED")["message"])


# -- the rules themselves (pure)


def rule(
    repositories: str, tags: str, mode: str = "matching", rule_id: int = 1
) -> ImmutableTagRule:
    return make_rule(repositories, tags, mode, rule_id)


def test_a_tag_is_immutable_when_a_matching_rule_covers_it_and_no_excluding_rule_does() -> None:
    releases = rule("**", "v*", rule_id=1)
    everything = rule("**", "*", rule_id=2)
    dev = rule("**", "dev-*", "excluding", rule_id=3)
    sandbox = rule("sandbox/**", "*", "excluding", rule_id=4)

    assert protecting_rule([releases], "team/app", "v1.0") == releases
    assert protecting_rule([releases], "team/app", "latest") is None
    assert protecting_rule([], "team/app", "v1.0") is None
    # Only excluding rules protect nothing.
    assert protecting_rule([dev, sandbox], "team/app", "v1.0") is None
    # Excluding rules carve out of every matching rule, whatever their order.
    rules = [everything, dev, sandbox, releases]
    assert protecting_rule(rules, "team/app", "dev-42") is None
    assert protecting_rule(rules, "team/sandbox/tool", "v1.0") is None
    assert protecting_rule(rules, "team/app", "latest") == everything
    assert protecting_rule(rules, "team/app", "v1.0") == releases  # the oldest rule is named
    assert protecting_rule(list(reversed(rules)), "team/app", "v1.0") == releases


def test_repository_patterns_are_relative_to_the_project() -> None:
    app_only = rule("app", "*")
    nested = rule("app/*", "*")
    assert protecting_rule([app_only], "team/app", "x") is not None
    assert protecting_rule([app_only], "team/app/api", "x") is None
    assert protecting_rule([app_only], "other/team/app", "x") is None
    assert protecting_rule([nested], "team/app/api", "x") is not None
    assert protecting_rule([nested], "team/app/api/v2", "x") is None
    assert protecting_rule([rule("team/app", "*")], "team/app", "x") is None
    # A repository named like its project has the empty relative path, which `**` covers.
    assert protecting_rule([rule("**", "*")], "team", "x") is not None


def test_tag_patterns_are_case_sensitive_globs() -> None:
    assert protecting_rule([rule("**", "v?.*")], "t/a", "v1.2") is not None
    assert protecting_rule([rule("**", "v?.*")], "t/a", "v10.2") is None
    assert protecting_rule([rule("**", "V*")], "t/a", "v1") is None
    assert protecting_rule([rule("**", "**")], "t/a", "anything_at-all.1") is not None


def test_cosign_signature_attestation_and_sbom_tags_are_exempt() -> None:
    everything = [rule("**", "*")]
    for suffix in ("sig", "att", "sbom"):
        tag = f"sha256-{'0f' * 32}.{suffix}"
        assert is_cosign_tag(tag)
        assert protecting_rule(everything, "t/a", tag) is None
    for tag in (f"sha256-{'0f' * 31}.sig", f"sha256-{'0F' * 32}.sig", f"sha256-{'0f' * 32}.sigx"):
        assert not is_cosign_tag(tag)
        assert protecting_rule(everything, "t/a", tag) is not None


@pytest.mark.parametrize(
    ("repositories", "tags", "mode"),
    [
        ("", "*", "matching"),
        ("App/*", "*", "matching"),  # repository names are lowercase
        ("x" * 256, "*", "matching"),
        ("***", "*", "matching"),
        ("**", "", "matching"),
        ("**", "v1/*", "matching"),  # a tag has no '/'
        ("**", "x" * 129, "matching"),
        ("**", "a***", "matching"),
        ("**", "v*", "protect"),
    ],
)
def test_invalid_rules_are_refused(repositories: str, tags: str, mode: str) -> None:
    with pytest.raises(RuleError):
        make_rule(repositories, tags, mode)


def test_a_rule_set_is_capped_and_has_no_repeats() -> None:
    rules = [make_rule("**", f"v{index}*") for index in range(MAX_RULES)]
    assert len(validate_rule_set(rules)) == MAX_RULES
    with pytest.raises(RuleError, match="at most 15"):
        validate_rule_set([*rules, make_rule("**", "w*")])
    with pytest.raises(RuleError, match="repeats rule 1"):
        validate_rule_set([rules[0], make_rule("**", "x"), rules[0]])
    # The same globs in the other mode are a different rule.
    validate_rule_set([rules[0], make_rule("**", "v0*", RuleMode.EXCLUDING)])


@settings(max_examples=2000, deadline=None)
@given(
    pattern=st.text(alphabet="ab/*?.", max_size=10),
    value=st.text(alphabet="ab/.", max_size=12),
)
def test_the_linear_glob_matcher_agrees_with_the_regular_expression(
    pattern: str, value: str
) -> None:
    tokens = _tokens(pattern)
    assert _simulate(tokens, value) == (_regex(tokens).match(value) is not None)


# Backtracking would take longer than the universe's age here; the linear matcher takes
# microseconds. The timeout only turns such a hang into a failure.
@pytest.mark.timeout(60)
def test_glob_matching_does_not_backtrack() -> None:
    for stars in (3, 8, 40):
        assert not glob_match("*a" * stars + "*b", "a" * 128)
        assert not glob_match("**/" * stars + "x", "a/" * 120 + "y")


# -- enforcement on a real server


def test_an_immutable_tag_can_be_created_and_re_pushed_but_never_moved_or_deleted(
    admin_api: httpx.Client, v2: httpx.Client
) -> None:
    project = create_project(admin_api)
    (stored,) = put_rules(admin_api, project, {"repositories": "**", "tags": "v*"})
    assert stored["mode"] == "matching"
    assert admin_api.get(rules_path(project)).json() == [stored]
    repo = f"{project}/app"

    image = push_image(v2, repo, "v1.0")
    # The same manifest again (CI re-runs, a retried push) is fine.
    assert put_manifest(v2, repo, "v1.0", image.body, OCI_MANIFEST).status_code == 201

    other = push_image(v2, repo)  # by digest: no tag moves
    message = denied_message(put_manifest(v2, repo, "v1.0", other.body, OCI_MANIFEST))
    assert "v1.0" in message
    assert f"rule {stored['id']}" in message
    assert "'v*'" in message
    assert v2.get(f"/v2/{repo}/manifests/v1.0").content == image.body

    assert "cannot be deleted" in denied_message(v2.delete(f"/v2/{repo}/manifests/v1.0"))
    message = denied_message(v2.delete(f"/v2/{repo}/manifests/{image.digest}"))
    assert "tagged v1.0" in message
    assert f"rule {stored['id']}" in message
    assert v2.get(f"/v2/{repo}/manifests/v1.0").content == image.body
    assert v2.get(f"/v2/{repo}/manifests/{image.digest}").status_code == 200

    # Tags no rule covers behave as always, in the same repository.
    push_image(v2, repo, "latest")
    push_image(v2, repo, "latest")
    assert v2.delete(f"/v2/{repo}/manifests/latest").status_code == 202
    # A new immutable tag on another manifest is fine.
    assert put_manifest(v2, repo, "v2.0", other.body, OCI_MANIFEST).status_code == 201


def test_a_manifest_with_any_immutable_tag_cannot_be_deleted(
    admin_api: httpx.Client, v2: httpx.Client
) -> None:
    project = create_project(admin_api)
    put_rules(admin_api, project, {"repositories": "**", "tags": "release-*"})
    repo = f"{project}/app"
    image = push_image(v2, repo, "latest")
    assert v2.delete(f"/v2/{repo}/manifests/{image.digest}").status_code == 202

    image = push_image(v2, repo, "latest")
    assert put_manifest(v2, repo, "release-1", image.body, OCI_MANIFEST).status_code == 201
    assert "release-1" in denied_message(v2.delete(f"/v2/{repo}/manifests/{image.digest}"))
    # Its mutable tag can still go.
    assert v2.delete(f"/v2/{repo}/manifests/latest").status_code == 202


def test_an_excluding_rule_carves_tags_and_repositories_out(
    admin_api: httpx.Client, v2: httpx.Client
) -> None:
    project = create_project(admin_api)
    put_rules(
        admin_api,
        project,
        {"repositories": "**", "tags": "*"},
        {"repositories": "**", "tags": "dev-*", "mode": "excluding"},
        {"repositories": "sandbox/**", "tags": "*", "mode": "excluding"},
    )
    repo = f"{project}/app"
    push_image(v2, repo, "dev-1")
    moved = push_image(v2, repo, "dev-1")
    assert v2.get(f"/v2/{repo}/manifests/dev-1").content == moved.body
    assert v2.delete(f"/v2/{repo}/manifests/dev-1").status_code == 202

    push_image(v2, repo, "stable")
    other = push_image(v2, repo)
    denied_message(put_manifest(v2, repo, "stable", other.body, OCI_MANIFEST))

    sandbox = f"{project}/sandbox/tool"
    push_image(v2, sandbox, "stable")
    push_image(v2, sandbox, "stable")
    assert v2.delete(f"/v2/{sandbox}/manifests/stable").status_code == 202


def test_cosign_signature_tags_stay_movable(admin_api: httpx.Client, v2: httpx.Client) -> None:
    project = create_project(admin_api)
    put_rules(admin_api, project, {"repositories": "**", "tags": "*"})
    repo = f"{project}/app"
    push_image(v2, repo, SIG_TAG)
    resigned = push_image(v2, repo, SIG_TAG)  # cosign appends a signature: the tag moves
    assert v2.get(f"/v2/{repo}/manifests/{SIG_TAG}").content == resigned.body
    assert v2.delete(f"/v2/{repo}/manifests/{SIG_TAG}").status_code == 202
    assert v2.delete(f"/v2/{repo}/manifests/{resigned.digest}").status_code == 202
    # ... while the rule holds for every other tag of the repository.
    push_image(v2, repo, "stable")
    denied_message(v2.delete(f"/v2/{repo}/manifests/stable"))


def test_rules_bind_only_their_own_project_and_repositories(
    admin_api: httpx.Client, v2: httpx.Client
) -> None:
    guarded, free = create_project(admin_api), create_project(admin_api)
    put_rules(admin_api, guarded, {"repositories": "app", "tags": "v*"})
    for repo in (f"{free}/app", f"{guarded}/other"):
        push_image(v2, repo, "v1.0")
        push_image(v2, repo, "v1.0")
        assert v2.delete(f"/v2/{repo}/manifests/v1.0").status_code == 202
    push_image(v2, f"{guarded}/app", "v1.0")
    other = push_image(v2, f"{guarded}/app")
    denied_message(put_manifest(v2, f"{guarded}/app", "v1.0", other.body, OCI_MANIFEST))


def test_removing_the_rule_makes_the_tag_mutable_again(
    admin_api: httpx.Client, v2: httpx.Client
) -> None:
    project = create_project(admin_api)
    created = admin_api.post(rules_path(project), json={"tags": "v*"})
    assert created.status_code == 201, created.text
    rule_id = created.json()["id"]
    assert created.json()["repositories"] == "**"
    repo = f"{project}/app"
    push_image(v2, repo, "v1")
    denied_message(v2.delete(f"/v2/{repo}/manifests/v1"))

    assert admin_api.delete(f"{rules_path(project)}/{rule_id}").status_code == 204
    assert admin_api.get(rules_path(project)).json() == []
    assert_problem(admin_api.delete(f"{rules_path(project)}/{rule_id}"), 404)
    assert v2.delete(f"/v2/{repo}/manifests/v1").status_code == 202


# -- the management API


def test_rule_sets_are_capped_validated_and_free_of_repeats(admin_api: httpx.Client) -> None:
    project = create_project(admin_api)
    path = rules_path(project)
    sixteen = [{"tags": f"v{index}-*"} for index in range(MAX_RULES + 1)]
    assert_problem(admin_api.put(path, json={"rules": sixteen}), 422)
    assert len(put_rules(admin_api, project, *sixteen[:MAX_RULES])) == MAX_RULES
    assert "at most 15" in assert_problem(admin_api.post(path, json={"tags": "w*"}), 400)["detail"]

    put_rules(admin_api, project)  # the empty set
    assert admin_api.get(path).json() == []
    for bad in (
        {"tags": "v1/*"},
        {"tags": "x" * 129},
        {"tags": "v*", "repositories": "App"},
        {"tags": "v*", "mode": "protect"},
        {"tags": "v*", "extra": True},
        {"repositories": "**"},
    ):
        assert_problem(admin_api.post(path, json=bad), 422)
    assert_problem(admin_api.post(path, json={"tags": "a***"}), 400)

    assert admin_api.post(path, json={"tags": "v*"}).status_code == 201
    assert "rule" in assert_problem(admin_api.post(path, json={"tags": "v*"}), 409)["detail"]
    assert admin_api.post(path, json={"tags": "v*", "mode": "excluding"}).status_code == 201
    repeated = admin_api.put(path, json={"rules": [{"tags": "x"}, {"tags": "x"}]})
    assert "repeats" in assert_problem(repeated, 400)["detail"]
    assert len(admin_api.get(path).json()) == 2  # a refused replacement changes nothing

    assert_problem(admin_api.get(rules_path("no-such-project")), 404)


def test_only_those_who_manage_policies_change_rules(
    api_registry: RegistryProcess, admin_api: httpx.Client
) -> None:
    project = create_project(admin_api)
    rule_id = put_rules(admin_api, project, {"tags": "v*"})[0]["id"]
    developer, maintainer, outsider = (create_user(admin_api) for _ in range(3))
    set_role(admin_api, project, developer, "developer")
    set_role(admin_api, project, maintainer, "maintainer")
    path = rules_path(project)

    with api_client(api_registry, developer, PASSWORD) as client:
        assert [r["id"] for r in client.get(path).json()] == [rule_id]
        assert_problem(client.post(path, json={"tags": "x"}), 403)
        assert_problem(client.put(path, json={"rules": []}), 403)
        assert_problem(client.delete(f"{path}/{rule_id}"), 403)
    with api_client(api_registry, outsider, PASSWORD) as client:
        assert_problem(client.get(path), 403)
    assert [r["id"] for r in admin_api.get(path).json()] == [rule_id]

    with api_client(api_registry, maintainer, PASSWORD) as client:
        added = client.post(path, json={"tags": "x"})
        assert added.status_code == 201, added.text
        assert added.json()["createdBy"] == maintainer
        assert client.delete(f"{path}/{rule_id}").status_code == 204


def test_rule_changes_and_refusals_are_audited(admin_api: httpx.Client, v2: httpx.Client) -> None:
    project = create_project(admin_api)
    path = rules_path(project)
    created = admin_api.post(path, json={"repositories": "app/**", "tags": "v*"}).json()
    replaced = put_rules(
        admin_api, project, {"tags": "rel-*"}, {"tags": "rel-x", "mode": "excluding"}
    )
    assert admin_api.delete(f"{path}/{replaced[1]['id']}").status_code == 204
    repo = f"{project}/app"
    push_image(v2, repo, "rel-1")
    denied_message(v2.delete(f"/v2/{repo}/manifests/rel-1"))

    def entries(action: str) -> list[dict[str, Any]]:
        response = admin_api.get("/audit-logs", params={"project": project, "action": action})
        assert response.status_code == 200, response.text
        found: list[dict[str, Any]] = response.json()
        return found

    wanted = (
        "immutable-rule:create",
        "immutable-rule:replace",
        "immutable-rule:delete",
        "policy:denied",
    )
    eventually(lambda: all(entries(action) for action in wanted), what="audit entries")
    (create,) = entries("immutable-rule:create")
    assert create["actor"] == "admin"
    assert create["resource"] == f"project:{project}"
    assert create["details"] == {
        "rule": created["id"],
        "repositories": "app/**",
        "tags": "v*",
        "mode": "matching",
    }
    (replace,) = entries("immutable-rule:replace")
    assert [r["id"] for r in replace["details"]["removed"]] == [created["id"]]
    assert [r["tags"] for r in replace["details"]["rules"]] == ["rel-*", "rel-x"]
    (delete,) = entries("immutable-rule:delete")
    assert delete["details"]["rule"] == replaced[1]["id"]
    (denied,) = entries("policy:denied")
    assert denied["result"] == "denied"
    assert denied["resource"] == f"{repo}:rel-1"
    assert denied["details"]["point"] == "delete:tag"
    assert denied["details"]["policy"] == "immutable-tags"
    assert f"rule {replaced[0]['id']}" in denied["details"]["reason"]


def test_the_rules_are_in_the_openapi_document(api_registry: RegistryProcess) -> None:
    document = httpx.get(f"{api_registry.url}/api/v1/openapi.json").json()
    operations = document["paths"]["/api/v1/projects/{project}/immutable-tag-rules"]
    assert operations["get"]["x-permission"] == "project:read-project"
    for method in ("post", "put"):
        assert operations[method]["x-permission"] == "project:manage-policies"
    one = document["paths"]["/api/v1/projects/{project}/immutable-tag-rules/{rule}"]
    assert one["delete"]["x-permission"] == "project:manage-policies"
    schemas = document["components"]["schemas"]
    assert schemas["ImmutableTagRuleSet"]["properties"]["rules"]["maxItems"] == MAX_RULES
    assert schemas["NewImmutableTagRule"]["properties"]["mode"]["enum"] == [
        "matching",
        "excluding",
    ]


# -- deciding on a state that holds when the write happens (in process)


class Registry:
    """The registry's services over a migrated database (`metadata_url`: SQLite and
    PostgreSQL), with the immutability checks."""

    def __init__(self, directory: Path, database_url: str) -> None:
        engine = make_engine(database_url, pool_size=2)
        self.metadata = MetadataStore(engine)
        self.iam = IamStore(engine)
        self.threads = Threads(2)
        self.events: list[DomainEvent] = []
        bus = EventBus()
        bus.subscribe(self.events.append)
        self.policies = PolicySet()
        self.immutability = ImmutabilityService(self.iam, bus)
        ImmutableTagPolicy(self.immutability, self.metadata, self.threads).register(self.policies)
        self.service = RegistryService(
            FilesystemStorage(directory / "storage"),
            self.metadata,
            self.threads,
            bus,
            self.policies,
            max_manifest_bytes=1 << 20,
            manifest_cache_bytes=1 << 20,
        )
        self.iam.create_project("team", False, None)
        self.immutability.create(Actor(), "team", RuleInput("**", "v*"))

    def manifest(self, repository: str) -> Pushed:
        """An image manifest whose (metadata-only) blobs are linked to `repository`."""
        serial = next(_serials)  # every manifest is new, whatever the clock says
        config = encode({"nonce": serial})
        layer = encode({"layer": serial})
        for blob in (config, layer):
            self.metadata.link_blob(repository, digest_of(blob), len(blob))
        body = encode(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {
                    "mediaType": OCI_CONFIG,
                    "digest": digest_of(config),
                    "size": len(config),
                },
                "layers": [
                    {"mediaType": OCI_LAYER, "digest": digest_of(layer), "size": len(layer)}
                ],
            }
        )
        return Pushed(OCI_MANIFEST, digest_of(body), body)

    def store(self, repository: str, image: Pushed, tag: str | None) -> None:
        """Write directly, as another worker would between a check and its write."""
        parsed = parse_manifest(image.body, OCI_MANIFEST, Digest.parse(image.digest))
        self.metadata.put_manifest(repository, parsed, image.body, tag)

    def once_after_checks(self, point: DecisionPoint, action: Callable[[], None]) -> None:
        """Run `action` right after the checks of `point` decided, the first time only."""
        done: list[bool] = []

        async def sneak(context: PolicyContext) -> Decision:
            if not done:
                done.append(True)
                action()
            return Allow()

        self.policies.register(point, sneak)

    def close(self) -> None:
        self.threads.shutdown()
        self.metadata.close()


@pytest.fixture
def registry_in_process(tmp_path: Path, metadata_url: str) -> Iterator[Registry]:
    registry = Registry(tmp_path, metadata_url)
    yield registry
    registry.close()


def test_the_store_writes_only_when_the_precondition_holds(
    registry_in_process: Registry,
) -> None:
    registry = registry_in_process
    first, second = registry.manifest("team/app"), registry.manifest("team/app")
    registry.store("team/app", first, "v1")
    parsed = parse_manifest(second.body, OCI_MANIFEST, Digest.parse(second.digest))
    with pytest.raises(PreconditionFailedError):
        registry.metadata.put_manifest(
            "team/app", parsed, second.body, "v1", tag_precondition=TagPrecondition(None)
        )
    assert registry.metadata.resolve_tag("team/app", "v1").digest == first.digest  # type: ignore[union-attr]
    with pytest.raises(PreconditionFailedError):
        registry.metadata.delete_manifest("team/app", first.digest, expected_tags=["latest"])
    assert registry.metadata.manifest_tags("team/app", first.digest) == ["v1"]
    registry.metadata.put_manifest(
        "team/app", parsed, second.body, "v1", tag_precondition=TagPrecondition(first.digest)
    )
    assert registry.metadata.manifest_tags("team/app", second.digest) == ["v1"]


def test_a_tag_created_between_the_check_and_the_write_is_not_overwritten(
    registry_in_process: Registry,
) -> None:
    registry = registry_in_process
    ours, theirs = registry.manifest("team/app"), registry.manifest("team/app")
    # Another push creates v1 right after our push was checked (v1 did not exist then).
    registry.once_after_checks(
        DecisionPoint.PUSH_MANIFEST, lambda: registry.store("team/app", theirs, "v1")
    )
    with pytest.raises(RegistryError) as refused:
        asyncio.run(
            registry.service.put_manifest(
                "team/app", Reference(tag="v1"), OCI_MANIFEST, ours.body, Actor()
            )
        )
    assert refused.value.status == 403
    assert "immutable" in refused.value.message
    assert registry.metadata.resolve_tag("team/app", "v1").digest == theirs.digest  # type: ignore[union-attr]
    assert any(getattr(event, "action", None) == "policy:denied" for event in registry.events)


def test_a_manifest_tagged_between_the_check_and_the_delete_is_kept(
    registry_in_process: Registry,
) -> None:
    registry = registry_in_process
    image = registry.manifest("team/app")
    registry.store("team/app", image, "latest")
    registry.once_after_checks(
        DecisionPoint.DELETE_MANIFEST, lambda: registry.store("team/app", image, "v1")
    )
    with pytest.raises(RegistryError) as refused:
        asyncio.run(
            registry.service.delete_manifest(
                "team/app", Reference(digest=Digest.parse(image.digest)), Actor()
            )
        )
    assert refused.value.status == 403
    assert re.search(r"tagged v1\b", refused.value.message)
    assert registry.metadata.manifest_tags("team/app", image.digest) == ["latest", "v1"]


def test_a_mutable_tag_moved_meanwhile_is_simply_written(registry_in_process: Registry) -> None:
    registry = registry_in_process
    ours, theirs = registry.manifest("team/app"), registry.manifest("team/app")
    registry.once_after_checks(
        DecisionPoint.PUSH_MANIFEST, lambda: registry.store("team/app", theirs, "latest")
    )
    asyncio.run(
        registry.service.put_manifest(
            "team/app", Reference(tag="latest"), OCI_MANIFEST, ours.body, Actor()
        )
    )
    # No check looked at `latest`, so there was nothing to re-check: last writer wins.
    assert registry.metadata.resolve_tag("team/app", "latest").digest == ours.digest  # type: ignore[union-attr]
