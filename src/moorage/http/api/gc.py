"""Garbage collection (administrators only): start a run, follow it, stop it, resume it.

A run works in the background; `POST` answers 202 with its record at once, and
`GET .../runs/{id}` shows its phase and counts until it is finished. See docs/lifecycle.md.
"""

from __future__ import annotations

from typing import Annotated, Final

from pydantic import Field

from moorage.http.access import ADMIN
from moorage.http.api.framework import (
    ApiModel,
    ApiRoute,
    Call,
    QueryModel,
    RequestModel,
    UtcDateTime,
)
from moorage.http.errors import ApiProblem
from moorage.http.state import LIFECYCLE
from moorage.metadata.lifecycle.gc_runs_store import GcRun, RunBusyError
from moorage.services.lifecycle.gc_runner import NotResumableError

TAG: Final = "garbage-collection"
PATH: Final = "/api/v1/system/gc"
# No braces inside the pattern: the OpenAPI document and the route-table tests read `{...}`.
RUN_ID: Final = "{gc_run:gc-[0-9]+-[0-9a-f]+}"


class GcRequest(RequestModel):
    """Without `resume`, a new run; with it, the stopped, failed or interrupted run it names
    goes on where it was (with its own options)."""

    dry_run: bool = Field(False, description="count what would go; delete nothing")
    delete_untagged: bool = Field(
        False, description="also delete manifests no tag names, older than the grace period"
    )
    grace_seconds: int | None = Field(
        None,
        ge=0,
        le=30 * 24 * 3600,
        description="override gc_grace_seconds for this run; 0 takes everything unreferenced"
        " when the run starts, so pushes in flight may fail and must be retried",
    )
    resume: Annotated[str | None, Field(max_length=64, pattern=r"^gc-[0-9]{14}-[0-9a-f]{8}$")] = (
        None
    )


class GcRunView(ApiModel):
    id: str
    status: str = Field(description="running, finished, stopped, failed or interrupted")
    dry_run: bool
    delete_untagged: bool
    grace_seconds: int
    trigger: str = Field(description="api, cli or schedule")
    requested_by: str
    node: str | None
    phase: str
    resumed_from: str | None
    stop_requested: bool
    counts: dict[str, int] = Field(
        description="what the run removed (or, in a dry run, found): untagged_manifests,"
        " manifest_rows, scan_rows, promotion_records, links, blobs, bytes, orphans,"
        " orphan_bytes, leftover_blobs, leftover_bytes, uploads"
    )
    error: str | None
    started_at: UtcDateTime
    heartbeat_at: UtcDateTime
    finished_at: UtcDateTime | None


class RunsQuery(QueryModel):
    limit: int = Field(20, ge=1, le=100)


def run_view(run: GcRun) -> GcRunView:
    return GcRunView(
        id=run.id,
        status=run.status,
        dry_run=run.dry_run,
        delete_untagged=run.delete_untagged,
        grace_seconds=run.grace_seconds,
        trigger=run.trigger,
        requested_by=run.requested_by,
        node=run.node,
        phase=run.phase,
        resumed_from=run.resumed_from,
        stop_requested=run.stop_requested,
        counts=dict(run.counts),
        error=run.error,
        started_at=run.started_at,
        heartbeat_at=run.heartbeat_at,
        finished_at=run.finished_at,
    )


async def start_gc(call: Call) -> GcRunView:
    request = call.body(GcRequest)
    try:
        run = await call.request.app[LIFECYCLE].gc.start(
            call.actor,
            "api",
            dry_run=request.dry_run,
            delete_untagged=request.delete_untagged,
            grace_seconds=request.grace_seconds,
            resume=request.resume,
        )
    except RunBusyError as busy:
        raise ApiProblem(409, str(busy)) from None
    except NotResumableError as error:
        raise ApiProblem(409, str(error)) from None
    return run_view(run)


async def list_gc_runs(call: Call) -> list[GcRunView]:
    limit = call.query(RunsQuery).limit
    return [run_view(run) for run in await call.request.app[LIFECYCLE].gc.runs(limit)]


async def get_gc_run(call: Call) -> GcRunView:
    run = await call.request.app[LIFECYCLE].gc.run(call.param("gc_run"))
    if run is None:
        raise ApiProblem(404, "no such garbage collection run")
    return run_view(run)


async def stop_gc_run(call: Call) -> GcRunView:
    run = await call.request.app[LIFECYCLE].gc.stop(call.param("gc_run"))
    if run is None:
        raise ApiProblem(404, "no such garbage collection run")
    return run_view(run)


ROUTES: tuple[ApiRoute, ...] = (
    ApiRoute(
        "POST",
        PATH,
        start_gc,
        ADMIN,
        "Start garbage collection in the background (or resume a stopped run)",
        TAG,
        body=GcRequest,
        response=GcRunView,
        status=202,
        errors=(409,),
    ),
    ApiRoute(
        "GET",
        f"{PATH}/runs",
        list_gc_runs,
        ADMIN,
        "Garbage collection runs, newest first, with their counts and bytes freed",
        TAG,
        query=RunsQuery,
        response=GcRunView,
        many=True,
    ),
    ApiRoute(
        "GET",
        f"{PATH}/runs/{RUN_ID}",
        get_gc_run,
        ADMIN,
        "One garbage collection run: its phase, counts and status",
        TAG,
        response=GcRunView,
        errors=(404,),
    ),
    ApiRoute(
        "POST",
        f"{PATH}/runs/{RUN_ID}/stop",
        stop_gc_run,
        ADMIN,
        "Ask a running garbage collection to stop after the batch in hand (resumable)",
        TAG,
        response=GcRunView,
        errors=(404,),
    ),
)
