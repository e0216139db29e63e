"""`moorage scanner`, `moorage scan-settings`, `moorage scan` and `moorage sbom`: scanner
adapters, per-project scanning, scan reports and SBOMs, through the same endpoints as /api/v1
(see `moorage.commands.api`). Scans queued here are carried out by the running server."""

from __future__ import annotations

import click

from moorage.commands.api import api_command
from moorage.http.api.sbom import SBOM_PATH
from moorage.http.api.scanners import BASE, ONE
from moorage.http.api.scans import REPORT_PATH, SCAN_ALL_PATH, SETTINGS_PATH


@click.group()
def scanner() -> None:
    """External scanner adapters (Harbor's pluggable scanner API)."""


api_command(scanner, "list", "GET", BASE, columns=("name", "url", "auth", "description"))
api_command(
    scanner,
    "add",
    "POST",
    BASE,
    help="Register a scanner adapter; its credential is read from standard input"
    " (--credential-stdin). Example: moorage scanner add --name trivy"
    " --url https://trivy-adapter.example.org --auth bearer --credential-stdin",
    done="registered scanner adapter {name}",
)
api_command(scanner, "show", "GET", ONE)
api_command(
    scanner,
    "update",
    "PATCH",
    ONE,
    help="Change the given settings of a scanner adapter; others stay as they are.",
    done="changed scanner adapter {scanner}",
)
api_command(scanner, "remove", "DELETE", ONE, done="removed scanner adapter {scanner}")
api_command(scanner, "ping", "POST", f"{ONE}/ping")


@click.group("scan-settings")
def scan_settings() -> None:
    """A project's scanning: scan on push, SBOM referrers, which scanner."""


api_command(scan_settings, "show", "GET", SETTINGS_PATH)
api_command(
    scan_settings,
    "set",
    "PUT",
    SETTINGS_PATH,
    help="Replace the project's scan settings; a flag left out is off. Example: moorage"
    " scan-settings set team --scan-on-push --attach-sbom",
    done="set the scan settings of {project}",
)


@click.group()
def scan() -> None:
    """Scans of images and their reports."""


_NAMES = {"name": "REPOSITORY", "digest": "DIGEST"}
api_command(scan, "report", "GET", REPORT_PATH, arguments=_NAMES)
api_command(
    scan,
    "request",
    "POST",
    REPORT_PATH,
    arguments=_NAMES,
    help="Scan REPOSITORY@DIGEST (again); the server's scan worker carries it out.",
    done="queued a scan of {name}@{digest}",
)
api_command(scan, "all", "POST", SCAN_ALL_PATH, done="queued scans of every image")

api_command(
    scan,
    "sbom",
    "GET",
    SBOM_PATH,
    arguments=_NAMES,
    help="Write the image's SBOM (--format cyclonedx or spdx) to standard output.",
)
