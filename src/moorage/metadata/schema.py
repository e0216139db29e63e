"""The complete schema: importing this registers every table on `Base.metadata`."""

from moorage.metadata.access import iam_models
from moorage.metadata.distribution import replication_models, virtual_models
from moorage.metadata.lifecycle import gc_models, pull_models, quota_models, retention_models
from moorage.metadata.registry import models
from moorage.metadata.registry.models import Base
from moorage.metadata.staging import promotion_models
from moorage.metadata.supply_chain import (
    policy_models,
    scan_models,
    scanner_models,
    trust_models,
    vulndb_models,
)

__all__ = [
    "Base",
    "gc_models",
    "iam_models",
    "models",
    "policy_models",
    "promotion_models",
    "pull_models",
    "quota_models",
    "replication_models",
    "retention_models",
    "scan_models",
    "scanner_models",
    "trust_models",
    "virtual_models",
    "vulndb_models",
]
