"""Re-encrypt every stored secret under the keyring's primary key."""

from __future__ import annotations

from blueline.persistence import queries
from blueline.persistence.database import Database
from blueline.security.vault import Vault, credentials_aad, webhook_secret_aad

_BATCH = 200


async def rotate_all(db: Database, vault: Vault) -> int:
    """Returns how many ciphertexts changed; running it again changes none."""
    changed = 0
    last_id = ""
    while True:
        async with db.transaction() as session:
            setups = await queries.lock_setups_after(session, last_id, _BATCH)
            if not setups:
                return changed
            for setup in setups:
                last_id = setup.id
                if setup.credentials_enc and not vault.is_current(setup.credentials_enc):
                    setup.credentials_enc = vault.rotate(
                        setup.credentials_enc, aad=credentials_aad(setup.id)
                    )
                    changed += 1
                if setup.webhook_secret_enc and not vault.is_current(setup.webhook_secret_enc):
                    setup.webhook_secret_enc = vault.rotate(
                        setup.webhook_secret_enc, aad=webhook_secret_aad(setup.id)
                    )
                    changed += 1
                session.add(setup)
