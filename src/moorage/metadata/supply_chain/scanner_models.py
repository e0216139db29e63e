"""Registered scanner adapters (Harbor's pluggable scanner API) that projects can scan with.

The adapter's credential is stored encrypted (AES-GCM, with a key from the server secrets) and
never leaves the registry except in the adapter's own `Authorization` header.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, DateTime, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from moorage.metadata.registry.models import Base, utcnow


class ScannerAdapterRow(Base):
    __tablename__ = "scanner_adapters"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    url: Mapped[str] = mapped_column(String(2048))
    description: Mapped[str | None] = mapped_column(String(255), nullable=True)
    auth: Mapped[str] = mapped_column(String(16))  # none | bearer | basic | api-key
    username: Mapped[str | None] = mapped_column(String(255), nullable=True)  # basic only
    api_key_header: Mapped[str | None] = mapped_column(String(64), nullable=True)  # api-key only
    sealed_credential: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    skip_tls_verify: Mapped[bool] = mapped_column(Boolean, default=False)
    ca_bundle: Mapped[str | None] = mapped_column(Text, nullable=True)  # PEM
    allow_private_network: Mapped[bool] = mapped_column(Boolean, default=False)
    timeout_seconds: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # The adapter's last metadata document (from a ping), and when it was read.
    capabilities: Mapped[dict[str, object] | None] = mapped_column(JSON, nullable=True)
    pinged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_by: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
