"""`moorage promote SRC DEST`: promotion from the command line, on the registry's own data.

The command runs the same promotion service as `POST /api/v1/promotions`, in this process,
against the data directory (or database) of the registry: the destination's gates are
evaluated, the image is linked and the record signed and attached exactly as through the API.
Like every management command it acts as the operating-system account (an actor of kind
`system`), without permission checks: whoever can run it can read the data directory anyway.
Teams that promote from CI use the API with a robot that holds `promote`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys

import click

from moorage.commands.common import cli_actor, services, with_settings
from moorage.config import Settings
from moorage.domain.errors import RegistryError
from moorage.services.errors import IdentityError
from moorage.services.staging.promotion import PromotionOutcome, PromotionRefusedError


@click.command("promote")
@click.argument("source")
@click.argument("destination")
@click.option("--dry-run", is_flag=True, help="Evaluate the gates only; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
@with_settings
def promote(
    settings: Settings, source: str, destination: str, dry_run: bool, as_json: bool
) -> None:
    """Promote SOURCE (project/repo:tag or project/repo@sha256:...) to DESTINATION
    (project/repo:tag) after the destination project's gates passed."""
    with services(settings):
        pass  # migrates the schema and creates the signing key if this is a new data directory
    try:
        outcome = asyncio.run(_promote(settings, source, destination, dry_run))
    except PromotionRefusedError as error:
        if as_json:
            click.echo(json.dumps({"refused": [r.as_dict() for r in error.results]}, indent=2))
        for result in error.failing:
            click.echo(
                f"gate {result.name} ({result.kind.value}) failed: {result.reason}", err=True
            )
        raise click.ClickException(f"promotion to {destination} refused") from None
    except IdentityError as error:
        raise click.ClickException(str(error)) from None
    except RegistryError as error:
        raise click.ClickException(error.message) from None
    _report(outcome, as_json)


async def _promote(
    settings: Settings, source: str, destination: str, dry_run: bool
) -> PromotionOutcome:
    from moorage.http.app import build_app
    from moorage.http.state import IAM

    app = build_app(settings, run_jobs=False)
    app.freeze()
    await app.startup()
    try:
        service = app[IAM].promotions
        parsed_source, parsed_destination = service.parse(source, destination)
        return await service.promote(
            cli_actor(), parsed_source, parsed_destination, dry_run=dry_run
        )
    finally:
        # Flushes the audit entries the promotion wrote and closes the database; bounded as a
        # server's shutdown is, so a background task that does not stop cannot hang the command.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(settings.shutdown_timeout_seconds):
                await app.cleanup()


def _report(outcome: PromotionOutcome, as_json: bool) -> None:
    record = outcome.record
    if as_json:
        document: dict[str, object] = {
            "source": str(outcome.source),
            "destination": str(outcome.destination),
            "digest": outcome.digest,
            "dryRun": record is None,
            "created": outcome.created,
            "gates": [result.as_dict() for result in outcome.results],
        }
        if record is not None:
            document |= {
                "id": record.id,
                "recordDigest": record.record_digest,
                "gates": record.gates,
                "envelope": json.loads(record.envelope),
            }
        json.dump(document, sys.stdout, indent=2)
        click.echo()
        return
    for result in outcome.results:
        click.echo(f"gate {result.name} ({result.kind.value}) passed: {result.reason}")
    if record is None:
        click.echo(
            f"dry run: {outcome.source} ({outcome.digest}) may be promoted to {outcome.destination}"
        )
    elif outcome.created:
        click.echo(
            f"promoted {outcome.source} ({outcome.digest}) to {outcome.destination}:"
            f" promotion {record.id}, record {record.record_digest}"
        )
    else:
        click.echo(
            f"{outcome.destination} already holds {outcome.digest} by promotion {record.id}"
            f" (record {record.record_digest})"
        )
