"""Signature trust tables: each project's public keys, CA trust stores, rules and policy version.

Every change to a project's keys, stores or rules increments its `trust_policy_versions` row in
the same transaction, so a cached verification result names the exact policy it was made under.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from moorage.metadata.registry.models import Base, utcnow


class TrustKeyRow(Base):
    """A public key (PEM SPKI) that cosign-key verifiers of the project may name."""

    __tablename__ = "trust_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    algorithm: Mapped[str] = mapped_column(String(32))
    fingerprint: Mapped[str] = mapped_column(String(64))  # sha256 of the DER SPKI, hex
    pem: Mapped[str] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_by: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (UniqueConstraint("project_id", "name", name="uq_trust_keys_name"),)


class TrustStoreRow(Base):
    """A named set of CA certificates (PEM) that notation verifiers of the project may name."""

    __tablename__ = "trust_stores"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    certificates: Mapped[str] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_by: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (UniqueConstraint("project_id", "name", name="uq_trust_stores_name"),)


class TrustRuleRow(Base):
    """One rule of a project's trust policy (see `moorage.signing.trust`)."""

    __tablename__ = "trust_rules"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    repositories: Mapped[str] = mapped_column(String(255))  # glob, relative to the project
    mode: Mapped[str] = mapped_column(String(16))  # enforce | audit | off
    require: Mapped[str] = mapped_column(String(16))  # any-of | all-of | at-least
    count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    verifiers: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    created_by: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (
        UniqueConstraint("project_id", "repositories", name="uq_trust_rules_repositories"),
    )


class TrustPolicyVersion(Base):
    """A project's trust policy version: +1 on every change to its keys, stores or rules."""

    __tablename__ = "trust_policy_versions"

    project_id: Mapped[int] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True
    )
    version: Mapped[int] = mapped_column(BigInteger)
