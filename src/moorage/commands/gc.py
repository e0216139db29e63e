"""`moorage gc`: garbage collection from the command line, in this process, with progress.

It takes its turn like any other run (one at a time across the deployment, see
docs/lifecycle.md), so it is safe while the registry serves.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta

import click
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from moorage.commands.common import cli_actor, table, with_settings
from moorage.config import Settings
from moorage.metadata.lifecycle.gc_runs_store import GcRun, RunBusyError
from moorage.services.lifecycle.gc import PHASES, GcOptions
from moorage.services.lifecycle.gc_runner import lower_priority


@click.group(invoke_without_command=True)
@click.option("--dry-run", is_flag=True, help="Count what would go; delete nothing.")
@click.option(
    "--delete-untagged", is_flag=True, help="Also delete untagged manifests older than the grace."
)
@click.option("--resume", "resume_id", help="Go on with a stopped, failed or interrupted run.")
@click.option(
    "--grace-seconds",
    type=click.IntRange(min=0),
    help="Override gc_grace_seconds for this run (nothing younger is collected).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the finished run as JSON.")
@with_settings
def gc(
    settings: Settings,
    dry_run: bool,
    delete_untagged: bool,
    resume_id: str | None,
    grace_seconds: int | None,
    as_json: bool,
) -> None:
    """Collect garbage now: unreferenced blobs, links, manifest rows, orphans, old uploads."""
    if click.get_current_context().invoked_subcommand is not None:
        return
    from moorage.management import gc_collector

    with gc_collector(settings) as (collector, runs, publish):
        options = replace(gc_defaults(settings), dry_run=dry_run, delete_untagged=delete_untagged)
        if grace_seconds is not None:
            options = replace(options, grace=timedelta(seconds=grace_seconds))
        previous = None
        if resume_id is not None:
            previous = runs.run(resume_id)
            if previous is None or previous.status not in ("stopped", "failed", "interrupted"):
                raise click.ClickException(f"run {resume_id} cannot be resumed")
            options = replace(
                options,
                dry_run=previous.dry_run,
                delete_untagged=previous.delete_untagged,
                grace=timedelta(seconds=previous.grace_seconds),
            )
        actor = cli_actor()
        try:
            record = collector.start(options, actor, "cli", previous)
        except RunBusyError as busy:
            raise click.ClickException(str(busy)) from None
        console = Console(stderr=True)
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as progress:
            task = progress.add_task(f"{record.id}: starting", total=None)

            def report(_run: GcRun, phase: str, counts: dict[str, int]) -> None:
                step = PHASES.index(phase) + 1 if phase in PHASES else 0
                summary = ", ".join(f"{key} {value}" for key, value in sorted(counts.items()))
                progress.update(
                    task, description=f"{phase} ({step}/{len(PHASES)}) {summary}".strip()
                )

            lower_priority()  # the registry's requests come first
            finished = collector.run(record, options, actor, publish, report)
    if as_json:
        click.echo(json.dumps(_summary(finished), sort_keys=True))
    else:
        verb = "would remove" if finished.dry_run else "removed"
        click.echo(f"{finished.id} {finished.status}; {verb}:")
        table([(key, value) for key, value in sorted(finished.counts.items())])
        if finished.error:
            click.echo(f"error: {finished.error}", err=True)
    if finished.status not in ("finished", "stopped"):
        raise SystemExit(1)


@gc.command("runs")
@click.option("--limit", type=click.IntRange(1, 100), default=20, show_default=True)
@with_settings
def runs_command(settings: Settings, limit: int) -> None:
    """Garbage collection runs, newest first."""
    from moorage.management import gc_collector

    with gc_collector(settings) as (_collector, runs, _publish):
        for run in runs.runs(limit):
            freed = run.counts.get("bytes", 0) + run.counts.get("orphan_bytes", 0)
            table(
                [
                    (
                        run.id,
                        run.status,
                        run.trigger,
                        "dry-run" if run.dry_run else "",
                        run.phase,
                        f"blobs {run.counts.get('blobs', 0)}",
                        f"bytes {freed}",
                        run.started_at.isoformat(timespec="seconds"),
                    )
                ]
            )


@gc.command("show")
@click.argument("run_id")
@with_settings
def show_command(settings: Settings, run_id: str) -> None:
    """One run as JSON: status, phase, counts, error."""
    from moorage.management import gc_collector

    with gc_collector(settings) as (_collector, runs, _publish):
        run = runs.run(run_id)
    if run is None:
        raise click.ClickException(f"no run {run_id}")
    click.echo(json.dumps(_summary(run), sort_keys=True))


@gc.command("stop")
@click.argument("run_id")
@with_settings
def stop_command(settings: Settings, run_id: str) -> None:
    """Ask a running collection to stop after the batch in hand."""
    from moorage.management import gc_collector

    with gc_collector(settings) as (_collector, runs, _publish):
        run = runs.request_stop(run_id)
    if run is None:
        raise click.ClickException(f"no run {run_id}")
    click.echo(f"{run.id}: stop requested ({run.status})")


def gc_defaults(settings: Settings) -> GcOptions:
    from moorage.services.lifecycle.gc_runner import gc_options_from

    return gc_options_from(settings)


def _summary(run: GcRun) -> dict[str, object]:
    return {
        "id": run.id,
        "status": run.status,
        "phase": run.phase,
        "trigger": run.trigger,
        "startedAt": run.started_at.isoformat(),
        "finishedAt": run.finished_at.isoformat() if run.finished_at else None,
        "dryRun": run.dry_run,
        "deleteUntagged": run.delete_untagged,
        "counts": run.counts,
        "error": run.error,
    }
