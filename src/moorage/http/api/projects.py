"""Projects: the first path segment of a repository, and the unit of membership."""

from __future__ import annotations

from moorage.domain.access import Action
from moorage.http.access import AUTHENTICATED, CREATE_PROJECT, project_permission
from moorage.http.api.common import PageQuery, ProjectName
from moorage.http.api.framework import ApiModel, ApiRoute, Call, Page, RequestModel, page_of
from moorage.metadata.staging.promotion_store import StageRecord
from moorage.services.access.projects import ProjectView

PROJECTS = "projects"
PROJECT = "/api/v1/projects/{project}"


class Project(ApiModel):
    name: str
    public: bool
    created_by: str | None
    # Set by administrators through /projects/{project}/stage (docs/staging.md).
    stage: str | None = None
    promotion_only: bool = False


class NewProject(RequestModel):
    name: ProjectName
    public: bool = False


class ProjectChanges(RequestModel):
    """Fields left out (or null) stay as they are."""

    public: bool | None = None


def project_view(view: ProjectView, stage: StageRecord | None = None) -> Project:
    return Project(
        name=view.name,
        public=view.public,
        created_by=view.created_by,
        stage=stage.stage if stage is not None else None,
        promotion_only=stage is not None and stage.promotion_only,
    )


async def create_project(call: Call) -> Project:
    body = call.body(NewProject)
    subject = call.subject
    # The creator administers the new project; robots hold no roles, only allow-lists.
    owner = subject.id if subject.kind == "user" else None
    view = await call.run(call.iam.projects.create, call.actor, body.name, body.public, owner)
    return project_view(view)


async def list_projects(call: Call) -> Page:
    query = call.query(PageQuery)
    views = await call.run(
        call.iam.projects.readable_projects, call.subject, query.after, query.limit
    )
    stages = await call.run(call.iam.stages.stages_of, [view.name for view in views])
    return page_of(
        [project_view(view, stages.get(view.name)) for view in views],
        query.limit,
        lambda last: {"limit": str(query.limit), "after": last.name},
    )


async def get_project(call: Call) -> Project:
    view = await call.run(call.iam.projects.view, call.project)
    return project_view(view, await call.run(call.iam.stages.stage_of, call.project))


async def update_project(call: Call) -> Project:
    body = call.body(ProjectChanges)
    view = await call.run(call.iam.projects.update, call.actor, call.project, body.public)
    return project_view(view, await call.run(call.iam.stages.stage_of, call.project))


async def delete_project(call: Call) -> None:
    # The operator's command line has no subject (None): it acts as the host's operator.
    await call.run(call.iam.deletion.delete_project, call.actor, call.subject, call.project)


ROUTES: tuple[ApiRoute, ...] = (
    ApiRoute(
        "GET",
        "/api/v1/projects",
        list_projects,
        AUTHENTICATED,
        "Projects you may read, and every public project",
        PROJECTS,
        query=PageQuery,
        response=Project,
        many=True,
        paged=True,
    ),
    ApiRoute(
        "POST",
        "/api/v1/projects",
        create_project,
        CREATE_PROJECT,
        "Create a project; you become its project-admin",
        PROJECTS,
        body=NewProject,
        response=Project,
        status=201,
        errors=(409,),
    ),
    ApiRoute(
        "GET",
        PROJECT,
        get_project,
        project_permission(Action.READ_PROJECT),
        "One project",
        PROJECTS,
        response=Project,
    ),
    ApiRoute(
        "PATCH",
        PROJECT,
        update_project,
        project_permission(Action.MANAGE_PROJECT),
        "Make a project public or private",
        PROJECTS,
        body=ProjectChanges,
        response=Project,
    ),
    ApiRoute(
        "DELETE",
        PROJECT,
        delete_project,
        project_permission(Action.MANAGE_PROJECT),
        "Delete a project with every repository in it, its members, grants, robots and"
        " policies; garbage collection frees the bytes (refused in promotion-only projects"
        " unless break-glass)",
        PROJECTS,
        status=204,
        errors=(409,),
    ),
)
