"""Scanning benchmark: vulnerability database import, matching, and a 500-package image scan.

    python bench/scanning.py [--records N] [--packages N] [--tmpdir DIR] [--keep]

Steps, each timed once:

1. import N (default 200,000) synthetic OSV records (`tests.support.osv.synthetic_database`:
   real package names, plausible versions) from a directory of `<ecosystem>/all.zip` files;
2. match 500 Debian packages named in that data against it, with a cold and a warm cache;
3. scan a synthetic image layer (a tar.gz with os-release and a dpkg status of 500 packages):
   catalog, squash and match, as a scan on push does;
4. re-match that image from its stored layer inventory (JSON, as the scan service keeps it)
   against a freshly opened generation: no layer is read;
5. import a second generation with two records changed and compute the changed packages.

Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import random
import shutil
import sys
import tarfile
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.osv import osv_record, synthetic_database, write_osv_zip

from moorage.scanning.catalog import CATALOGER_VERSION
from moorage.scanning.packages import Inventory, LayerInventory
from moorage.scanning.squash import LayerSource, MemoryLayerCache, inventory_image, squash
from moorage.vulnerability.database import Generation, VulnerabilityDatabase
from moorage.vulnerability.matcher import match

T = TypeVar("T")


def timed(rows: list[tuple[str, str]], label: str, action: Callable[[], T]) -> T:
    started = time.perf_counter()
    result = action()
    elapsed = time.perf_counter() - started
    rows.append((label, f"{elapsed:.3f} s"))
    return result


def write_database(root: Path, count: int, seed: int) -> dict[str, list[dict[str, Any]]]:
    by_ecosystem: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in synthetic_database(count, seed):
        ecosystem = record["affected"][0]["package"]["ecosystem"].split(":")[0]
        by_ecosystem[ecosystem].append(record)
    for ecosystem, records in by_ecosystem.items():
        write_osv_zip(root / ecosystem / "all.zip", records)
    return by_ecosystem


def debian_packages(records: list[dict[str, Any]], count: int, seed: int) -> list[tuple[str, str]]:
    """`count` (name, version) pairs of Debian 12 packages the data names; half of them at a
    version inside an advisory's range, half at its fixed version."""
    ranges: dict[str, list[str]] = {}
    for record in records:
        entry = record["affected"][0]
        if entry["package"]["ecosystem"] != "Debian:12":
            continue
        events = entry["ranges"][0]["events"]
        fixed = next((event["fixed"] for event in events if "fixed" in event), None)
        ranges.setdefault(entry["package"]["name"], [events[0]["introduced"], fixed or "0"])
    rng = random.Random(seed)
    names = sorted(ranges)[: count * 4]
    chosen = rng.sample(names, min(count, len(names)))
    return [
        (name, ranges[name][index % 2] if ranges[name][1] != "0" else ranges[name][0])
        for index, name in enumerate(sorted(chosen))
    ]


def dpkg_status(packages: list[tuple[str, str]]) -> bytes:
    stanzas = []
    for name, version in packages:
        # Half the binaries come from a source package of another name, as in Debian.
        source = f"Source: {name}\n" if len(stanzas) % 2 else ""
        binary = f"lib{name}" if source else name
        stanzas.append(
            f"Package: {binary}\nStatus: install ok installed\nPriority: optional\n"
            f"Architecture: amd64\n{source}Version: {version}\n"
            f"Description: {name}\n the {name} package\n"
        )
    return "\n".join(stanzas).encode()


OS_RELEASE = b'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n'


def layer_blob(packages: list[tuple[str, str]]) -> tuple[str, bytes]:
    """The layer's diff_id (sha256 of the tar) and its gzip-compressed blob."""
    files = {
        "etc/os-release": OS_RELEASE,
        "etc/debian_version": b"12.5\n",
        "var/lib/dpkg/status": dpkg_status(packages),
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    tar = buffer.getvalue()
    return "sha256:" + hashlib.sha256(tar).hexdigest(), gzip.compress(tar)


def run(records: int, package_count: int, workdir: Path) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    source = workdir / "osv"
    by_ecosystem = timed(
        rows,
        f"generate {records:,} records as OSV zips",
        lambda: write_database(source, records, 0),
    )
    database = VulnerabilityDatabase(workdir / "vulndb")
    result = timed(
        rows, f"import {records:,} records (new generation)", lambda: database.import_path(source)
    )
    rows.append(("  records imported / skipped", f"{result.records:,} / {result.skipped}"))
    generation_file = database.directory / "generations" / f"{result.generation}.sqlite"
    rows.append(("  generation file size", f"{generation_file.stat().st_size / 1e6:.0f} MB"))
    generation = database.current()
    assert generation is not None

    packages = debian_packages(by_ecosystem["Debian"], package_count, 1)
    diff_id, blob = layer_blob(packages)
    cache = MemoryLayerCache()

    @contextmanager
    def open_blob() -> Iterator[BinaryIO]:
        yield io.BytesIO(blob)

    layers = [LayerSource(diff_id, open_blob)]
    inventory: Inventory = timed(
        rows,
        f"catalog + squash a layer of {len(packages)} dpkg packages",
        lambda: inventory_image(layers, cache),
    )
    rows.append(("  packages found", str(len(inventory.packages))))
    cold = timed(
        rows,
        f"match {len(inventory.packages)} packages (cold cache)",
        lambda: match(inventory, generation),
    )
    timed(
        rows,
        f"match {len(inventory.packages)} packages (warm cache)",
        lambda: match(inventory, generation),
    )
    rows.append(("  findings", str(len(cold.findings))))

    fresh = VulnerabilityDatabase(workdir / "vulndb")

    def full_scan() -> int:
        scan_cache = MemoryLayerCache()
        scanned = inventory_image(layers, scan_cache)
        opened = fresh.current()
        assert opened is not None
        return len(match(scanned, opened).findings)

    timed(rows, "full scan: catalog + squash + match (cold)", full_scan)

    cached = cache.get(diff_id, CATALOGER_VERSION)
    assert cached is not None
    stored = json.dumps(cached.to_json())

    def rematch() -> int:
        layer = LayerInventory.from_json(json.loads(stored))
        reopened = Generation(generation.path, generation.info)
        return len(match(squash([layer]), reopened).findings)

    timed(rows, "re-match from the stored inventory (no layer read)", rematch)

    changed_source = workdir / "osv2"
    shutil.copytree(source, changed_source)
    debian = list(by_ecosystem["Debian"])
    first, second = debian[0], debian[1]
    debian[0] = osv_record(
        first["id"], "Debian:12", first["affected"][0]["package"]["name"], fixed="99:1.0-1"
    )
    debian[1] = dict(second, withdrawn="2024-06-01T00:00:00Z")
    write_osv_zip(changed_source / "Debian" / "all.zip", debian)
    second_result = timed(
        rows,
        "import a second generation (2 records changed)",
        lambda: database.import_path(changed_source),
    )
    new_generation = database.current()
    assert new_generation is not None
    changed = timed(
        rows,
        "changed packages between the generations",
        lambda: database.changed_packages(result.generation, new_generation),
    )
    rows.append(("  changed (ecosystem, name) keys", str(len(changed or ()))))
    rows.append(("  second generation", second_result.generation))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--packages", type=int, default=500)
    parser.add_argument("--tmpdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    options = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="moorage-scan-bench-", dir=options.tmpdir))
    try:
        rows = run(options.records, options.packages, workdir)
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
