"""Repositories: deleting one with everything in it (its bytes go with the next garbage
collection). The name in the path is relative to the project, and may hold slashes."""

from __future__ import annotations

from moorage.domain.access import Action
from moorage.http.access import REPOSITORY, Permission, Scope
from moorage.http.api.framework import ApiModel, ApiRoute, Call

REPOSITORIES = "repositories"
REPOSITORY_PATH = "/api/v1/projects/{project}/repositories/{name:.+}"
DELETE_REPOSITORY = Permission(Scope.REPOSITORY, Action.DELETE_REPOSITORY)


class DeletedRepository(ApiModel):
    name: str
    tags: int
    manifests: int
    blobs: int


async def delete_repository(call: Call) -> DeletedRepository:
    deletion = call.iam.deletion
    name = call.request[REPOSITORY]
    # The operator's command line has no subject (None): it acts as the host's operator.
    deleted = await call.run(deletion.delete_repository, call.actor, call.subject, name)
    return DeletedRepository(
        name=deleted.name, tags=deleted.tags, manifests=deleted.manifests, blobs=deleted.blobs
    )


ROUTES: tuple[ApiRoute, ...] = (
    ApiRoute(
        "DELETE",
        REPOSITORY_PATH,
        delete_repository,
        DELETE_REPOSITORY,
        "Delete a repository with its tags, manifests and links; garbage collection frees"
        " its bytes (refused in promotion-only projects unless break-glass)",
        REPOSITORIES,
        response=DeletedRepository,
        errors=(404, 409),
    ),
)
