"""`moorage migrate-data`: move an embedded install (SQLite and blobs in a data directory) to
the database and storage the settings name (PostgreSQL, S3), losing nothing.

Blobs go first, each hashed while it is copied and committed only when its digest matches, and
blobs the target already holds are skipped; rows follow, parents first, with their ids, and a
row already in the target is kept. An interrupted run is finished by running it again with
--resume. Afterwards the audit chain is verified on the target, and `moorage fsck` checks it.
"""

from __future__ import annotations

import hashlib
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from moorage.commands.common import config_option, data_dir_option, load_cli_settings
from moorage.config import Settings
from moorage.domain.digest import Digest
from moorage.storage.base import StorageDriver
from moorage.storage.filesystem import FilesystemStorage

_COPY_CHUNK = 8 << 20  # large enough for object storage parts, small enough for memory


class MigrationRefused(click.ClickException):
    """The migration would lose or overwrite data; nothing was changed."""


@dataclass
class BlobSummary:
    copied: int = 0
    skipped: int = 0
    bytes_copied: int = 0
    corrupt: list[str] = field(default_factory=list)


@click.command("migrate-data")
@click.option(
    "--from",
    "source_dir",
    required=True,
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="Data directory of the embedded install to move (SQLite database and blobs).",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Finish an interrupted run: the target may already hold part of the data.",
)
@config_option
@data_dir_option
def migrate_data(source_dir: Path, resume: bool, config: Path | None, **flags: Any) -> None:
    """Copy an embedded install to the database and storage of the settings (database_url,
    storage); run it with both registries stopped. The target database must be empty unless
    --resume is given. Exits 1 when anything could not be copied intact."""
    target = load_cli_settings(config, **flags)
    console = Console(stderr=True)
    refusal = _refusal(source_dir, target)
    if refusal is not None:
        raise MigrationRefused(refusal)

    from moorage.metadata.database import make_engine, migrate, sqlite_url
    from moorage.metadata.transfer import (
        copy_tables,
        reset_sequences,
        row_counts,
        seeded_tables,
        unknown_tables,
    )

    source_engine = make_engine(sqlite_url(source_dir / "moorage.db"), pool_size=1)
    target_engine = make_engine(target.resolved_database_url, pool_size=2)
    try:
        migrate(source_engine)
        left_behind = unknown_tables(source_engine)
        if left_behind:
            raise MigrationRefused(
                "the source has tables this version does not know (a newer release made it?): "
                + ", ".join(left_behind)
            )
        migrate(target_engine)
        seeded = seeded_tables()
        present = {
            name: rows
            for name, rows in row_counts(target_engine).items()
            if rows > seeded.get(name, 0)
        }
        if present and not resume:
            raise MigrationRefused(
                "the target database is not empty ("
                + ", ".join(f"{name}: {rows}" for name, rows in sorted(present.items())[:5])
                + (", ..." if len(present) > 5 else "")
                + "); use an empty database, or --resume to finish an interrupted migration"
            )
        source_storage = FilesystemStorage(source_dir / "storage")
        target_storage = _target_storage(target)
        blobs = _copy_blobs(source_storage, target_storage, console)
        expected = row_counts(source_engine)
        with _progress(console) as progress:
            task = progress.add_task("rows", total=sum(expected.values()))
            copies = copy_tables(
                source_engine,
                target_engine,
                lambda table, rows: progress.update(task, advance=rows, description=table),
                replace=frozenset(seeded),
            )
        sequences = reset_sequences(source_engine, target_engine)
        copied_files = _copy_vulnerability_databases(source_dir, target)
        missing = {
            name: (rows, expected[name])
            for name, rows in row_counts(target_engine).items()
            if rows < expected[name]
        }
        audit_problems = _verify_audit(target_engine, target)
    finally:
        source_engine.dispose()
        target_engine.dispose()

    summary = Table(title="migrate-data", show_header=True)
    summary.add_column("what")
    summary.add_column("count", justify="right")
    summary.add_row("tables", str(len(copies)))
    summary.add_row("rows copied", str(sum(copy.inserted for copy in copies)))
    summary.add_row("rows already present", str(sum(c.source_rows - c.inserted for c in copies)))
    summary.add_row("blobs copied", str(blobs.copied))
    summary.add_row("blobs already present", str(blobs.skipped))
    summary.add_row("bytes copied", str(blobs.bytes_copied))
    summary.add_row("sequences reset", str(len(sequences)))
    summary.add_row("vulnerability database files", str(copied_files))
    summary.add_row("audit chain", "verified" if not audit_problems else "BROKEN")
    Console().print(summary)
    failures = [
        f"blob {digest} does not match its digest in the source" for digest in blobs.corrupt
    ]
    failures += [f"table {name}: {got} of {want} rows" for name, (got, want) in missing.items()]
    failures += audit_problems[:20]
    for failure in failures:
        click.echo(failure, err=True)
    if failures:
        raise SystemExit(1)
    click.echo("migration complete: run `moorage fsck` with the target settings to check it")


