"""Importing and rolling back the vulnerability database, audited.

The server's API and the `moorage vulndb` commands both come through here, so an import or a
rollback is checked against the same configured key and recorded the same way: one AccessEvent
(`vulndb:import`, `vulndb:rollback`) whether it succeeded or failed, with the generation, the
record counts and the checksum of what was imported; the scan service listens for these to
re-match at once. Imports are slow (seconds to minutes): callers run them on a worker thread.

The server and the commands keep the generations in the registry's storage and metadata
database (vulndb_sharing.py), so every node sharing them sees the same current generation;
`<data_dir>/vulndb` (or `vulndb_cache_dir`) is only this node's cache and scratch space.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from moorage.config import ConfigError, Settings
from moorage.domain.events import AccessEvent, Actor
from moorage.metadata.supply_chain.vulndb_store import VulndbStore
from moorage.services.events import EventBus
from moorage.services.supply_chain.vulndb_sharing import SharedGenerationStore
from moorage.storage.base import StorageDriver
from moorage.vulnerability.bundle import BundleError, load_public_key
from moorage.vulnerability.database import (
    UPLOADS,
    DatabaseStatus,
    GenerationInfo,
    ImportResult,
    VulnerabilityDatabase,
    VulnerabilityDatabaseError,
)

IMPORT_ACTION = "vulndb:import"
ROLLBACK_ACTION = "vulndb:rollback"
RESOURCE = "vulnerability-database"


def database_directory(settings: Settings) -> Path:
    """Where earlier versions kept the generations (adopted into the shared store on start)."""
    return settings.data_dir / "vulndb"


def cache_directory(settings: Settings) -> Path:
    """This node's cache of generation files and the scratch space of its imports."""
    return settings.vulndb_cache_dir or database_directory(settings)


def shared_database(
    settings: Settings,
    catalog: VulndbStore,
    storage: StorageDriver,
    *,
    lock_timeout_seconds: float = 0.0,
) -> VulnerabilityDatabase:
    """The deployment's vulnerability database as this node reads and changes it."""
    cache = cache_directory(settings)
    store = SharedGenerationStore(
        catalog, storage, cache / "cache", legacy=database_directory(settings)
    )
    return VulnerabilityDatabase(cache, store=store, lock_timeout_seconds=lock_timeout_seconds)


def configured_public_key(settings: Settings) -> bytes | None:
    """The configured bundle-signing key's PEM, checked; ConfigError when it is unusable."""
    if settings.vulndb_public_key is None:
        return None
    try:
        pem = settings.vulndb_public_key.read_bytes()
    except OSError as error:
        raise ConfigError(f"cannot read vulndb_public_key: {error}") from None
    try:
        load_public_key(pem)
    except BundleError as error:
        raise ConfigError(f"vulndb_public_key: {error}") from None
    return pem


class VulnerabilityDatabaseService:
    def __init__(
        self,
        database: VulnerabilityDatabase,
        events: EventBus,
        *,
        public_key_pem: bytes | None = None,
        require_signature: bool = False,
        max_upload_bytes: int = 4 << 30,
    ) -> None:
        self.database = database
        self.max_upload_bytes = max_upload_bytes
        self._events = events
        self._public_key_pem = public_key_pem
        self._require_signature = require_signature

    @classmethod
    def from_settings(
        cls, settings: Settings, events: EventBus, database: VulnerabilityDatabase
    ) -> VulnerabilityDatabaseService:
        return cls(
            database,
            events,
            public_key_pem=configured_public_key(settings),
            require_signature=settings.vulndb_require_signature,
            max_upload_bytes=settings.vulndb_max_upload_bytes,
        )

    @property
    def upload_directory(self) -> Path:
        """Where uploads wait for their import: the data directory's file system."""
        path = self.database.scratch / UPLOADS
        path.mkdir(parents=True, exist_ok=True)
        return path

    def status(self) -> DatabaseStatus:
        return self.database.status()

    def import_file(
        self,
        actor: Actor,
        path: Path,
        *,
        source_name: str | None = None,
        cve_sources: Sequence[Path] = (),
    ) -> ImportResult:
        """Import a bundle, a directory of OSV zips or one zip (blocking), with optional
        severity-only CVE JSON 5 sources. Raises BundleError (bad or untrusted input) or
        VulnerabilityDatabaseError (busy)."""
        try:
            result = self.database.import_path(
                path,
                public_key_pem=self._public_key_pem,
                require_signature=self._require_signature,
                cve_sources=cve_sources,
            )
        except (BundleError, VulnerabilityDatabaseError) as error:
            self._publish(
                IMPORT_ACTION,
                actor,
                "failure",
                {"source": (source_name or path.name)[:255], "reason": str(error)[:500]},
            )
            raise
        self._publish(
            IMPORT_ACTION,
            actor,
            "success",
            {
                "generation": result.generation,
                "records": result.records,
                "skipped": result.skipped,
                "source": (source_name or path.name)[:255],
                "source_checksum": result.source_checksum,
                "signed": result.signed,
                "cve_records": result.cve_records,
            },
        )
        return result

    def rollback(self, actor: Actor) -> GenerationInfo:
        """Make the previous generation current again (blocking)."""
        try:
            info = self.database.rollback()
        except VulnerabilityDatabaseError as error:
            self._publish(ROLLBACK_ACTION, actor, "failure", {"reason": str(error)[:500]})
            raise
        self._publish(
            ROLLBACK_ACTION,
            actor,
            "success",
            {
                "generation": info.id,
                "records": info.records,
                "source_checksum": info.source_checksum,
            },
        )
        return info

    def _publish(self, action: str, actor: Actor, result: str, details: dict[str, object]) -> None:
        self._events.publish(
            AccessEvent(action, actor, result=result, resource=RESOURCE, details=details)
        )
