"""The authorization matrix of docs/security.md, against a running server.

Every subject (anonymous, the administrator, a user per built-in role, users with custom roles,
a user with a per-repository grant, a signed-in stranger, a project robot and a system robot)
asks the token service for everything on each repository; the token must grant exactly what the
matrix allows, and the registry must then serve exactly that. The same subjects try the project
actions of the management API in their own project and in another.

Expectations come from a small model built on `ROLE_ACTIONS` (so a change of a role shows up
here), and a hand-written table of key cases pins the model itself down.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import httpx
import pytest

from moorage.domain.access import ROLE_ACTIONS, Action
from tests.support.api import PASSWORD, api_client, assert_problem, set_role
from tests.support.auth import ADMIN_PASSWORD, ADMIN_USER, parse_challenge
from tests.support.oci import (
    OCI_MANIFEST,
    bearer,
    fetch_token,
    push_image,
    put_manifest,
    token_claims,
)
from tests.support.server import RegistryProcess

REPOSITORY_ACTIONS: Final = ("pull", "push", "delete")
ALL: Final = frozenset(REPOSITORY_ACTIONS)

# The repositories each subject is tried on, by the role they play.
REPOSITORIES: Final = {
    "own": "own/base",
    "other": "other/base",
    "pub": "pub/base",
    "granted-glob": "own/app/api",  # matched by the grant's `app/*`
    "outside-glob": "own/app/api/v2",  # not matched: `*` stays within one path segment
}
PUBLIC_PROJECTS: Final = frozenset({"pub"})

CUSTOM_ROLES: Final[Mapping[str, frozenset[Action]]] = {
    "pusher-only": frozenset({Action.PULL, Action.PUSH}),
    "auditor": frozenset({Action.READ_AUDIT, Action.READ_PROJECT}),
}
ROLES: Final[Mapping[str, frozenset[Action]]] = {
    **{str(role): actions for role, actions in ROLE_ACTIONS.items()},
    **CUSTOM_ROLES,
}

GRANT_PATTERN: Final = "app/*"
PROJECT_ROBOT_RULES: Final = [{"project": "own", "repositories": "**", "actions": ["pull"]}]
SYSTEM_ROBOT_RULES: Final = [
    {"project": "*", "repositories": "**", "actions": ["pull"]},
    {"project": "other", "repositories": "**", "actions": ["push"]},
]


@dataclass(frozen=True)
class Subject:
    """Who signs in, and what the model says they hold."""

    key: str
    admin: bool = False
    project_actions: Mapping[str, frozenset[Action]] = field(default_factory=dict)
    # Actions on single repositories (by REPOSITORIES key) from grants and robot allow-lists.
    repository_actions: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def may(self, repository_key: str) -> frozenset[str]:
        """The repository actions the matrix allows on one of REPOSITORIES."""
        if self.admin:
            return ALL
        project = REPOSITORIES[repository_key].split("/")[0]
        allowed = {"pull"} if project in PUBLIC_PROJECTS else set()
        allowed |= {a.value for a in self.project_actions.get(project, ()) if a.value in ALL}
        allowed |= self.repository_actions.get(repository_key, frozenset())
        return frozenset(allowed)

    def may_in_project(self, project: str, action: Action) -> bool:
        return self.admin or action in self.project_actions.get(project, frozenset())


SUBJECTS: Final = [
    Subject("anonymous"),
    Subject("admin", admin=True),
    *(Subject(role, project_actions={"own": actions}) for role, actions in ROLES.items()),
    Subject("granted", repository_actions={"granted-glob": frozenset({"pull", "push"})}),
    Subject("outsider"),
    Subject(
        "project-robot",
        repository_actions={
            key: frozenset({"pull"})
            for key, name in REPOSITORIES.items()
            if name.startswith("own/")
        },
    ),
    Subject(
        "system-robot",
        repository_actions={
            key: frozenset({"pull", "push"} if name.startswith("other/") else {"pull"})
            for key, name in REPOSITORIES.items()
        },
    ),
]
BY_KEY: Final = {subject.key: subject for subject in SUBJECTS}

# Written out by hand from docs/security.md, so the model above is not the only witness.
KEY_REPOSITORY_CASES: Final = [
    ("anonymous", "pub", {"pull"}),
    ("anonymous", "own", set()),
    ("outsider", "pub", {"pull"}),
    ("outsider", "own", set()),
    ("limited-guest", "own", {"pull"}),
    ("guest", "own", {"pull"}),
    ("developer", "own", {"pull", "push"}),
    ("developer", "granted-glob", {"pull", "push"}),
    ("maintainer", "own", {"pull", "push", "delete"}),
    ("project-admin", "outside-glob", {"pull", "push", "delete"}),
    ("project-admin", "other", set()),
    ("project-admin", "pub", {"pull"}),
    ("pusher-only", "own", {"pull", "push"}),
    ("auditor", "own", set()),
    ("granted", "granted-glob", {"pull", "push"}),
    ("granted", "outside-glob", set()),
    ("granted", "own", set()),
    ("project-robot", "own", {"pull"}),
    ("project-robot", "other", set()),
    ("system-robot", "other", {"pull", "push"}),
    ("system-robot", "own", {"pull"}),
    ("admin", "other", {"pull", "push", "delete"}),
]
KEY_PROJECT_CASES: Final = [
    ("limited-guest", "own", Action.READ_PROJECT, True),
    ("limited-guest", "own", Action.READ_AUDIT, False),
    ("guest", "own", Action.READ_AUDIT, True),
    ("maintainer", "own", Action.MANAGE_MEMBERS, False),
    ("maintainer", "own", Action.MANAGE_PROJECT, False),
    ("project-admin", "own", Action.MANAGE_MEMBERS, True),
    ("project-admin", "own", Action.MANAGE_ROBOTS, True),
    ("project-admin", "other", Action.READ_PROJECT, False),
    ("auditor", "own", Action.READ_AUDIT, True),
    ("auditor", "own", Action.MANAGE_ROBOTS, False),
    ("pusher-only", "own", Action.READ_PROJECT, False),
    ("granted", "own", Action.READ_PROJECT, False),
    ("project-robot", "own", Action.READ_PROJECT, False),
    ("admin", "other", Action.MANAGE_PROJECT, True),
]


@pytest.mark.parametrize(("subject", "repository", "allowed"), KEY_REPOSITORY_CASES)
def test_the_model_agrees_with_the_documented_repository_cases(
    subject: str, repository: str, allowed: set[str]
) -> None:
    assert BY_KEY[subject].may(repository) == allowed


@pytest.mark.parametrize(("subject", "project", "action", "allowed"), KEY_PROJECT_CASES)
def test_the_model_agrees_with_the_documented_project_cases(
    subject: str, project: str, action: Action, allowed: bool
) -> None:
    assert BY_KEY[subject].may_in_project(project, action) is allowed


# -- the server


@dataclass
class World:
    server: RegistryProcess
    credentials: dict[str, tuple[str, str] | None]
    bystander: str  # whose role the member managers set
    admin_v2: httpx.Client  # the administrator on /v2 with every repository in its token


def delete_tag(subject: str) -> str:
    return f"del-{subject}"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    server = RegistryProcess(tmp_path_factory.mktemp("matrix") / "data").start()
    try:
        credentials: dict[str, tuple[str, str] | None] = {"anonymous": None}
        with api_client(server) as admin:
            for project, public in (("own", False), ("other", False), ("pub", True)):
                created = admin.post("/projects", json={"name": project, "public": public})
                assert created.status_code == 201, created.text
            for role, actions in CUSTOM_ROLES.items():
                defined = admin.put(f"/roles/{role}", json={"actions": sorted(actions)})
                assert defined.status_code in (200, 201), defined.text
            for user in (*ROLES, "granted", "outsider", "bystander"):
                created = admin.post("/users", json={"username": user, "password": PASSWORD})
                assert created.status_code == 201, created.text
                credentials[user] = (user, PASSWORD)
            for role in ROLES:
                set_role(admin, "own", role, role)
            grant = {"kind": "user", "name": "granted", "pattern": GRANT_PATTERN}
            granted = admin.post(
                "/projects/own/grants", json={**grant, "actions": ["pull", "push"]}
            )
            assert granted.status_code == 201, granted.text
            for key, path, rules in (
                ("project-robot", "/projects/own/robots", PROJECT_ROBOT_RULES),
                ("system-robot", "/robots", SYSTEM_ROBOT_RULES),
            ):
                robot = admin.post(path, json={"name": "matrix", "permissions": rules})
                assert robot.status_code == 201, robot.text
                credentials[key] = (robot.json()["name"], robot.json()["secret"])
        credentials["admin"] = (ADMIN_USER, ADMIN_PASSWORD)
        token = fetch_token(
            server.url, [f"repository:{name}:pull,push,delete" for name in REPOSITORIES.values()]
        )
        admin_v2 = httpx.Client(base_url=server.url, headers=bearer(token), timeout=30)
        for name in REPOSITORIES.values():
            image = push_image(admin_v2, name, "latest")
            for subject in SUBJECTS:
                tagged = put_manifest(
                    admin_v2, name, delete_tag(subject.key), image.body, OCI_MANIFEST
                )
                assert tagged.status_code == 201, tagged.text
        yield World(server, credentials, "bystander", admin_v2)
        admin_v2.close()
    finally:
        server.stop()


def assert_refused_for_scope(response: httpx.Response, scope: str) -> None:
    """A token that lacks the action: a challenge for it (401), never a 2xx."""
    assert response.status_code == 401, response.text
    challenge = parse_challenge(response.headers["WWW-Authenticate"])
    assert challenge.get("error") == "insufficient_scope", challenge
    assert challenge.get("scope") == scope, challenge


@pytest.mark.parametrize("repository", REPOSITORIES)
@pytest.mark.parametrize("subject", SUBJECTS, ids=lambda subject: subject.key)
def test_repository_actions_follow_the_matrix(
    world: World, subject: Subject, repository: str
) -> None:
    name = REPOSITORIES[repository]
    allowed = subject.may(repository)
    token = fetch_token(
        world.server.url, [f"repository:{name}:pull,push,delete"], world.credentials[subject.key]
    )
    # The token grants exactly the allowed part of what was asked.
    expected_claim = (
        [{"type": "repository", "name": name, "actions": sorted(allowed)}] if allowed else []
    )
    assert token_claims(token)["access"] == expected_claim

    with httpx.Client(base_url=world.server.url, headers=bearer(token), timeout=30) as http:
        pulled = http.get(f"/v2/{name}/manifests/latest")
        pushed = http.post(f"/v2/{name}/blobs/uploads/")
        deleted = http.delete(f"/v2/{name}/manifests/{delete_tag(subject.key)}")
    observed = {
        "pull": pulled.status_code == 200,
        "push": pushed.status_code == 202,
        "delete": deleted.status_code == 202,
    }
    assert observed == {action: action in allowed for action in REPOSITORY_ACTIONS}, (
        pulled.text,
        pushed.text,
        deleted.text,
    )
    scopes = {"pull": "pull", "push": "pull,push", "delete": "delete"}
    for action, response in (("pull", pulled), ("push", pushed), ("delete", deleted)):
        if action not in allowed:
            assert_refused_for_scope(response, f"repository:{name}:{scopes[action]}")
    # The tag is gone exactly when the delete was allowed.
    still_there = world.admin_v2.get(f"/v2/{name}/manifests/{delete_tag(subject.key)}")
    assert still_there.status_code == (404 if "delete" in allowed else 200), still_there.text


# -- project actions through the management API


def project_request(
    api: httpx.Client, world: World, subject: str, project: str, action: Action
) -> httpx.Response:
    if action is Action.READ_PROJECT:
        return api.get(f"/projects/{project}")
    if action is Action.MANAGE_MEMBERS:
        return api.put(
            f"/projects/{project}/members/user/{world.bystander}", json={"role": "guest"}
        )
    if action is Action.MANAGE_ROBOTS:
        rules = [{"project": project, "repositories": "**", "actions": ["pull"]}]
        return api.post(
            f"/projects/{project}/robots", json={"name": f"by-{subject}", "permissions": rules}
        )
    if action is Action.READ_AUDIT:
        return api.get(f"/projects/{project}/audit-logs")
    if action is Action.MANAGE_PROJECT:
        return api.patch(f"/projects/{project}", json={"public": False})
    raise AssertionError(action)


PROJECT_ACTIONS: Final = (
    Action.READ_PROJECT,
    Action.MANAGE_MEMBERS,
    Action.MANAGE_ROBOTS,
    Action.READ_AUDIT,
    Action.MANAGE_PROJECT,
)


@pytest.mark.parametrize("project", ["own", "other"])
@pytest.mark.parametrize("subject", SUBJECTS, ids=lambda subject: subject.key)
def test_project_actions_follow_the_matrix(world: World, subject: Subject, project: str) -> None:
    credentials = world.credentials[subject.key]
    if credentials is None:
        username, password = None, ""
    else:
        username, password = credentials
    observed: dict[str, int] = {}
    with api_client(world.server, username, password) as api:
        for action in PROJECT_ACTIONS:
            response = project_request(api, world, subject.key, project, action)
            observed[action.value] = response.status_code
            if response.status_code >= 400:
                assert_problem(response, response.status_code)
    refusal = 401 if credentials is None else 403
    expected: dict[str, Any] = {
        action.value: (
            (201 if action is Action.MANAGE_ROBOTS else 200)
            if subject.may_in_project(project, action)
            else refusal
        )
        for action in PROJECT_ACTIONS
    }
    assert observed == expected