def _refusal(source_dir: Path, target: Settings) -> str | None:
    if not (source_dir / "moorage.db").is_file():
        return f"{source_dir} holds no registry database (moorage.db)"
    if target.database_url is None:
        return "the target has no database_url: set it (e.g. PostgreSQL) in the settings"
    source = source_dir.resolve()
    if target.database_url.endswith(str(source / "moorage.db")):
        return "the target database is the source database"
    if target.storage == "filesystem" and (
        (target.data_dir / "storage").resolve() == (source / "storage")
    ):
        return "the target storage is the source storage: give the target another data directory"
    return None


def _target_storage(settings: Settings) -> StorageDriver:
    from moorage.storage.factory import make_storage

    return make_storage(settings)


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def _copy_blobs(source: FilesystemStorage, target: StorageDriver, console: Console) -> BlobSummary:
    summary = BlobSummary()
    digests = list(source.list_blobs())
    sizes = {digest: source.blob_size(digest) or 0 for digest in digests}
    with Progress(
        TextColumn("{task.description:<28}"),
        BarColumn(),
        DownloadColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("blobs", total=sum(sizes.values()))
        for digest in digests:
            size = sizes[digest]
            if target.blob_size(digest) == size:
                summary.skipped += 1
            elif _copy_blob(source, target, digest):
                summary.copied += 1
                summary.bytes_copied += size
            else:
                summary.corrupt.append(str(digest))
            progress.update(task, advance=size)
    return summary


def _copy_blob(source: FilesystemStorage, target: StorageDriver, digest: Digest) -> bool:
    """Stream one blob into the target through an upload session, hashing as it passes; commit
    only when the digest matches. False when the source's bytes are not what they claim."""
    upload_id = f"migrate-{uuid.uuid4().hex}"
    target.create_upload(upload_id)
    writer = target.open_upload(upload_id)
    committed = False
    try:
        hasher = hashlib.new(digest.algorithm)
        with source.open_blob(digest) as stream:
            while chunk := stream.read(_COPY_CHUNK):
                hasher.update(chunk)
                writer.write(chunk)
        if hasher.hexdigest() != digest.hex:
            return False
        writer.commit(digest)
        committed = True
        return True
    finally:
        if not committed:
            writer.close()
            target.delete_upload(upload_id)


def _copy_vulnerability_databases(source_dir: Path, target: Settings) -> int:
    """The imported vulnerability database generations live beside the metadata: copy them to
    the target's data directory, so scans match against the same data."""
    source = source_dir / "vulndb"
    destination = target.data_dir / "vulndb"
    if not source.is_dir() or source.resolve() == destination.resolve():
        return 0
    shutil.copytree(source, destination, dirs_exist_ok=True)
    return sum(1 for path in source.rglob("*") if path.is_file())


def _verify_audit(engine: Any, settings: Settings) -> list[str]:
    from moorage.metadata.access.iam_store import IamStore
    from moorage.services.access.audit import verify_chain
    from moorage.services.access.tokens import TokenService

    store = IamStore(engine)
    tokens = TokenService(
        store, service=settings.auth_service, ttl_seconds=settings.token_ttl_seconds
    )
    return verify_chain(store, tokens.verify_bytes).problems
