"""Users through the management API: administration, self service and personal access tokens."""

from __future__ import annotations

import httpx

from tests.support.api import (
    PASSWORD,
    api_client,
    assert_problem,
    bearer_client,
    create_project,
    create_user,
    eventually,
    unique,
)
from tests.support.auth import ADMIN_USER
from tests.support.server import RegistryProcess


def _refused(server: RegistryProcess, username: str, secret: str) -> bool:
    with api_client(server, username, secret) as client:
        return client.get("/users/me").status_code == 401


def test_admin_creates_reads_updates_and_deletes_a_user(admin_api: httpx.Client) -> None:
    username = unique("crud")
    created = admin_api.post(
        "/users",
        json={"username": username, "password": PASSWORD, "email": f"{username}@example.com"},
    )
    assert created.status_code == 201
    body = created.json()
    assert body["username"] == username
    assert body["email"] == f"{username}@example.com"
    assert body["admin"] is False
    assert body["disabled"] is False
    assert body["createdAt"].endswith("Z")
    assert "password" not in created.text
    assert admin_api.get(f"/users/{username}").json() == body

    changed = admin_api.patch(f"/users/{username}", json={"email": "new@example.com"})
    assert changed.status_code == 200
    assert changed.json()["email"] == "new@example.com"
    assert admin_api.patch(f"/users/{username}", json={"admin": True}).json()["admin"] is True

    assert admin_api.delete(f"/users/{username}").status_code == 204
    assert_problem(admin_api.get(f"/users/{username}"), 404)
    assert_problem(admin_api.delete(f"/users/{username}"), 404)


def test_an_existing_username_is_a_conflict(admin_api: httpx.Client) -> None:
    username = create_user(admin_api)
    response = admin_api.post("/users", json={"username": username, "password": PASSWORD})
    assert "already exists" in assert_problem(response, 409)["detail"]


def test_bad_user_input_is_refused_with_problem_details(admin_api: httpx.Client) -> None:
    bad_name = assert_problem(
        admin_api.post("/users", json={"username": "Not Valid", "password": PASSWORD}), 422
    )
    assert [error["field"] for error in bad_name["errors"]] == ["username"]
    unknown_field = admin_api.post(
        "/users", json={"username": unique("x"), "password": PASSWORD, "role": "god"}
    )
    assert assert_problem(unknown_field, 422)["errors"][0]["field"] == "role"
    snake_case = admin_api.patch(f"/users/{ADMIN_USER}", json={"is_admin": True})
    assert_problem(snake_case, 422)
    wrong_type = admin_api.post("/users", json={"username": unique("x"), "password": 123})
    assert assert_problem(wrong_type, 422)["errors"][0]["field"] == "password"

    short = admin_api.post("/users", json={"username": unique("x"), "password": "short"})
    assert "at least 12" in assert_problem(short, 400)["detail"]

    headers = {"Content-Type": "application/json"}
    assert_problem(admin_api.post("/users", content=b'{"username": ', headers=headers), 400)
    assert_problem(admin_api.post("/users", content=b"[" * 5000, headers=headers), 400)
    assert_problem(admin_api.post("/users", content=b"\xff\xfe", headers=headers), 400)
    as_form = admin_api.post("/users", data={"username": "x"})
    assert_problem(as_form, 415)


def test_errors_never_echo_submitted_secrets(admin_api: httpx.Client) -> None:
    secret = "this-is-a-secret-value-" * 2
    response = admin_api.post("/users", json={"username": "Bad Name", "password": [secret]})
    assert_problem(response, 422)
    assert secret not in response.text


def test_user_list_pages_follow_the_link_header(admin_api: httpx.Client) -> None:
    created = {create_user(admin_api, "pages") for _ in range(3)}
    first = admin_api.get("/users", params={"limit": 2})
    assert len(first.json()) == 2
    assert first.headers["Link"].endswith('; rel="next"')
    assert first.headers["Link"].startswith("</api/v1/users?limit=2&after=")

    seen: list[str] = []
    url: str | None = "/users?limit=2"
    while url is not None:
        page = admin_api.get(url)
        seen += [user["username"] for user in page.json()]
        link = page.headers.get("Link")
        url = link.split(";")[0].strip("<>").removeprefix("/api/v1") if link else None
    assert seen == sorted(set(seen))
    assert created <= set(seen)
    assert ADMIN_USER in seen


