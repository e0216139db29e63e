"""The layer inventory cache in the database: each layer is catalogued once, whichever image
(or worker process, or node) meets it first, and every image sharing it reuses the result."""

from __future__ import annotations

import json
import logging

from moorage.metadata.supply_chain.scan_store import ScanStore
from moorage.scanning.packages import LayerInventory

log = logging.getLogger("moorage.scanning")


class StoredLayerCache:
    """`moorage.scanning.squash.LayerCache` over the `layer_inventories` table."""

    def __init__(self, store: ScanStore) -> None:
        self._store = store

    def get(self, diff_id: str, cataloger_version: str) -> LayerInventory | None:
        text = self._store.layer_inventory(diff_id, cataloger_version)
        if text is None:
            return None
        try:
            return LayerInventory.from_json(json.loads(text))
        except (ValueError, KeyError):
            # A damaged entry is only a lost shortcut: the layer is catalogued again.
            log.warning("unreadable cached inventory of layer %s", diff_id)
            return None

    def put(self, inventory: LayerInventory) -> None:
        self._store.put_layer_inventory(
            inventory.diff_id,
            inventory.cataloger_version,
            json.dumps(inventory.to_json(), separators=(",", ":")),
        )


class CountingCache:
    """Counts what one scan found in the cache, for its log line."""

    def __init__(self, cache: StoredLayerCache) -> None:
        self._cache = cache
        self.hits = 0
        self.misses = 0

    def get(self, diff_id: str, cataloger_version: str) -> LayerInventory | None:
        found = self._cache.get(diff_id, cataloger_version)
        if found is None:
            self.misses += 1
        else:
            self.hits += 1
        return found

    def put(self, inventory: LayerInventory) -> None:
        self._cache.put(inventory)
