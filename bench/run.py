"""Benchmark Moorage against CNCF Distribution (Debian's docker-registry) on this machine.

    python bench/run.py [--quick] [--workers N] [--markdown FILE] [--only KEY,...]

Both servers are started on free loopback ports with their own temporary directories, every
scenario runs against both with the same client code, and a table of Distribution, Moorage and
the Moorage/Distribution ratio is printed. Both servers are stopped however the run ends.
Moorage runs with token authentication on (the client signs in as admin with a password made
for the run); Distribution runs without authentication.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from plan import FULL, METRICS, QUICK
from report import render, verdicts
from scenarios import Bench, ScenarioFailed, rss_outcomes
from servers import (
    DistributionServer,
    MoorageServer,
    Sampler,
    Server,
    ServerError,
    environment_info,
)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, about a minute")
    parser.add_argument("--workers", type=int, default=2, help="Moorage worker processes")
    parser.add_argument("--markdown", type=Path, help="also write the tables as Markdown here")
    parser.add_argument(
        "--only",
        help="comma-separated metric keys to run: "
        + ", ".join(m.key for m in METRICS if not m.key.startswith(("rss", "pss"))),
    )
    parser.add_argument("--tmpdir", type=Path, help="where the servers' data directories go")
    parser.add_argument("--keep", action="store_true", help="keep the data directories")
    return parser.parse_args(argv)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _use_fast_loop() -> str:
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return f"uvloop {uvloop.__version__}"


def _notes(bench: Bench, labels: list[str]) -> list[str]:
    notes = []
    for key, per_server in bench.results.items():
        for label in labels:
            outcome = per_server.get(label)
            if outcome is None:
                continue
            if outcome.error:
                notes.append(f"{key} on {label} failed: {outcome.error}")
            for note in dict.fromkeys(outcome.notes):
                notes.append(f"{key} on {label}: {note}")
    return notes


def _authentication(servers: list[Server]) -> str:
    return "; ".join(f"{server.label}: {server.authentication}" for server in servers)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    plan = QUICK if args.quick else FULL
    only = {key.strip() for key in args.only.split(",")} if args.only else None
    signal.signal(signal.SIGTERM, _on_sigterm)
    # Ctrl-C must work even when started from a shell that ignores SIGINT for background jobs.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    loop_name = _use_fast_loop()

    root = Path(tempfile.mkdtemp(prefix="moorage-bench-", dir=args.tmpdir))
    distribution = DistributionServer(workdir=root / "distribution")
    moorage = MoorageServer(workdir=root / "moorage", workers=args.workers)
    servers = [distribution, moorage]
    labels = [server.label for server in servers]
    sampler = Sampler(servers)
    bench = Bench(plan, servers, sampler, only=only, log=lambda line: print(line, flush=True))
    environment = environment_info(args.workers)
    environment["Authentication"] = _authentication(servers)
    environment["Client"] = f"aiohttp on {loop_name}, wrk, ab (same machine, same cores)"
    environment["Plan"] = plan.name
    started_at = datetime.datetime.now().astimezone()
    environment["Started"] = started_at.strftime("%Y-%m-%d %H:%M %Z")
    code = 0
    interrupted = False
    began = time.monotonic()
    try:
        for server in servers:
            server.start()
            environment["Authentication"] = _authentication(servers)
            print(
                f"{server.label} listening on {server.url} (data in {server.workdir};"
                f" authentication: {server.authentication})"
            )
        sampler.start()
        print(f"plan: {plan.name}; Moorage --workers {args.workers}; data under {root}")
        asyncio.run(bench.run())
    except KeyboardInterrupt:
        interrupted = True
        code = 130
        print("\ninterrupted: stopping both servers", file=sys.stderr)
    except (ServerError, ScenarioFailed) as error:
        code = 1
        print(f"\nbenchmark failed: {error}", file=sys.stderr)
    finally:
        sampler.stop()
        for server in servers:
            server.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    environment["Duration"] = f"{time.monotonic() - began:.0f}s" + (
        " (interrupted)" if interrupted else ""
    )
    if not bench.results:
        return code or 1
    rss_outcomes(bench)
    usages = {label: sampler.usage(label) for label in labels}
    notes = _notes(bench, labels)
    print()
    print(render(bench.results, labels, environment, usages, notes, markdown=False))
    found = {k: v for k, v in verdicts(bench.results, labels).items() if v != "?"}
    missed = [key for key, verdict in found.items() if verdict != "yes"]
    summary = f"targets met: {len(found) - len(missed)}/{len(found)} measured"
    print(summary + (f"; not met: {', '.join(missed)}" if missed else ""))
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(
            render(bench.results, labels, environment, usages, notes, markdown=True)
        )
        print(f"markdown written to {args.markdown}")
    if any(outcome.error for per in bench.results.values() for outcome in per.values()):
        code = code or 1
    return code


if __name__ == "__main__":
    sys.exit(main())
