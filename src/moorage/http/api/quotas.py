"""Project quotas: usage, the project's own limits, and recounting the usage counters.

A project's usage is readable by whoever may read the project; its limits are set and cleared
by system administrators only (a project administrator must not raise their own quota).
"""

from __future__ import annotations

from typing import Annotated

from aiohttp import web
from pydantic import Field

from moorage.domain.access import Action
from moorage.domain.quotas import QuotaOverride
from moorage.http.access import ADMIN, project_permission
from moorage.http.api.framework import ApiModel, ApiRoute, Call, RequestModel, UtcDateTime
from moorage.services.lifecycle.quotas import QuotaService, QuotaView

QUOTAS = web.AppKey("quotas", QuotaService)
QUOTA_TAG = "quotas"
PROJECT_PATH = "/api/v1/projects/{project}"
READ_PROJECT = project_permission(Action.READ_PROJECT)

Limit = Annotated[int, Field(ge=0, le=2**62)]


class QuotaLimitsModel(ApiModel):
    storage_bytes: int | None = Field(description="None: unlimited")
    artifacts: int | None = Field(description="None: unlimited")


class QuotaOverrideModel(ApiModel):
    storage_bytes: int | None = Field(description="None: the system default; 0: unlimited")
    artifacts: int | None = Field(description="None: the system default; 0: unlimited")


class QuotaUsageModel(ApiModel):
    storage_bytes: int = Field(description="distinct blobs of the project's repositories")
    artifacts: int = Field(description="manifests in the project's repositories")


class ProjectUsage(ApiModel):
    project: str
    usage: QuotaUsageModel
    limits: QuotaLimitsModel = Field(description="in force: the project's own, else the default")
    project_limits: QuotaOverrideModel
    percent: float = Field(description="how full the fuller quota is")
    warning_percent: int
    state: str = Field(description="ok | warned | exceeded: the last announcement made")
    updated_by: str | None
    updated_at: UtcDateTime | None


class NewQuota(RequestModel):
    """The project's own limits; an omitted or null limit follows the system default, 0 is
    unlimited."""

    storage_bytes: Limit | None = None
    artifacts: Limit | None = None


class CorrectedCounter(ApiModel):
    project: str
    counted: QuotaUsageModel
    actual: QuotaUsageModel


class Recount(ApiModel):
    corrected: list[CorrectedCounter]


def usage_view(view: QuotaView) -> ProjectUsage:
    return ProjectUsage(
        project=view.project,
        usage=QuotaUsageModel(storage_bytes=view.usage.bytes, artifacts=view.usage.artifacts),
        limits=QuotaLimitsModel(storage_bytes=view.limits.bytes, artifacts=view.limits.artifacts),
        project_limits=QuotaOverrideModel(
            storage_bytes=view.override.bytes, artifacts=view.override.artifacts
        ),
        percent=round(view.percent, 2),
        warning_percent=view.warning_percent,
        state=str(view.state),
        updated_by=view.updated_by,
        updated_at=view.updated_at,
    )


def _quotas(call: Call) -> QuotaService:
    return call.request.app[QUOTAS]


async def project_usage(call: Call) -> ProjectUsage:
    project = call.project
    await call.run(call.iam.projects.project, project)  # 404 for an administrator too
    return usage_view(await _quotas(call).usage(project))


async def _existing_project(call: Call) -> str:
    # An administrator's route is not scoped to a project: the name is checked here (404).
    name = call.param("project")
    await call.run(call.iam.projects.project, name)
    return name


async def set_quota(call: Call) -> ProjectUsage:
    body = call.body(NewQuota)
    override = QuotaOverride(body.storage_bytes, body.artifacts)
    project = await _existing_project(call)
    return usage_view(await _quotas(call).set_limits(call.actor, project, override))


async def clear_quota(call: Call) -> ProjectUsage:
    project = await _existing_project(call)
    return usage_view(await _quotas(call).clear_limits(call.actor, project))


async def recount(call: Call) -> Recount:
    drift = await _quotas(call).recount(call.actor)
    return Recount(
        corrected=[
            CorrectedCounter(
                project=item.project,
                counted=QuotaUsageModel(
                    storage_bytes=item.counted.bytes, artifacts=item.counted.artifacts
                ),
                actual=QuotaUsageModel(
                    storage_bytes=item.actual.bytes, artifacts=item.actual.artifacts
                ),
            )
            for item in drift
        ]
    )


ROUTES: tuple[ApiRoute, ...] = (
    ApiRoute(
        "GET",
        f"{PROJECT_PATH}/usage",
        project_usage,
        READ_PROJECT,
        "The project's storage and artifact usage, its quotas and how full they are",
        QUOTA_TAG,
        response=ProjectUsage,
        errors=(404,),
    ),
    ApiRoute(
        "PUT",
        f"{PROJECT_PATH}/quota",
        set_quota,
        ADMIN,
        "Set the project's own quotas (null: the system default, 0: unlimited)",
        QUOTA_TAG,
        body=NewQuota,
        response=ProjectUsage,
        errors=(404,),
    ),
    ApiRoute(
        "DELETE",
        f"{PROJECT_PATH}/quota",
        clear_quota,
        ADMIN,
        "Remove the project's own quotas (the system default applies again)",
        QUOTA_TAG,
        response=ProjectUsage,
        errors=(404,),
    ),
    ApiRoute(
        "POST",
        "/api/v1/system/quotas/recount",
        recount,
        ADMIN,
        "Rebuild every project's usage counters from the registry's links",
        QUOTA_TAG,
        response=Recount,
    ),
)
