"""`moorage vulndb`: import, inspect and roll back the offline vulnerability database.

These work on the registry's metadata database and storage, as the server does, and are safe
while servers run: an import builds a new generation beside the current one and switches to it
atomically; every node notices.
`manifest` runs on the connected machine that prepares a bundle.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import click

from moorage.commands.common import cli_actor, services, with_settings
from moorage.config import ConfigError, Settings
from moorage.metadata.database import make_engine, migrate
from moorage.metadata.supply_chain.vulndb_store import VulndbStore
from moorage.services.events import EventBus
from moorage.services.supply_chain.vulndb import VulnerabilityDatabaseService, shared_database
from moorage.storage.factory import make_storage
from moorage.vulnerability.bundle import MANIFEST, BundleError, build_manifest
from moorage.vulnerability.database import (
    DatabaseStatus,
    GenerationInfo,
    VulnerabilityDatabase,
    VulnerabilityDatabaseError,
)


@click.group()
def vulndb() -> None:
    """The offline vulnerability database (OSV data, imported from files)."""


@contextmanager
def _database(settings: Settings, wait: float = 0.0) -> Iterator[VulnerabilityDatabase]:
    """The shared vulnerability database, on the registry's database and storage."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.resolved_database_url, pool_size=1)
    try:
        migrate(engine)
        storage = make_storage(settings)
        yield shared_database(settings, VulndbStore(engine), storage, lock_timeout_seconds=wait)
    finally:
        engine.dispose()


@contextmanager
def _service(
    settings: Settings, events: EventBus, wait: float
) -> Iterator[VulnerabilityDatabaseService]:
    with _database(settings, wait) as database:
        try:
            service = VulnerabilityDatabaseService.from_settings(settings, events, database)
        except ConfigError as error:
            raise click.UsageError(str(error)) from None
        yield service


@vulndb.command("import")
@click.argument("source", type=click.Path(path_type=Path, exists=True))
@click.option(
    "--wait",
    type=click.FloatRange(0, 86_400),
    default=60.0,
    show_default=True,
    help="Seconds to wait while another import or rollback runs.",
)
@click.option(
    "--cve",
    "cve_sources",
    multiple=True,
    type=click.Path(path_type=Path, exists=True),
    help="Severity-only source: CVE JSON 5 records (a cvelistV5 checkout or release zip, or"
    " one CVE-*.json file) that rate advisories listing those CVE ids. Repeatable.",
)
@with_settings
def import_(settings: Settings, source: Path, wait: float, cve_sources: tuple[Path, ...]) -> None:
    """Import SOURCE (a bundle, a directory of <ecosystem>/all.zip files or one OSV zip) as a
    new generation and make it current."""
    with services(settings) as s, _service(settings, s.events, wait) as service:
        try:
            result = service.import_file(cli_actor(), source, cve_sources=cve_sources)
        except (BundleError, VulnerabilityDatabaseError) as error:
            raise click.ClickException(str(error)) from None
    for skipped in result.skipped_records:
        click.echo(f"skipped {skipped.origin} ({skipped.record_id or '?'}): {skipped.reason}")
    if result.skipped > len(result.skipped_records):
        click.echo(f"... and {result.skipped - len(result.skipped_records)} more skipped")
    ecosystems = ", ".join(f"{name} {count}" for name, count in result.ecosystems.items())
    click.echo(
        f"generation {result.generation} is current: {result.records} records"
        f" ({ecosystems}), {result.skipped} skipped, {result.elapsed_seconds:.1f}s,"
        f" {'signed' if result.signed else 'unsigned'}, sha256 {result.source_checksum}"
    )
    if cve_sources:
        click.echo(
            f"CVE records rating severity: {result.cve_records}"
            f" ({result.cve_skipped} unusable files skipped)"
        )


@vulndb.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@with_settings
def status(settings: Settings, as_json: bool) -> None:
    """The current generation and the earlier ones kept for rollback."""
    with _database(settings) as database:
        state = database.status()
    if as_json:
        click.echo(json.dumps(status_json(state), indent=2))
        return
    if state.current is None:
        click.echo("no vulnerability database has been imported")
        return
    for info in state.history:
        marker = "*" if info.id == state.current.id else " "
        newest = info.newest_modified.date().isoformat() if info.newest_modified else "-"
        click.echo(
            f"{marker} {info.id}  imported {info.created_at:%Y-%m-%d %H:%M:%S}Z"
            f"  {info.records} records  {info.skipped} skipped  data up to {newest}"
            f"  {info.source_kind} {info.source_name}"
            f"  {'signed' if info.signed else 'unsigned'}  sha256 {info.source_checksum}"
            + (f"  {info.cve_records} CVE ratings" if info.cve_records else "")
        )


def status_json(state: DatabaseStatus) -> dict[str, object]:
    current = state.current.id if state.current is not None else None
    return {
        "current": _info_json(state.current) if state.current is not None else None,
        "history": [_info_json(info) | {"current": info.id == current} for info in state.history],
    }


def _info_json(info: GenerationInfo) -> dict[str, object]:
    document = asdict(info)
    document["created_at"] = info.created_at.isoformat()
    document["ecosystems"] = dict(info.ecosystems)
    document["newest_modified"] = info.newest_modified.isoformat() if info.newest_modified else None
    return document


@vulndb.command("rollback")
@click.option(
    "--wait",
    type=click.FloatRange(0, 86_400),
    default=60.0,
    show_default=True,
    help="Seconds to wait while another import or rollback runs.",
)
@with_settings
def rollback(settings: Settings, wait: float) -> None:
    """Make the previous generation current again; the current one is dropped."""
    with services(settings) as s, _service(settings, s.events, wait) as service:
        try:
            info = service.rollback(cli_actor())
        except VulnerabilityDatabaseError as error:
            raise click.ClickException(str(error)) from None
    click.echo(f"generation {info.id} is current again: {info.records} records")


@vulndb.command("manifest")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False, exists=True))
def manifest(directory: Path) -> None:
    """Write DIRECTORY/manifest.json for the <ecosystem>/all.zip files under DIRECTORY (on
    the connected machine, before signing and packing the bundle)."""
    created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    try:
        document = build_manifest(directory, created)
    except BundleError as error:
        raise click.ClickException(str(error)) from None
    (directory / MANIFEST).write_bytes(document)
    files = json.loads(document)["files"]
    click.echo(f"wrote {directory / MANIFEST} listing {len(files)} file(s)")
