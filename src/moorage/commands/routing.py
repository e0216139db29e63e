"""`moorage proxy`, `moorage virtual` and `moorage mirror`: where names are served from (a
proxied upstream, an ordered list of projects, the default mirror), through the same endpoints
as /api/v1 (see `moorage.commands.api`)."""

from __future__ import annotations

import click

from moorage.commands.api import api_command
from moorage.http.api.proxy import PROXY_PATH
from moorage.http.api.virtual_projects import MIRROR_PATH, VIRTUAL_PATH


@click.group()
def proxy() -> None:
    """Proxy-cache projects: a project that pulls through an upstream registry."""


api_command(proxy, "show", "GET", PROXY_PATH)
api_command(
    proxy,
    "set",
    "PUT",
    PROXY_PATH,
    help="Make the project a proxy cache of --url (or change its upstream). A password or"
    " token is read from standard input; a credential left out is kept while the username"
    " stays the same. Example: moorage proxy set hub --url https://registry-1.docker.io"
    " --flavor docker-hub",
    done="project {project} is a proxy cache of {url}",
)
api_command(
    proxy,
    "update",
    "PATCH",
    PROXY_PATH,
    help="Change only the fields given; the others keep their values (JSON merge patch:"
    " with --from-file, null restores a field's default or removes a stored credential)."
    " Example: moorage proxy update hub --tag-ttl-seconds 600",
    done="proxy cache {project} updated",
)
api_command(proxy, "remove", "DELETE", PROXY_PATH, done="project {project} is no longer a proxy")
api_command(proxy, "check", "POST", f"{PROXY_PATH}/check")


@click.group()
def virtual() -> None:
    """Virtual projects: one name in front of an ordered list of projects."""


api_command(virtual, "show", "GET", VIRTUAL_PATH)
api_command(
    virtual,
    "set",
    "PUT",
    VIRTUAL_PATH,
    help="Make an empty project virtual: pulls try --members in order (repeat the option),"
    " pushes go to --push-member. Example: moorage virtual set all --members team"
    " --members hub --push-member team",
    done="project {project} is a virtual project",
)
api_command(
    virtual, "remove", "DELETE", VIRTUAL_PATH, done="project {project} is no longer virtual"
)


@click.group()
def mirror() -> None:
    """The default mirror: the proxy-cache project that serves names without a project."""


api_command(mirror, "show", "GET", MIRROR_PATH)
api_command(
    mirror,
    "set",
    "PUT",
    MIRROR_PATH,
    help="Make proxy-cache project --project the default mirror; --from-file with"
    ' {"project": null} turns the mirror off, overriding the configuration file.',
    done="set the default mirror",
)
api_command(
    mirror,
    "remove",
    "DELETE",
    MIRROR_PATH,
    help="Forget the mirror set here: the configuration file's mirror_project applies again.",
    done="removed the default mirror set here",
)
