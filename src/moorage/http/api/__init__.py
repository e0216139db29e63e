"""The management REST API under /api/v1: one module per resource, declared in `API_ROUTES`."""

from __future__ import annotations

from moorage.http.api import (
    audit,
    gc,
    grants,
    groups,
    immutable_tags,
    members,
    projects,
    promotions,
    proxy,
    quotas,
    replication,
    repositories,
    retention,
    robots,
    roles,
    sbom,
    scanners,
    scans,
    settings,
    trust,
    users,
    virtual_projects,
    vulndb,
    vulnerability_policy,
)
from moorage.http.api.framework import ApiRoute
from moorage.http.api.openapi import document_route

RESOURCE_ROUTES: tuple[ApiRoute, ...] = (
    *users.ROUTES,
    *groups.ROUTES,
    *projects.ROUTES,
    *repositories.ROUTES,
    *members.ROUTES,
    *grants.ROUTES,
    *immutable_tags.ROUTES,
    *vulnerability_policy.ROUTES,
    *trust.ROUTES,
    *proxy.ROUTES,
    *promotions.ROUTES,
    *quotas.ROUTES,
    *replication.ROUTES,
    *retention.ROUTES,
    *virtual_projects.ROUTES,
    *robots.ROUTES,
    *roles.ROUTES,
    *scanners.ROUTES,
    *scans.ROUTES,
    *sbom.ROUTES,
    *settings.ROUTES,
    *audit.ROUTES,
    *vulndb.ROUTES,
    *gc.ROUTES,
)
API_ROUTES: tuple[ApiRoute, ...] = (*RESOURCE_ROUTES, document_route(RESOURCE_ROUTES))
