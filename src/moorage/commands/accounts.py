"""`moorage user`, `moorage group` and `moorage token`: accounts and personal access tokens."""

from __future__ import annotations

import click

from moorage.commands.api import listing, show, text_output_option
from moorage.commands.common import (
    cli_actor,
    parse_rules,
    read_password,
    services,
    show_secret,
    table,
    with_settings,
)
from moorage.config import Settings

_PAGE = 500
password_stdin_option = click.option(
    "--password-stdin", is_flag=True, help="Read the password from standard input (no prompt)."
)


class _UserGroup(click.Group):
    """`user show` and `user update` run the API's endpoints, which load the whole API: only
    when they are asked for, so that the other user commands start quickly."""

    _LATE = ("show", "update")

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self._LATE})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self._LATE and cmd_name not in self.commands:
            _api_commands()
        return super().get_command(ctx, cmd_name)


@click.group(cls=_UserGroup)
def user() -> None:
    """Users."""


@user.command("create")
@click.argument("username")
@click.option("--email", help="Contact address.")
@click.option("--admin", is_flag=True, help="Make the user a system administrator.")
@password_stdin_option
@with_settings
def create_user(
    settings: Settings, username: str, email: str | None, admin: bool, password_stdin: bool
) -> None:
    """Create a user."""
    password = read_password(password_stdin)
    with services(settings) as s:
        s.identity.create_user(cli_actor(), username, password, email, admin)
    click.echo(f"created user {username}")


@user.command("list")
@text_output_option
@with_settings
def list_users(settings: Settings, output: str) -> None:
    """Users as USERNAME, admin, disabled, EMAIL (tab-separated)."""
    if listing(output, settings, "/api/v1/users"):
        return
    with services(settings) as s:
        after: str | None = None
        while page := s.identity.users(after, _PAGE):
            table(
                [
                    (
                        row.username,
                        _flag(row.is_admin, "admin"),
                        _flag(row.disabled, "disabled"),
                        row.email,
                    )
                    for row in page
                ]
            )
            after = page[-1].username


@user.command("passwd")
@click.argument("username")
@password_stdin_option
@with_settings
def set_password(settings: Settings, username: str, password_stdin: bool) -> None:
    """Set a user's password."""
    password = read_password(password_stdin)
    with services(settings) as s:
        s.identity.change_password(cli_actor(), username, password, None)
    click.echo(f"changed the password of {username}")


@user.command("set-admin")
@click.argument("username")
@click.option("--revoke", is_flag=True, help="Take administration away instead.")
@with_settings
def set_admin(settings: Settings, username: str, revoke: bool) -> None:
    """Make a user a system administrator (or no longer one)."""
    with services(settings) as s:
        s.identity.update_user(cli_actor(), username, is_admin=not revoke)
    click.echo(f"{username} is {'no longer' if revoke else 'now'} an administrator")


@user.command("delete")
@click.argument("username")
@click.confirmation_option(prompt="Delete this user and their tokens?")
@with_settings
def delete_user(settings: Settings, username: str) -> None:
    """Delete a user with their tokens, memberships and grants."""
    with services(settings) as s:
        s.identity.delete_user(cli_actor(), username)
    click.echo(f"deleted user {username}")


@click.group()
def group() -> None:
    """Groups of users."""


@group.command("create")
@click.argument("name")
@with_settings
def create_group(settings: Settings, name: str) -> None:
    """Create a group."""
    with services(settings) as s:
        s.identity.create_group(cli_actor(), name)
    click.echo(f"created group {name}")


@group.command("list")
@text_output_option
@with_settings
def list_groups(settings: Settings, output: str) -> None:
    """Groups as NAME, MEMBERS (comma-separated)."""
    if listing(output, settings, "/api/v1/groups"):
        return
    with services(settings) as s:
        table([(row.name, ",".join(members)) for row, members in s.identity.groups()])


@group.command("add-member")
@click.argument("name")
@click.argument("username")
@with_settings
def add_group_member(settings: Settings, name: str, username: str) -> None:
    """Add a user to a group."""
    with services(settings) as s:
        s.identity.set_group_member(cli_actor(), name, username, True)
    click.echo(f"added {username} to {name}")


@group.command("remove-member")
@click.argument("name")
@click.argument("username")
@with_settings
def remove_group_member(settings: Settings, name: str, username: str) -> None:
    """Remove a user from a group."""
    with services(settings) as s:
        s.identity.set_group_member(cli_actor(), name, username, False)
    click.echo(f"removed {username} from {name}")


@group.command("delete")
@click.argument("name")
@with_settings
def delete_group(settings: Settings, name: str) -> None:
    """Delete a group (its roles and grants go with it)."""
    with services(settings) as s:
        s.identity.delete_group(cli_actor(), name)
    click.echo(f"deleted group {name}")


@click.group()
def token() -> None:
    """Personal access tokens (mpat_…)."""


@token.command("create")
@click.argument("username")
@click.argument("name")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    metavar="PROJECT:PATTERN:ACTIONS",
    help="Narrow the token, e.g. team:app/**:pull (repeatable). Default: the user's access.",
)
@click.option("--expires-days", type=click.IntRange(1, 3650), help="Expire after N days.")
@with_settings
def create_token(
    settings: Settings,
    username: str,
    name: str,
    scopes: tuple[str, ...],
    expires_days: int | None,
) -> None:
    """Create a token for a user and print its secret (once)."""
    rules = parse_rules(scopes) if scopes else None
    with services(settings) as s:
        issued = s.identity.create_token(cli_actor(), username, name, rules, expires_days)
    show_secret(f"created token {name} for {username}", issued.secret)


@token.command("list")
@click.argument("username")
@text_output_option
@with_settings
def list_tokens(settings: Settings, username: str, output: str) -> None:
    """A user's tokens as NAME, state, EXPIRES, LAST USED (never their secrets)."""
    with services(settings) as s:
        rows = s.identity.tokens(username)
    if output != "text":
        # The API lists only the caller's own tokens; its view of each is the same.
        from moorage.http.api.users import token_view

        views = [token_view(row).model_dump(mode="json", by_alias=True) for row in rows]
        show(views, output, None, None)
        return
    table(
        [
            (row.name, "revoked" if row.revoked else "active", row.expires_at, row.last_used_at)
            for row in rows
        ]
    )


@token.command("revoke")
@click.argument("username")
@click.argument("name")
@with_settings
def revoke_token(settings: Settings, username: str, name: str) -> None:
    """Revoke a user's token."""
    with services(settings) as s:
        s.identity.revoke_token(cli_actor(), username, name)
    click.echo(f"revoked token {name} of {username}")


def _flag(value: bool, label: str) -> str:
    return label if value else "-"


def _api_commands() -> None:
    from moorage.commands.api import api_command

    api_command(user, "show", "GET", "/api/v1/users/{username}")
    api_command(
        user,
        "update",
        "PATCH",
        "/api/v1/users/{username}",
        help="Change the given fields of a user (--email, --admin/--no-admin,"
        " --disabled/--no-disabled); others stay as they are.",
        done="changed user {username}",
    )
