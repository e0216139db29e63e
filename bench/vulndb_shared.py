"""The shared vulnerability database: what sharing a generation between nodes costs.

    python bench/vulndb_shared.py [--records N] [--tmpdir DIR] [--keep]

On one machine, with the embedded metadata database (SQLite) and the filesystem storage:

1. import N (default 200,000) synthetic OSV records into the node-local file layout, then the
   same into the shared store (upload to storage + one transaction), for the difference;
2. a second node's first use of that generation: fetch from storage with the digest verified;
3. a process opening the cached file again (the sha256 check on open);
4. the pointer read every scan does (`current()` with nothing changed), per call.

Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.scanning import write_database

from moorage.metadata.database import make_engine, migrate, sqlite_url
from moorage.metadata.supply_chain.vulndb_store import VulndbStore
from moorage.services.supply_chain.vulndb_sharing import SharedGenerationStore
from moorage.storage.filesystem import FilesystemStorage
from moorage.vulnerability.database import VulnerabilityDatabase

T = TypeVar("T")


def timed(rows: list[tuple[str, str]], label: str, action: Callable[[], T]) -> T:
    started = time.perf_counter()
    result = action()
    rows.append((label, f"{time.perf_counter() - started:.3f} s"))
    return result


def run(records: int, workdir: Path) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    source = workdir / "osv"
    write_database(source, records, 0)
    local = VulnerabilityDatabase(workdir / "local")
    timed(rows, f"import {records:,} records, node-local files", lambda: local.import_path(source))

    engine = make_engine(sqlite_url(workdir / "moorage.db"))
    migrate(engine)
    storage = FilesystemStorage(workdir / "storage")

    def node(name: str) -> VulnerabilityDatabase:
        store = SharedGenerationStore(VulndbStore(engine), storage, workdir / name / "cache")
        return VulnerabilityDatabase(workdir / name, store=store)

    first = node("node-a")
    result = timed(
        rows, f"import {records:,} records, shared store", lambda: first.import_path(source)
    )
    cached = workdir / "node-a" / "cache" / f"{result.generation}.sqlite"
    size = cached.stat().st_size
    rows.append(("  generation file size", f"{size / 1e6:.0f} MB"))

    second = node("node-b")
    timed(rows, "second node: fetch + verify + open", second.current)
    again = node("node-b")
    timed(rows, "another process: verify the cached file + open", again.current)

    calls = 2000
    started = time.perf_counter()
    for _ in range(calls):
        again.current()
    per_call = (time.perf_counter() - started) / calls
    rows.append(("pointer read per current() (unchanged)", f"{per_call * 1e6:.0f} µs"))
    engine.dispose()
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--tmpdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    options = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="moorage-vulndb-shared-", dir=options.tmpdir))
    try:
        rows = run(options.records, workdir)
    finally:
        if not options.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    width = max(len(label) for label, _ in rows)
    print(f"{'step'.ljust(width)}  result")
    print(f"{'-' * width}  ------")
    for label, value in rows:
        print(f"{label.ljust(width)}  {value}")


if __name__ == "__main__":
    main()
