"""Settings changed at run time (the file and the environment set everything else)."""

from __future__ import annotations

from typing import Literal

from moorage.http.access import ADMIN
from moorage.http.api.framework import ApiModel, ApiRoute, Call, RequestModel

SETTINGS = "settings"
ProjectCreation = Literal["admins", "authenticated"]


class Settings(ApiModel):
    project_creation: ProjectCreation


class SettingsChanges(RequestModel):
    """Fields left out (or null) stay as they are."""

    project_creation: ProjectCreation | None = None


async def get_settings(call: Call) -> Settings:
    values = await call.run(call.iam.projects.settings)
    return Settings.model_validate({"project_creation": values["project_creation"]})


async def update_settings(call: Call) -> Settings:
    body = call.body(SettingsChanges)
    if body.project_creation is not None:
        await call.run(
            call.iam.projects.update_setting,
            call.actor,
            "project_creation",
            body.project_creation,
        )
    return await get_settings(call)


ROUTES: tuple[ApiRoute, ...] = (
    ApiRoute(
        "GET",
        "/api/v1/settings",
        get_settings,
        ADMIN,
        "Run-time settings",
        SETTINGS,
        response=Settings,
    ),
    ApiRoute(
        "PATCH",
        "/api/v1/settings",
        update_settings,
        ADMIN,
        "Change run-time settings (project_creation: who may create projects)",
        SETTINGS,
        body=SettingsChanges,
        response=Settings,
    ),
)