def test_page_sizes_are_capped(admin_api: httpx.Client) -> None:
    assert len(admin_api.get("/users", params={"limit": 100}).json()) <= 100
    for limit in ("101", "0", "-1", "many"):
        body = assert_problem(admin_api.get("/users", params={"limit": limit}), 400)
        assert body["errors"][0]["field"] == "limit"
    repeated = admin_api.get("/users?limit=1&limit=2")
    assert "once" in assert_problem(repeated, 400)["detail"]


def test_users_who_are_not_admins_cannot_manage_users(
    api_registry: RegistryProcess, admin_api: httpx.Client
) -> None:
    username = create_user(admin_api)
    other = create_user(admin_api)
    with api_client(api_registry, username, PASSWORD) as user:
        assert_problem(user.get("/users"), 403)
        assert_problem(
            user.post("/users", json={"username": unique("x"), "password": PASSWORD}), 403
        )
        assert_problem(user.get(f"/users/{other}"), 403)
        assert_problem(user.patch(f"/users/{username}", json={"admin": True}), 403)
        assert_problem(user.put(f"/users/{other}/password", json={"newPassword": PASSWORD}), 403)
        assert_problem(user.delete(f"/users/{other}"), 403)
        me = user.get("/users/me")
        assert me.status_code == 200
        assert me.json()["username"] == username
        assert me.json()["admin"] is False


def test_without_credentials_the_api_asks_for_basic_authentication(
    api_registry: RegistryProcess,
) -> None:
    with api_client(api_registry, None) as anonymous:
        response = anonymous.get("/users/me")
    assert_problem(response, 401)
    assert response.headers["WWW-Authenticate"] == 'Basic realm="moorage"'
    with api_client(api_registry, ADMIN_USER, "not-the-password") as wrong:
        assert_problem(wrong.get("/users/me"), 401)


def test_users_change_their_own_password_with_the_current_one(
    api_registry: RegistryProcess, admin_api: httpx.Client
) -> None:
    username = create_user(admin_api)
    new_password = "another-long-password"
    with api_client(api_registry, username, PASSWORD) as user:
        wrong = user.put(
            "/users/me/password",
            json={"currentPassword": "not-my-password", "newPassword": new_password},
        )
        assert "current password" in assert_problem(wrong, 403)["detail"]
        missing = user.put("/users/me/password", json={"newPassword": new_password})
        assert assert_problem(missing, 422)["errors"][0]["field"] == "currentPassword"
        changed = user.put(
            "/users/me/password",
            json={"currentPassword": PASSWORD, "newPassword": new_password},
        )
        assert changed.status_code == 204
    with api_client(api_registry, username, new_password) as user:
        assert user.get("/users/me").status_code == 200
    eventually(lambda: _refused(api_registry, username, PASSWORD), what="old password refused")


def test_admins_reset_other_users_passwords(
    api_registry: RegistryProcess, admin_api: httpx.Client
) -> None:
    username = create_user(admin_api)
    reset = admin_api.put(f"/users/{username}/password", json={"newPassword": "reset-by-admin-1"})
    assert reset.status_code == 204
    with api_client(api_registry, username, "reset-by-admin-1") as user:
        assert user.get("/users/me").status_code == 200
    assert_problem(
        admin_api.put("/users/nobody-here/password", json={"newPassword": PASSWORD}), 404
    )


def test_administrators_cannot_lock_themselves_out(admin_api: httpx.Client) -> None:
    assert_problem(admin_api.patch(f"/users/{ADMIN_USER}", json={"disabled": True}), 409)
    assert_problem(admin_api.patch(f"/users/{ADMIN_USER}", json={"admin": False}), 409)
    assert_problem(
        admin_api.put(f"/users/{ADMIN_USER}/password", json={"newPassword": PASSWORD}), 409
    )
    assert_problem(admin_api.delete(f"/users/{ADMIN_USER}"), 409)
    me = admin_api.get("/users/me").json()
    assert me["admin"] is True
    assert me["disabled"] is False


def test_a_disabled_user_is_refused_and_enabled_again(
    api_registry: RegistryProcess, admin_api: httpx.Client
) -> None:
    username = create_user(admin_api)
    with api_client(api_registry, username, PASSWORD) as user:
        assert user.get("/users/me").status_code == 200
    assert admin_api.patch(f"/users/{username}", json={"disabled": True}).json()["disabled"]
    eventually(lambda: _refused(api_registry, username, PASSWORD), what="disabled user refused")
    admin_api.patch(f"/users/{username}", json={"disabled": False})
    with api_client(api_registry, username, PASSWORD) as user:
        assert user.get("/users/me").status_code == 200


