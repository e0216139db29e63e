"""Users (administrators manage them) and the signed-in user's own profile, password and tokens."""

from __future__ import annotations

from pydantic import Field

from moorage.http.access import ADMIN, AUTHENTICATED, OWN_CREDENTIALS
from moorage.http.api.common import (
    AccessRule,
    AccessRuleView,
    Email,
    ExpiryDays,
    Name,
    PageQuery,
    Password,
    rule_views,
    rules_for_service,
)
from moorage.http.api.framework import (
    ApiModel,
    ApiRoute,
    Call,
    Page,
    RequestModel,
    UtcDateTime,
    page_of,
)
from moorage.metadata.access.iam_models import PersonalAccessToken
from moorage.metadata.access.iam_models import User as UserRow

USERS = "users"
ME = "/api/v1/users/me"


class User(ApiModel):
    username: str
    email: str | None
    admin: bool
    disabled: bool
    created_at: UtcDateTime


class NewUser(RequestModel):
    username: Name
    password: Password
    email: Email | None = None
    admin: bool = False


class UserChanges(RequestModel):
    """Fields left out (or null) stay as they are."""

    email: Email | None = None
    admin: bool | None = None
    disabled: bool | None = None


class PasswordReset(RequestModel):
    new_password: Password


class PasswordChange(RequestModel):
    current_password: Password
    new_password: Password


class Token(ApiModel):
    name: str
    scopes: list[AccessRuleView] | None = Field(description="null: the user's full access")
    expires_at: UtcDateTime | None
    revoked: bool
    created_at: UtcDateTime
    last_used_at: UtcDateTime | None


class IssuedToken(Token):
    token: str = Field(description="the secret: shown only in this response")


class NewToken(RequestModel):
    name: Name
    scopes: list[AccessRule] | None = Field(None, min_length=1, max_length=50)
    expires_in_days: ExpiryDays | None = None


def user_view(row: UserRow) -> User:
    return User(
        username=row.username,
        email=row.email,
        admin=row.is_admin,
        disabled=row.disabled,
        created_at=row.created_at,
    )


def token_view(row: PersonalAccessToken) -> Token:
    return Token(
        name=row.name,
        scopes=rule_views(row.scopes),
        expires_at=row.expires_at,
        revoked=row.revoked,
        created_at=row.created_at,
        last_used_at=row.last_used_at,
    )


# -- administration


async def list_users(call: Call) -> Page:
    query = call.query(PageQuery)
    rows = await call.run(call.iam.identity.users, query.after, query.limit)
    return page_of(
        [user_view(row) for row in rows],
        query.limit,
        lambda last: {"limit": str(query.limit), "after": last.username},
    )


async def create_user(call: Call) -> User:
    body = call.body(NewUser)
    identity = call.iam.identity
    await call.run(
        identity.create_user, call.actor, body.username, body.password, body.email, body.admin
    )
    return user_view(await call.run(identity.user, body.username))


async def get_user(call: Call) -> User:
    return user_view(await call.run(call.iam.identity.user, call.param("username")))


async def update_user(call: Call) -> User:
    body = call.body(UserChanges)
    username = call.param("username")
    identity = call.iam.identity
    await call.run(
        identity.update_user,
        call.actor,
        username,
        email=body.email,
        is_admin=body.admin,
        disabled=body.disabled,
    )
    return user_view(await call.run(identity.user, username))


async def delete_user(call: Call) -> None:
    await call.run(call.iam.identity.delete_user, call.actor, call.param("username"))


async def reset_password(call: Call) -> None:
    body = call.body(PasswordReset)
    await call.run(
        call.iam.identity.change_password,
        call.actor,
        call.param("username"),
        body.new_password,
        None,
    )


# -- self service


async def get_me(call: Call) -> User:
    return user_view(await call.run(call.iam.identity.profile, call.subject))


async def change_own_password(call: Call) -> None:
    body = call.body(PasswordChange)
    identity = call.iam.identity
    me = await call.run(identity.profile, call.subject)
    await call.run(
        identity.change_password, call.actor, me.username, body.new_password, body.current_password
    )


async def list_own_tokens(call: Call) -> list[Token]:
    identity = call.iam.identity
    me = await call.run(identity.profile, call.subject)
    return [token_view(row) for row in await call.run(identity.tokens, me.username)]


async def create_own_token(call: Call) -> IssuedToken:
    body = call.body(NewToken)
    identity = call.iam.identity
    me = await call.run(identity.profile, call.subject)
    scopes = rules_for_service(body.scopes) if body.scopes is not None else None
    issued = await call.run(
        identity.create_token, call.actor, me.username, body.name, scopes, body.expires_in_days
    )
    rows = await call.run(identity.tokens, me.username)
    row = next(row for row in rows if row.name == issued.name)
    return IssuedToken.model_validate({**token_view(row).model_dump(), "token": issued.secret})


async def revoke_own_token(call: Call) -> None:
    identity = call.iam.identity
    me = await call.run(identity.profile, call.subject)
    await call.run(identity.revoke_token, call.actor, me.username, call.param("token"))


# `me` routes come first so that "me" is never taken for a username.
ROUTES: tuple[ApiRoute, ...] = (
    ApiRoute("GET", ME, get_me, AUTHENTICATED, "The signed-in user", USERS, response=User),
    ApiRoute(
        "PUT",
        f"{ME}/password",
        change_own_password,
        OWN_CREDENTIALS,
        "Change your own password (needs the current one)",
        USERS,
        body=PasswordChange,
        status=204,
    ),
    ApiRoute(
        "GET",
        f"{ME}/tokens",
        list_own_tokens,
        AUTHENTICATED,
        "Your personal access tokens (never their secrets)",
        USERS,
        response=Token,
        many=True,
    ),
    ApiRoute(
        "POST",
        f"{ME}/tokens",
        create_own_token,
        OWN_CREDENTIALS,
        "Create a personal access token; its secret is returned only here",
        USERS,
        body=NewToken,
        response=IssuedToken,
        status=201,
        errors=(409,),
    ),
    ApiRoute(
        "DELETE",
        f"{ME}/tokens/{{token}}",
        revoke_own_token,
        OWN_CREDENTIALS,
        "Revoke one of your personal access tokens",
        USERS,
        status=204,
    ),
    ApiRoute(
        "GET",
        "/api/v1/users",
        list_users,
        ADMIN,
        "List users by name",
        USERS,
        query=PageQuery,
        response=User,
        many=True,
        paged=True,
    ),
    ApiRoute(
        "POST",
        "/api/v1/users",
        create_user,
        ADMIN,
        "Create a user",
        USERS,
        body=NewUser,
        response=User,
        status=201,
        errors=(409,),
    ),
    ApiRoute("GET", "/api/v1/users/{username}", get_user, ADMIN, "One user", USERS, response=User),
    ApiRoute(
        "PATCH",
        "/api/v1/users/{username}",
        update_user,
        ADMIN,
        "Change a user's email, administrator flag or disabled flag (not your own flags)",
        USERS,
        body=UserChanges,
        response=User,
        errors=(409,),
    ),
    ApiRoute(
        "DELETE",
        "/api/v1/users/{username}",
        delete_user,
        ADMIN,
        "Delete a user (not yourself)",
        USERS,
        status=204,
        errors=(409,),
    ),
    ApiRoute(
        "PUT",
        "/api/v1/users/{username}/password",
        reset_password,
        ADMIN,
        "Set another user's password",
        USERS,
        body=PasswordReset,
        status=204,
        errors=(409,),
    ),
)
