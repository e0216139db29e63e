"""The complete schema: importing this registers every table on `Base.metadata`."""

from moorage.metadata import (
    iam_models,
    models,
    policy_models,
    promotion_models,
    replication_models,
    scan_models,
    scanner_models,
    trust_models,
    virtual_models,
)
from moorage.metadata.models import Base

__all__ = [
    "Base",
    "iam_models",
    "models",
    "policy_models",
    "promotion_models",
    "replication_models",
    "scan_models",
    "scanner_models",
    "trust_models",
    "virtual_models",
]
