"""Server secrets in the metadata store: random keys every worker process shares."""

from __future__ import annotations

import secrets

from sqlalchemy import select

from moorage.metadata.database import read_transaction, write_transaction
from moorage.metadata.registry.registry_base import RegistryStoreBase
from moorage.metadata.registry.registry_records import secrets_table


class ServerSecrets(RegistryStoreBase):
    def server_secret(self, name: str) -> bytes:
        """A random 32-byte key shared by every worker, created on first use."""
        with read_transaction(self._engine) as connection:
            found = connection.execute(
                select(secrets_table.c.value).where(secrets_table.c.name == name)
            ).scalar()
        if found is not None:
            return bytes(found)
        with write_transaction(self._engine) as connection:
            self._insert_ignore(
                connection, secrets_table, [{"name": name, "value": secrets.token_bytes(32)}]
            )
            return bytes(
                connection.execute(
                    select(secrets_table.c.value).where(secrets_table.c.name == name)
                ).scalar_one()
            )
