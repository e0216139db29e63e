"""First-start preparation of a data directory: schema, signing key, the `admin` account."""

from __future__ import annotations

import logging

from moorage.config import Settings
from moorage.metadata.access.iam_store import IamStore
from moorage.metadata.database import make_engine, migrate, startup_lock
from moorage.services.access.audit import AuditLog
from moorage.services.access.identity import IdentityService, policy_from
from moorage.services.access.tokens import ensure_signing_key
from moorage.services.events import EventBus

log = logging.getLogger("moorage.server")


def prepare_data(settings: Settings) -> None:
    """Migrate the schema, create the first signing key and the `admin` account (once)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.resolved_database_url, pool_size=1)
    try:
        with startup_lock(engine):
            migrate(engine)
            store = IamStore(engine)
            ensure_signing_key(store)
            events = EventBus()
            events.subscribe(AuditLog(store, immediate=True))
            identity = IdentityService(store, events, policy_from(settings))
            generated = identity.bootstrap_admin(settings.initial_admin_password())
        if generated is not None:
            log.warning(
                "created the admin account with a generated password, shown only this once: %s"
                " -- change it, or set MOORAGE_ADMIN_PASSWORD before the first start",
                generated,
            )
    finally:
        engine.dispose()
