"""`moorage repository`: deleting a repository with everything in it."""

from __future__ import annotations

import click

from moorage.commands.api import COMMAND_ROUTES, execute, output_option, show
from moorage.commands.common import with_settings
from moorage.config import Settings

REPOSITORY_PATH = "/api/v1/projects/{project}/repositories/{name:.+}"


@click.group()
def repository() -> None:
    """Repositories."""


@repository.command("delete")
@click.argument("name")
@click.confirmation_option(
    prompt="Delete this repository with all its tags and manifests? (garbage collection frees"
    " the bytes)"
)
@output_option
@with_settings
def delete_repository(settings: Settings, name: str, output: str) -> None:
    """Delete repository NAME (PROJECT/REPOSITORY) with its tags, manifests and links, as the
    host's operator; the next garbage collection frees the bytes nothing else uses."""
    project, _, relative = name.partition("/")
    if not relative:
        raise click.BadParameter("name the repository as PROJECT/REPOSITORY", param_hint="NAME")
    result = execute(
        output, settings, "DELETE", REPOSITORY_PATH, {"project": project, "name": relative}
    )
    show(
        result,
        output,
        f"deleted repository {name}: {result['tags']} tag(s), {result['manifests']}"
        f" manifest(s), {result['blobs']} blob link(s)",
        None,
    )


COMMAND_ROUTES[delete_repository] = [("DELETE", REPOSITORY_PATH)]
