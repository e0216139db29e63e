"""Offline consistency check: metadata against storage, and promotion records against the
promotions they record."""

from __future__ import annotations

from dataclasses import dataclass, field

from moorage.config import Settings
from moorage.domain.digest import Digest
from moorage.metadata.database import has_schema, make_engine, masked_url, migrate
from moorage.metadata.registry.store import MetadataStore
from moorage.metadata.staging.promotion_store import PromotionStore
from moorage.metadata.supply_chain.vulndb_store import VulndbStore
from moorage.storage.factory import make_storage


@dataclass
class Findings:
    problems: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)


def check(settings: Settings, *, repair: bool = False) -> Findings:
    findings = Findings()
    if settings.database_url is None and not (settings.data_dir / "moorage.db").is_file():
        # A mistyped --data-dir must not be "repaired" into a fresh, empty and clean registry.
        findings.problems.append(f"{settings.data_dir} holds no registry database (moorage.db)")
        return findings
    engine = make_engine(settings.resolved_database_url, pool_size=1)
    if settings.database_url is not None and not has_schema(engine):
        engine.dispose()
        url = masked_url(settings.database_url)
        findings.problems.append(f"{url} holds no registry database (no schema)")
        return findings
    migrate(engine)
    store = MetadataStore(engine)
    storage = make_storage(settings)
    try:
        for manifest, blob in store.manifests_with_missing_blobs():
            findings.problems.append(
                f"manifest {manifest} references blob {blob}, which has no record"
            )
        for digest, size in store.all_blobs():
            stored = storage.blob_size(Digest.parse(digest))
            if stored is None:
                findings.problems.append(f"blob {digest} is recorded but missing from storage")
            elif stored != size:
                findings.problems.append(
                    f"blob {digest} is {stored} bytes in storage, {size} recorded"
                )
        for generation in VulndbStore(engine).generations():
            stored = storage.blob_size(Digest.parse(generation.digest))
            if stored != generation.size:
                findings.problems.append(
                    f"vulnerability database generation {generation.id} ({generation.digest})"
                    " is missing from storage or damaged"
                )
        for repository, digest in PromotionStore(engine, store).dangling_records():
            problem = f"promotion record {repository}@{digest} records no stored promotion"
            if repair and store.delete_manifest(repository, digest) is not None:
                findings.repaired.append(f"{problem}: removed")
            else:
                findings.problems.append(problem)
    finally:
        store.close()
    return findings
