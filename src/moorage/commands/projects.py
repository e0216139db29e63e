"""`moorage project`, `moorage member` and `moorage robot`."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TextIO

import click

from moorage.commands.api import (
    COMMAND_ROUTES,
    execute,
    execute_each,
    listing,
    output_option,
    show,
    text_output_option,
)
from moorage.commands.common import (
    cli_actor,
    parse_rules,
    services,
    show_secret,
    table,
    with_settings,
)
from moorage.config import Settings
from moorage.domain.access import robot_full_name
from moorage.services.distribution.proxy import ProxyInput

_PAGE = 500
kind_option = click.option("--group", "is_group", is_flag=True, help="NAME is a group, not a user.")
project_option = click.option(
    "--project", help="The robot's project (leave out for a system robot)."
)


@click.group()
def project() -> None:
    """Projects."""


@project.command("create")
@click.argument("name")
@click.option("--public", is_flag=True, help="Anyone may pull, even without signing in.")
@click.option("--owner", help="A user to make project-admin.")
@with_settings
def create_project(settings: Settings, name: str, public: bool, owner: str | None) -> None:
    """Create a project."""
    with services(settings) as s:
        owner_id = s.identity.user(owner).id if owner else None
        s.projects.create(cli_actor(), name, public, owner_id)
    click.echo(f"created project {name}")


@project.command("list")
@text_output_option
@with_settings
def list_projects(settings: Settings, output: str) -> None:
    """Projects as NAME, public|private, CREATED BY."""
    if output != "text":
        # The API lists the projects its caller may read; the operator reads them all.
        names: list[str] = []
        with services(settings) as s:
            while page := s.projects.list_projects(None, names[-1] if names else None, _PAGE):
                names += [p.name for p in page]
        result = execute_each(
            output, settings, "GET", "/api/v1/projects/{project}", [{"project": n} for n in names]
        )
        show(result, output, None, None)
        return
    with services(settings) as s:
        after: str | None = None
        while page := s.projects.list_projects(None, after, _PAGE):
            table([(p.name, "public" if p.public else "private", p.created_by) for p in page])
            after = page[-1].name


@project.command("set-public")
@click.argument("name")
@click.argument("public", type=click.BOOL)
@with_settings
def set_public(settings: Settings, name: str, public: bool) -> None:
    """Make a project public (true) or private (false)."""
    with services(settings) as s:
        s.projects.update(cli_actor(), name, public)
    click.echo(f"{name} is now {'public' if public else 'private'}")


@project.command("delete")
@click.argument("name")
@click.confirmation_option(
    prompt="Delete this project with every repository in it, its members, grants and robots?"
    " (garbage collection frees the bytes)"
)
@with_settings
def delete_project(settings: Settings, name: str) -> None:
    """Delete a project with every repository in it (tags, manifests, links), its members,
    grants, robots and policies; the next garbage collection frees the bytes."""
    execute("text", settings, "DELETE", "/api/v1/projects/{project}", {"project": name})
    click.echo(f"deleted project {name}")


@project.command("proxy")
@click.argument("name")
@click.option("--url", required=True, help="The upstream registry's base URL.")
@click.option(
    "--flavor",
    type=click.Choice(["oci", "docker-hub"]),
    help="docker-hub maps single-segment names to library/ (default: from the URL).",
)
@click.option("--username", help="Upstream username.")
@click.option(
    "--password-stdin", is_flag=True, help="Read the upstream password from standard input."
)
@click.option(
    "--token-stdin", is_flag=True, help="Read an upstream bearer token from standard input."
)
@click.option("--clear-credentials", is_flag=True, help="Remove the stored password or token.")
@click.option("--ca-bundle", type=click.File("r"), help="PEM certificates to trust.")
@click.option("--client-cert", type=click.File("r"), help="PEM client certificate (mutual TLS).")
@click.option("--client-key", type=click.File("r"), help="PEM key of --client-cert.")
@click.option(
    "--allow-private-network", is_flag=True, help="Allow a loopback or private upstream address."
)
@click.option("--tag-ttl", type=int, default=600, show_default=True, help="Seconds.")
@click.option("--timeout", type=int, default=30, show_default=True, help="Seconds.")
@click.option(
    "--platform", "platforms", multiple=True, help="os/architecture[/variant] (repeatable)."
)
@click.option(
    "--anonymous-fetch",
    is_flag=True,
    help="In a public project, anyone who may pull may fetch new content.",
)
@with_settings
def set_proxy(
    settings: Settings,
    name: str,
    url: str,
    flavor: str | None,
    username: str | None,
    password_stdin: bool,
    token_stdin: bool,
    clear_credentials: bool,
    ca_bundle: TextIO | None,
    client_cert: TextIO | None,
    client_key: TextIO | None,
    allow_private_network: bool,
    tag_ttl: int,
    timeout: int,
    platforms: tuple[str, ...],
    anonymous_fetch: bool,
) -> None:
    """Make project NAME a proxy cache of an upstream registry (or change its upstream).

    A credential left out is kept while the username stays the same.
    """
    if password_stdin and token_stdin:
        raise click.UsageError("--password-stdin and --token-stdin exclude each other")
    secret = sys.stdin.readline().rstrip("\r\n") if password_stdin or token_stdin else None
    given = ProxyInput(
        url=url,
        flavor=flavor,
        username=username,
        password=secret if password_stdin else None,
        token=secret if token_stdin else None,
        clear_credentials=clear_credentials,
        ca_bundle=ca_bundle.read() if ca_bundle else None,
        client_cert=client_cert.read() if client_cert else None,
        client_key=client_key.read() if client_key else None,
        allow_private_network=allow_private_network,
        tag_ttl_seconds=tag_ttl,
        timeout_seconds=timeout,
        platforms=list(platforms),
        anonymous_fetch=anonymous_fetch,
    )
    with services(settings) as s:
        view = s.proxies.set(cli_actor(), name, given)
    click.echo(f"project {name} is a proxy cache of {view.url} ({view.flavor})")


@project.command("proxy-show")
@click.argument("name")
@with_settings
def show_proxy(settings: Settings, name: str) -> None:
    """The upstream of proxy-cache project NAME (never its credentials)."""
    with services(settings) as s:
        view = s.proxies.get(name)
    table(
        [
            ("url", view.url),
            ("flavor", view.flavor),
            ("username", view.username),
            ("credential", view.credential),
            ("ca-bundle", view.ca_bundle),
            ("client-certificate", view.client_certificate),
            ("allow-private-network", view.allow_private_network),
            ("tag-ttl", view.tag_ttl_seconds),
            ("timeout", view.timeout_seconds),
            ("platforms", ",".join(view.platforms) or "all"),
            ("anonymous-fetch", view.anonymous_fetch),
        ]
    )


@project.command("proxy-remove")
@click.argument("name")
@with_settings
def remove_proxy(settings: Settings, name: str) -> None:
    """Stop proxying: project NAME keeps what it cached."""
    with services(settings) as s:
        s.proxies.remove(cli_actor(), name)
    click.echo(f"project {name} is no longer a proxy cache")


@click.group()
def member() -> None:
    """Project members and their roles."""


@member.command("set")
@click.argument("project_name", metavar="PROJECT")
@click.argument("name")
@click.argument("role")
@kind_option
@with_settings
def set_member(settings: Settings, project_name: str, name: str, role: str, is_group: bool) -> None:
    """Give a user (or --group) a role in a project."""
    kind = "group" if is_group else "user"
    with services(settings) as s:
        s.projects.set_member(cli_actor(), project_name, kind, name, role)
    click.echo(f"{kind} {name} is {role} in {project_name}")


@member.command("remove")
@click.argument("project_name", metavar="PROJECT")
@click.argument("name")
@kind_option
@with_settings
def remove_member(settings: Settings, project_name: str, name: str, is_group: bool) -> None:
    """Take a user's (or --group's) role in a project away."""
    kind = "group" if is_group else "user"
    with services(settings) as s:
        s.projects.remove_member(cli_actor(), project_name, kind, name)
    click.echo(f"removed {kind} {name} from {project_name}")


@member.command("list")
@click.argument("project_name", metavar="PROJECT")
@text_output_option
@with_settings
def list_members(settings: Settings, project_name: str, output: str) -> None:
    """Members as KIND, NAME, ROLE."""
    path = "/api/v1/projects/{project}/members"
    if listing(output, settings, path, [{"project": project_name}]):
        return
    with services(settings) as s:
        table(list(s.projects.members(project_name)))


@click.group()
def robot() -> None:
    """Robot accounts (project robots, or system robots without --project)."""


@robot.command("create")
@click.argument("name")
@project_option
@click.option(
    "--allow",
    "rules",
    multiple=True,
    required=True,
    metavar="PROJECT:PATTERN:ACTIONS",
    help="What it may do, e.g. team:app/**:pull,push (PATTERN:ACTIONS with --project).",
)
@click.option("--description", help="What the robot is for.")
@click.option("--expires-days", type=click.IntRange(1, 3650), help="Expire after N days.")
@with_settings
def create_robot(
    settings: Settings,
    name: str,
    project: str | None,
    rules: tuple[str, ...],
    description: str | None,
    expires_days: int | None,
) -> None:
    """Create a robot and print its secret (once)."""
    permissions = parse_rules(rules, default_project=project)
    with services(settings) as s:
        issued = s.identity.create_robot(
            cli_actor(), name, permissions, project, expires_days, description
        )
    show_secret(f"created {issued.name}", issued.secret)


@robot.command("list")
@project_option
@text_output_option
@with_settings
def list_robots(settings: Settings, project: str | None, output: str) -> None:
    """Robots as NAME, enabled|disabled, EXPIRES, LAST USED, PERMISSIONS."""
    path = "/api/v1/robots" if project is None else "/api/v1/projects/{project}/robots"
    if listing(output, settings, path, [{"project": project} if project else {}]):
        return
    with services(settings) as s:
        rows = s.identity.robots(project)
    table(
        [
            (
                row.name,
                "disabled" if row.disabled else "enabled",
                row.expires_at,
                row.last_used_at,
                " ".join(_rule_text(rule) for rule in row.permissions),
            )
            for row in rows
        ]
    )


def _rule_text(rule: Mapping[str, object]) -> str:
    actions = rule["actions"]
    listed = ",".join(map(str, actions)) if isinstance(actions, list) else str(actions)
    return f"{rule['project']}:{rule['repositories']}:{listed}"


@robot.command("rotate")
@click.argument("name")
@project_option
@with_settings
def rotate_robot(settings: Settings, name: str, project: str | None) -> None:
    """Give a robot a new secret and print it (once); the old one stops working."""
    with services(settings) as s:
        issued = s.identity.rotate_robot(cli_actor(), robot_full_name(name, project), project)
    show_secret(f"rotated {issued.name}", issued.secret)


@robot.command("disable")
@click.argument("name")
@project_option
@click.option("--enable", is_flag=True, help="Enable it again instead.")
@with_settings
def disable_robot(settings: Settings, name: str, project: str | None, enable: bool) -> None:
    """Disable a robot (or --enable it again)."""
    full_name = robot_full_name(name, project)
    with services(settings) as s:
        s.identity.update_robot(cli_actor(), full_name, project, disabled=not enable)
    click.echo(f"{full_name} is {'enabled' if enable else 'disabled'}")


@robot.command("delete")
@click.argument("name")
@project_option
@with_settings
def delete_robot(settings: Settings, name: str, project: str | None) -> None:
    """Delete a robot."""
    full_name = robot_full_name(name, project)
    with services(settings) as s:
        s.identity.delete_robot(cli_actor(), full_name, project)
    click.echo(f"deleted {full_name}")


@robot.command("allow")
@click.argument("name")
@project_option
@click.option(
    "--allow",
    "rules",
    multiple=True,
    required=True,
    metavar="PROJECT:PATTERN:ACTIONS",
    help="What it may do from now on, e.g. team:app/**:pull (PATTERN:ACTIONS with --project);"
    " replaces every rule it had.",
)
@output_option
@with_settings
def allow_robot(
    settings: Settings, name: str, project: str | None, rules: tuple[str, ...], output: str
) -> None:
    """Replace what a robot may do (its secret stays the same)."""
    permissions = parse_rules(rules, default_project=project)
    route = ROBOT_ROUTES[project is not None]
    params = {"robot": name} | ({"project": project} if project is not None else {})
    result = execute(output, settings, "PATCH", route, params, {"permissions": permissions})
    show(result, output, f"changed what {robot_full_name(name, project)} may do", None)


# The API routes `robot allow` runs (system robots, project robots); written out so that the
# other robot commands do not load the API.
ROBOT_ROUTES = {
    False: "/api/v1/robots/{robot}",
    True: "/api/v1/projects/{project}/robots/{robot}",
}
COMMAND_ROUTES[allow_robot] = [("PATCH", path) for path in ROBOT_ROUTES.values()]
