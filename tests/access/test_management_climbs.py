"""Management verbs obey "nobody grants more than they hold", from one rule in the authorizer.

Whoever changes another principal's power (a member's role, a grant, a robot) must hold
everything that principal holds before and after the change; rotating a robot's secret, which
hands its holder all the robot's power, counts as such a change, and so do re-enabling and
deleting it. A project never loses its last project admin.

The route table is enumerated: every route that changes a principal's power must have a climb
case below, so a new management route cannot slip in untested.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import httpx
import pytest

from moorage.domain.access import Action
from moorage.http.access import Scope
from moorage.http.api import API_ROUTES
from tests.support.api import (
    PASSWORD,
    api_client,
    assert_problem,
    create_project,
    create_user,
    set_role,
    unique,
)
from tests.support.server import RegistryProcess

# The project actions whose routes change who may do what.
PRINCIPAL_ACTIONS = (Action.MANAGE_MEMBERS, Action.MANAGE_ROBOTS)
PUSH_EVERYWHERE = {"repositories": "**", "actions": ["pull", "push", "delete"]}
PULL_EVERYWHERE = {"repositories": "**", "actions": ["pull"]}


@dataclass
class Stage:
    admin: httpx.Client
    manager: httpx.Client  # holds the custom role: pull, read-project and one management action
    project: str
    owner: str  # the project's only project admin
    friend: str  # a user with no role yet


def _stage(admin: httpx.Client, server: RegistryProcess, action: Action) -> Stage:
    role = unique(action.value)
    created = admin.put(f"/roles/{role}", json={"actions": ["pull", "read-project", action]})
    assert created.status_code in (200, 201), created.text
    project = create_project(admin, "climb")
    owner, manager, friend = (create_user(admin, kind) for kind in ("own", "mgr", "fr"))
    set_role(admin, project, owner, "project-admin")
    set_role(admin, project, manager, role)
    return Stage(admin, api_client(server, manager, PASSWORD), project, owner, friend)


def _robot(stage: Stage, name: str, rule: dict[str, object]) -> str:
    robot = stage.admin.post(
        f"/projects/{stage.project}/robots",
        json={"name": name, "permissions": [{"project": stage.project, **rule}]},
    )
    assert robot.status_code == 201, robot.text
    return name


def _grant(stage: Stage, actions: list[str]) -> int:
    grant = {"kind": "user", "name": stage.friend, "pattern": "**", "actions": actions}
    created = stage.admin.post(f"/projects/{stage.project}/grants", json=grant)
    assert created.status_code == 201, created.text
    return int(created.json()["id"])


# -- one climb (refused) and one fair use (allowed) per route


def climb_set_member(stage: Stage) -> None:
    members = f"/projects/{stage.project}/members/user"
    demote = stage.manager.put(f"{members}/{stage.owner}", json={"role": "limited-guest"})
    assert_problem(demote, 403)
    promote_friend = stage.manager.put(f"{members}/{stage.friend}", json={"role": "developer"})
    assert_problem(promote_friend, 403)
    fair = stage.manager.put(f"{members}/{stage.friend}", json={"role": "limited-guest"})
    assert fair.status_code == 200, fair.text
    listed = stage.admin.get(f"/projects/{stage.project}/members").json()
    assert {"kind": "user", "name": stage.owner, "role": "project-admin"} in listed


def climb_remove_member(stage: Stage) -> None:
    members = f"/projects/{stage.project}/members/user"
    assert_problem(stage.manager.delete(f"{members}/{stage.owner}"), 403)
    set_role(stage.admin, stage.project, stage.friend, "limited-guest")
    assert stage.manager.delete(f"{members}/{stage.friend}").status_code == 204


def climb_add_grant(stage: Stage) -> None:
    grants = f"/projects/{stage.project}/grants"
    push = {"kind": "user", "name": stage.friend, "pattern": "**", "actions": ["push"]}
    assert_problem(stage.manager.post(grants, json=push), 403)
    pull = {**push, "actions": ["pull"]}
    assert stage.manager.post(grants, json=pull).status_code == 201


def climb_delete_grant(stage: Stage) -> None:
    grants = f"/projects/{stage.project}/grants"
    stronger = _grant(stage, ["pull", "push"])
    assert_problem(stage.manager.delete(f"{grants}/{stronger}"), 403)
    weaker = _grant(stage, ["pull"])
    assert stage.manager.delete(f"{grants}/{weaker}").status_code == 204


def climb_create_robot(stage: Stage) -> None:
    robots = f"/projects/{stage.project}/robots"
    rule = {"project": stage.project, **PUSH_EVERYWHERE}
    assert_problem(stage.manager.post(robots, json={"name": "strong", "permissions": [rule]}), 403)
    weak = {"project": stage.project, **PULL_EVERYWHERE}
    created = stage.manager.post(robots, json={"name": "weak", "permissions": [weak]})
    assert created.status_code == 201, created.text


def climb_update_robot(stage: Stage) -> None:
    robots = f"/projects/{stage.project}/robots"
    strong = _robot(stage, "strong", PUSH_EVERYWHERE)
    weak = _robot(stage, "weak", PULL_EVERYWHERE)
    assert stage.admin.patch(f"{robots}/{strong}", json={"disabled": True}).status_code == 200
    # Re-enabling a robot hands its power back out: only for those who hold it.
    assert_problem(stage.manager.patch(f"{robots}/{strong}", json={"disabled": False}), 403)
    narrowed = {"permissions": [{"project": stage.project, **PULL_EVERYWHERE}]}
    assert_problem(stage.manager.patch(f"{robots}/{strong}", json=narrowed), 403)
    widened = {"permissions": [{"project": stage.project, **PUSH_EVERYWHERE}]}
    assert_problem(stage.manager.patch(f"{robots}/{weak}", json=widened), 403)
    assert stage.manager.patch(f"{robots}/{weak}", json={"disabled": True}).status_code == 200
    robot = stage.admin.get(f"{robots}/{strong}").json()
    assert robot["disabled"] is True
    assert robot["permissions"][0]["actions"] == ["delete", "pull", "push"]


def climb_delete_robot(stage: Stage) -> None:
    robots = f"/projects/{stage.project}/robots"
    strong = _robot(stage, "strong", PUSH_EVERYWHERE)
    weak = _robot(stage, "weak", PULL_EVERYWHERE)
    assert_problem(stage.manager.delete(f"{robots}/{strong}"), 403)
    assert stage.manager.delete(f"{robots}/{weak}").status_code == 204
    assert stage.admin.get(f"{robots}/{strong}").status_code == 200


def climb_rotate_robot(stage: Stage) -> None:
    robots = f"/projects/{stage.project}/robots"
    strong = _robot(stage, "strong", PUSH_EVERYWHERE)
    weak = _robot(stage, "weak", PULL_EVERYWHERE)
    refused = stage.manager.post(f"{robots}/{strong}/rotate")
    assert_problem(refused, 403)
    assert "secret" not in refused.text
    rotated = stage.manager.post(f"{robots}/{weak}/rotate")
    assert rotated.status_code == 200, rotated.text
    assert rotated.json()["secret"]


def read_only(stage: Stage) -> None:
    """Listing and reading members, grants and robots changes nobody's power (and shows no
    secret): nothing to climb."""


ROBOT = "/api/v1/projects/{project}/robots/{robot}"
MEMBER = "/api/v1/projects/{project}/members/{kind:(?:user|group)}/{member}"
CLIMBS: dict[tuple[str, str], Callable[[Stage], None]] = {
    ("PUT", MEMBER): climb_set_member,
    ("DELETE", MEMBER): climb_remove_member,
    ("POST", "/api/v1/projects/{project}/grants"): climb_add_grant,
    ("DELETE", "/api/v1/projects/{project}/grants/{grant:[0-9]+}"): climb_delete_grant,
    ("POST", "/api/v1/projects/{project}/robots"): climb_create_robot,
    ("PATCH", ROBOT): climb_update_robot,
    ("DELETE", ROBOT): climb_delete_robot,
    ("POST", f"{ROBOT}/rotate"): climb_rotate_robot,
    ("GET", "/api/v1/projects/{project}/grants"): read_only,
    ("GET", "/api/v1/projects/{project}/robots"): read_only,
    ("GET", ROBOT): read_only,
}


def principal_routes() -> list[tuple[str, str, Action]]:
    found = []
    for route in API_ROUTES:
        permission = route.permission
        if permission.scope is Scope.PROJECT and permission.action in PRINCIPAL_ACTIONS:
            assert isinstance(permission.action, Action)
            found.append((route.method, route.path, permission.action))
    return found


def test_every_route_that_changes_a_principal_has_a_climb_case() -> None:
    routes = {(method, path) for method, path, _ in principal_routes()}
    assert routes == set(CLIMBS)


@pytest.mark.parametrize(
    ("method", "path", "action"),
    principal_routes(),
    ids=[f"{method} {path}" for method, path, _ in principal_routes()],
)
def test_no_management_route_lets_a_manager_climb(
    admin_api: httpx.Client,
    api_registry: RegistryProcess,
    method: str,
    path: str,
    action: Action,
) -> None:
    stage = _stage(admin_api, api_registry, action)
    try:
        CLIMBS[(method, path)](stage)
    finally:
        stage.manager.close()


def test_a_project_keeps_its_last_project_admin(
    admin_api: httpx.Client, api_registry: RegistryProcess
) -> None:
    project = create_project(admin_api, "last")
    owner, second = create_user(admin_api, "own"), create_user(admin_api, "sec")
    set_role(admin_api, project, owner, "project-admin")
    member = f"/projects/{project}/members/user"
    # The creator of the project was its first project admin; the owner takes over.
    assert admin_api.delete(f"{member}/admin").status_code in (204, 404)
    assert [m["name"] for m in admin_api.get(f"/projects/{project}/members").json()] == [owner]
    # Not even a system administrator leaves a project without a project admin...
    problem = assert_problem(admin_api.put(f"{member}/{owner}", json={"role": "developer"}), 409)
    assert "last project admin" in problem["detail"]
    assert_problem(admin_api.delete(f"{member}/{owner}"), 409)
    # ... and the owner cannot step down alone either.
    with api_client(api_registry, owner, PASSWORD) as api:
        assert_problem(api.put(f"{member}/{owner}", json={"role": "developer"}), 409)
        # With a second project admin, either may step down.
        assert api.put(f"{member}/{second}", json={"role": "project-admin"}).status_code == 200
        assert api.put(f"{member}/{owner}", json={"role": "developer"}).status_code == 200
    assert_problem(admin_api.delete(f"{member}/{second}"), 409)
    listed = admin_api.get(f"/projects/{project}/members").json()
    assert {"kind": "user", "name": second, "role": "project-admin"} in listed


def test_a_project_admin_may_manage_what_they_hold(
    admin_api: httpx.Client, api_registry: RegistryProcess
) -> None:
    project = create_project(admin_api, "own")
    owner, other = create_user(admin_api, "own"), create_user(admin_api, "oth")
    set_role(admin_api, project, owner, "project-admin")
    set_role(admin_api, project, other, "project-admin")
    robots = f"/projects/{project}/robots"
    with api_client(api_registry, owner, PASSWORD) as api:
        rule = {"project": project, **PUSH_EVERYWHERE}
        assert api.post(robots, json={"name": "ci", "permissions": [rule]}).status_code == 201
        assert api.post(f"{robots}/ci/rotate").status_code == 200
        assert api.patch(f"{robots}/ci", json={"disabled": True}).status_code == 200
        assert api.patch(f"{robots}/ci", json={"disabled": False}).status_code == 200
        demote = api.put(f"/projects/{project}/members/user/{other}", json={"role": "guest"})
        assert demote.status_code == 200
        assert api.delete(f"{robots}/ci").status_code == 204
