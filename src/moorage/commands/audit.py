"""`moorage audit` (verify, export, prune) and `moorage keys rotate`."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

import click

from moorage.commands.common import cli_actor, services, with_settings
from moorage.config import Settings


@click.group()
def audit() -> None:
    """The hash-chained audit log."""


@audit.command("verify")
@with_settings
def verify(settings: Settings) -> None:
    """Check that no entry was changed, removed from the middle or reordered (exit 1 if so)."""
    with services(settings) as s:
        result = s.audit.verify()
    for problem in result.problems:
        click.echo(problem)
    click.echo(f"{result.entries} entries checked, {len(result.problems)} problem(s)")
    sys.exit(0 if result.ok else 1)


@audit.command("export")
@click.option(
    "--format", "format_", type=click.Choice(["jsonl"]), default="jsonl", show_default=True
)
@click.option(
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write to FILE (readable by its owner only) instead of standard output.",
)
@with_settings
def export(settings: Settings, format_: str, output: Path | None) -> None:
    """Every entry, oldest first, one JSON object per line."""
    with services(settings) as s:
        if output is None:
            _write_lines(s.audit.export_jsonl(), sys.stdout)
            return
        # The log names people and addresses: keep the copy private.
        descriptor = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            count = _write_lines(s.audit.export_jsonl(), file)
    click.echo(f"exported {count} entries to {output}", err=True)


def _write_lines(lines: Iterable[str], file: TextIO) -> int:
    count = 0
    for line in lines:
        file.write(f"{line}\n")
        count += 1
    return count


@audit.command("prune")
@click.option(
    "--before",
    required=True,
    help="Delete entries older than this ISO 8601 date or time (UTC unless it says otherwise).",
)
@with_settings
def prune(settings: Settings, before: str) -> None:
    """Delete old entries behind a checkpoint signed with the registry's key."""
    cutoff = _moment(before)
    with services(settings) as s:
        removed = s.audit.prune(cli_actor(), cutoff)
    click.echo(f"removed {removed} entries older than {cutoff.isoformat()}")


def _moment(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not an ISO 8601 date or time") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


@click.group()
def keys() -> None:
    """Token-signing keys."""


@keys.command("rotate")
@with_settings
def rotate(settings: Settings) -> None:
    """Sign with a new key; tokens signed by the old one verify until they expire."""
    with services(settings) as s:
        kid = s.tokens.rotate_key(s.events, cli_actor())
    click.echo(f"new signing key {kid}")
