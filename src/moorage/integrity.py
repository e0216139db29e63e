"""Offline consistency check: metadata against storage."""

from __future__ import annotations

from moorage.config import Settings
from moorage.domain.digest import Digest
from moorage.metadata.database import make_engine, migrate
from moorage.metadata.store import MetadataStore
from moorage.storage.filesystem import FilesystemStorage


def check(settings: Settings) -> list[str]:
    if settings.database_url is None and not (settings.data_dir / "moorage.db").is_file():
        # A mistyped --data-dir must not be "repaired" into a fresh, empty and clean registry.
        return [f"{settings.data_dir} holds no registry database (moorage.db)"]
    engine = make_engine(settings.resolved_database_url, pool_size=1)
    migrate(engine)
    store = MetadataStore(engine)
    storage = FilesystemStorage(settings.data_dir / "storage")
    problems: list[str] = []
    try:
        for manifest, blob in store.manifests_with_missing_blobs():
            problems.append(f"manifest {manifest} references blob {blob}, which has no record")
        for digest, size in store.all_blobs():
            stored = storage.blob_size(Digest.parse(digest))
            if stored is None:
                problems.append(f"blob {digest} is recorded but missing from storage")
            elif stored != size:
                problems.append(f"blob {digest} is {stored} bytes in storage, {size} recorded")
    finally:
        store.close()
    return problems
