"""A batch of webhook deliveries reads the rows it names by key, however stale
PostgreSQL's statistics are.

The batch's rows reach PostgreSQL as parameters whose size the planner guesses. Guessed
large, a batch of a few was hashed against a scan of every setup; and with statistics
taken while every line was pending (a fresh or freshly loaded database), "does this
setup have an assigned line" read every assigned line of the table through the pending
index. Either cost grows with the table, not the batch. PostgreSQL counts, per
transaction, the scans and index tuples each table took: the apply of a batch of five
must take no sequential scan and read about as many lines as its setups hold.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from blueline.domain import Origin
from blueline.persistence.database import Database
from blueline.persistence.dialect import POSTGRESQL
from blueline.persistence.journal import Journal
from blueline.persistence.setups import SetupStore
from blueline.persistence.webhooks import DeliveryStore
from blueline.provisioning.assignment import Assigner, Placement
from blueline.security.chain import Sealer
from blueline.security.vault import Keyring, Vault
from tests.conftest import keyring_spec
from tests.support.databases import sqlalchemy_url, truncate_pg

SETUPS = 3_000
LINES_PER_SETUP = 10
BATCH = 5

_SEED = f"""
-- Autovacuum must not refresh the statistics behind the test's back.
ALTER TABLE imessage_setup SET (autovacuum_enabled = off);
ALTER TABLE phone_line SET (autovacuum_enabled = off);
INSERT INTO workspace (id, name, created_at) VALUES ('wsp_plans', 'plans', now());
INSERT INTO imessage_setup (id, workspace_id, business_name, label, state, status,
    created_at, updated_at)
SELECT 'ims_' || lpad(n::text, 8, '0'), 'wsp_plans', 'Clinic ' || n, 'label', 'ready',
    'PENDING', now(), now()
FROM generate_series(1, {SETUPS}) AS n;
INSERT INTO phone_line (id, setup_id, workspace_id, status, request_id, requested_at)
SELECT 'pln_' || lpad(s::text, 8, '0') || '_' || l, 'ims_' || lpad(s::text, 8, '0'),
    'wsp_plans', 'PENDING', 'req_' || s || '_' || l, now()
FROM generate_series(1, {SETUPS}) AS s, generate_series(1, {LINES_PER_SETUP}) AS l;
ANALYZE;
-- After the statistics: a third of the lines assigned, which the planner does not know.
UPDATE phone_line SET status = 'ASSIGNED', phone_number = '+1555' || lpad(
    replace(substr(id, 5), '_', ''), 7, '0'), assigned_at = now()
WHERE setup_id <= 'ims_' || lpad({SETUPS // 3}::text, 8, '0');
"""

_SCANS = """
SELECT relname, seq_scan, coalesce(idx_tup_fetch, 0)
FROM pg_stat_xact_user_tables WHERE relname IN ('imessage_setup', 'phone_line')
"""


@pytest.fixture
async def db(pg_dsn: str) -> AsyncIterator[Database]:
    await truncate_pg(pg_dsn)
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute(_SEED)
    finally:
        await conn.close()
    database = Database(sqlalchemy_url(pg_dsn))
    yield database
    await database.dispose()
    await truncate_pg(pg_dsn)
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute(
            "ALTER TABLE imessage_setup RESET (autovacuum_enabled); "
            "ALTER TABLE phone_line RESET (autovacuum_enabled)"
        )
    finally:
        await conn.close()


async def test_a_batch_reads_its_setups_and_lines_by_key(db: Database) -> None:
    sealer = Sealer(Vault(Keyring.parse(keyring_spec())))
    assigner = Assigner(SetupStore(POSTGRESQL), Journal(POSTGRESQL, sealer))
    # Setups past the assigned third: each placement moves its setup to ACTIVE.
    setups = [f"ims_{n:08d}" for n in range(SETUPS - BATCH + 1, SETUPS + 1)]
    placements = [
        Placement("wsp_plans", s, f"req_{int(s[4:])}_1", f"+1999{i:07d}", Origin("provider"))
        for i, s in enumerate(setups)
    ]
    # And two for lines assigned already, to other numbers: what those lines hold now is
    # read back to answer them (a conflict).
    placements += [
        Placement("wsp_plans", f"ims_{n:08d}", f"req_{n}_1", f"+1888{n:07d}", Origin("provider"))
        for n in (1, 2)
    ]
    now = datetime.now(UTC)
    async with db.write() as conn:
        found = await DeliveryStore(POSTGRESQL).secrets_of(conn, setups, "decoy")
        placed = await assigner.place(conn, placements, now)
        await assigner.finish(conn, placed, now)
        scans = {str(r[0]): (int(r[1]), int(r[2])) for r in await conn.fetch(_SCANS, ())}
        statuses = await conn.fetch(
            "SELECT DISTINCT status FROM imessage_setup WHERE id = ANY($1::text[])", (setups,)
        )

    assert sorted(found) == setups
    assert [r.result.value for r in placed.results] == ["applied"] * BATCH + ["conflict"] * 2
    assert [r[0] for r in statuses] == ["ACTIVE"]
    assert scans["imessage_setup"][0] == 0, scans
    assert scans["phone_line"][0] == 0, scans
    # Each setup's own lines, a few times over (the status, the count, the snapshot):
    # far from the thousand assigned lines a scan of the pending index would fetch.
    assert scans["phone_line"][1] <= 8 * BATCH * LINES_PER_SETUP, scans
