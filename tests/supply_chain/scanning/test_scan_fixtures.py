"""The fixture images against their oracles, in process: catalog, squash, match.

The same images go through the server in tests/supply_chain/scanning/test_scan_flow.py; here a
mismatch points at the catalogers or the matcher rather than at the scanning flow.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from moorage.scanning.packages import Inventory
from moorage.scanning.squash import LayerSource, MemoryLayerCache, inventory_image
from moorage.vulnerability.database import Generation, VulnerabilityDatabase
from moorage.vulnerability.matcher import match
from tests.support.images import Image
from tests.support.osv import write_bundle
from tests.support.scan_images import (
    BUNDLE_V1,
    FIXTURE_TOOLS,
    Fixtures,
    bundle_v2,
    expected,
    fixtures,
)

pytestmark = pytest.mark.tools(*FIXTURE_TOOLS)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Fixtures:
    return fixtures(tmp_path_factory.mktemp("fixtures"))


@pytest.fixture(scope="module")
def generations(tmp_path_factory: pytest.TempPathFactory) -> list[Generation]:
    work = tmp_path_factory.mktemp("vulndb")
    database = VulnerabilityDatabase(work / "vulndb")
    found = []
    for number, bundle in enumerate((BUNDLE_V1, bundle_v2()), start=1):
        database.import_path(write_bundle(work / f"bundle{number}.tar.gz", bundle))
        current = database.current()
        assert current is not None
        found.append(current)
    return found


def inventory(image: Image, cache: MemoryLayerCache | None = None) -> Inventory:
    diff_ids = json.loads(image.config.data)["rootfs"]["diff_ids"]
    sources = [
        LayerSource(diff_id, lambda blob=blob: io.BytesIO(blob.data))
        for diff_id, blob in zip(diff_ids, image.layers, strict=True)
    ]
    return inventory_image(sources, cache)


def api_findings(image_inventory: Inventory, generation: Generation) -> set[tuple[Any, ...]]:
    """The matched findings, spelled as the oracle (and the API) spells them."""
    return {
        (f.id, f.package, f.installed_version, f.fixed_version, f.severity.value, f.ecosystem)
        for f in match(image_inventory, generation).findings
    }


def oracle(name: str, generation: int) -> tuple[set[tuple[Any, ...]], set[str]]:
    document = expected(name, generation)
    findings = {
        (
            f["id"],
            f["package"],
            f["installedVersion"],
            f["fixedVersion"],
            f["severity"],
            f["ecosystem"],
        )
        for f in document["findings"]
    }
    return findings, {entry["id"] for entry in document.get("absent", [])}


@pytest.mark.parametrize("generation", [1, 2])
@pytest.mark.parametrize(
    "name", ["debian", "distroless", "alpine", "rocky", "languages", "whiteouts"]
)
def test_image_findings_match_the_oracle(
    built: Fixtures, generations: list[Generation], name: str, generation: int
) -> None:
    found = api_findings(inventory(built.images[name]), generations[generation - 1])
    wanted, absent = oracle(name, generation)
    assert found == wanted
    assert not absent & {finding[0] for finding in found}


@pytest.mark.parametrize("generation", [1, 2])
def test_index_findings_are_the_union_of_its_platforms(
    built: Fixtures, generations: list[Generation], generation: int
) -> None:
    found: set[tuple[Any, ...]] = set()
    for image in built.index.images:
        found |= api_findings(inventory(image), generations[generation - 1])
    wanted, absent = oracle("multiarch", generation)
    assert found == wanted
    assert not absent & {finding[0] for finding in found}


def test_stored_inventory_round_trips(built: Fixtures) -> None:
    for image in built.images.values():
        squashed = inventory(image)
        assert Inventory.from_json(json.loads(json.dumps(squashed.to_json()))) == squashed


def test_a_shared_layer_is_catalogued_once(built: Fixtures) -> None:
    """The multi-arch children and the standalone images share their package layers."""
    cache = MemoryLayerCache()
    first = inventory(built.images["alpine"], cache)
    stored = dict(cache._inventories)
    again = inventory(built.index.images[1], cache)  # the arm64 child: the same layer
    assert cache._inventories == stored
    assert again == first


def test_every_fixture_builds_deterministically(tmp_path: Path, built: Fixtures) -> None:
    rebuilt = fixtures(tmp_path)
    for name, image in built.images.items():
        if name in ("rocky",):  # rpm writes install times into its database
            continue
        assert rebuilt.images[name].manifest.digest == image.manifest.digest, name