def test_a_personal_access_token_is_shown_once_and_works_until_revoked(
    api_registry: RegistryProcess, admin_api: httpx.Client
) -> None:
    username = create_user(admin_api)
    with api_client(api_registry, username, PASSWORD) as user:
        created = user.post("/users/me/tokens", json={"name": "laptop", "expiresInDays": 30})
        assert created.status_code == 201
        token = created.json()["token"]
        assert token.startswith("mpat_")
        assert created.json()["expiresAt"] is not None
        assert created.json()["scopes"] is None
        listed = user.get("/users/me/tokens")
        assert [item["name"] for item in listed.json()] == ["laptop"]
        assert "token" not in listed.json()[0]
        assert token not in listed.text
        # The secret is everything after `mpat_<public id>_` (it may itself contain `_`).
        assert token.split("_", 2)[2] not in listed.text
        assert_problem(user.post("/users/me/tokens", json={"name": "laptop"}), 409)

    with api_client(api_registry, username, token) as basic:
        assert basic.get("/users/me").json()["username"] == username
    with bearer_client(api_registry, token) as bearer:
        assert bearer.get("/users/me").json()["username"] == username
    with api_client(api_registry, username, PASSWORD) as user:
        assert user.get("/users/me/tokens").json()[0]["lastUsedAt"] is not None
        assert user.delete("/users/me/tokens/laptop").status_code == 204
        assert user.get("/users/me/tokens").json()[0]["revoked"] is True
        assert_problem(user.delete("/users/me/tokens/nothing"), 404)

    def bearer_refused() -> bool:
        with bearer_client(api_registry, token) as bearer:
            return bearer.get("/users/me").status_code == 401

    eventually(lambda: _refused(api_registry, username, token), what="revoked token refused")
    eventually(bearer_refused, what="revoked bearer token refused")


def test_a_scoped_token_neither_administers_nor_mints_tokens(
    api_registry: RegistryProcess, admin_api: httpx.Client
) -> None:
    project = create_project(admin_api)
    scoped = admin_api.post(
        "/users/me/tokens",
        json={
            "name": unique("ci"),
            "scopes": [{"project": project, "repositories": "app/**", "actions": ["pull"]}],
        },
    )
    assert scoped.status_code == 201
    assert scoped.json()["scopes"] == [
        {"project": project, "repositories": "app/**", "actions": ["pull"]}
    ]
    with bearer_client(api_registry, scoped.json()["token"]) as token:
        assert token.get("/users/me").status_code == 200
        assert_problem(token.get("/users"), 403)
        assert_problem(token.get("/settings"), 403)
        assert_problem(token.post("/users/me/tokens", json={"name": unique("more")}), 403)
        assert_problem(
            token.put(
                "/users/me/password",
                json={"currentPassword": PASSWORD, "newPassword": "whatever-long-pw"},
            ),
            403,
        )


def test_token_scopes_are_validated(admin_api: httpx.Client) -> None:
    no_project = admin_api.post(
        "/users/me/tokens", json={"name": unique("t"), "scopes": [{"actions": ["pull"]}]}
    )
    assert assert_problem(no_project, 422)["errors"][0]["field"] == "scopes.0.project"
    bad_action = admin_api.post(
        "/users/me/tokens",
        json={"name": unique("t"), "scopes": [{"project": "p", "actions": ["fly"]}]},
    )
    assert_problem(bad_action, 422)
    bad_glob = admin_api.post(
        "/users/me/tokens",
        json={
            "name": unique("t"),
            "scopes": [{"project": "p", "repositories": "a/***", "actions": ["pull"]}],
        },
    )
    assert_problem(bad_glob, 400)


def test_robots_have_no_user_profile(
    api_registry: RegistryProcess, admin_api: httpx.Client
) -> None:
    created = admin_api.post(
        "/robots",
        json={"name": unique("bot"), "permissions": [{"project": "*", "actions": ["pull"]}]},
    )
    robot = created.json()
    with api_client(api_registry, robot["name"], robot["secret"]) as client:
        assert_problem(client.get("/users/me"), 404)
        assert_problem(client.get("/users/me/tokens"), 404)
