"""Bulk data for the scenarios, written with PostgreSQL COPY.

Rows look like the ones the provisioning service writes: READY setups whose webhook
secret and credentials are encrypted with the server's keyring (the row id bound as
associated data), lines with provider request ids, and optionally the history a busy
database carries (published events, recorded webhook deliveries). Every seeded setup
shares one plaintext webhook secret, which keeps signing cheap for the load generator;
each still has its own ciphertext, so the server decrypts per setup as usual.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from bench.infra import BenchDatabase
from blueline import ids
from blueline import readmodel as rm
from blueline.access import create_api_key
from blueline.persistence.database import Database
from blueline.persistence.dialect import POSTGRESQL
from blueline.persistence.reads import SqlBuilder, record_sql
from blueline.security.vault import Keyring, Vault, credentials_aad, webhook_secret_aad
from blueline.webhooks.signature import generate_secret

SETUP_COLUMNS = (
    "id",
    "workspace_id",
    "business_name",
    "label",
    "state",
    "status",
    "subaccount_id",
    "credentials_enc",
    "webhook_secret_enc",
    "created_at",
    "updated_at",
)
LINE_COLUMNS = (
    "id",
    "setup_id",
    "workspace_id",
    "status",
    "phone_number",
    "request_id",
    "requested_at",
    "assigned_at",
)
DELIVERY_COLUMNS = ("id", "setup_id", "webhook_id", "event_type", "outcome", "received_at")


@dataclass(frozen=True)
class PendingLine:
    setup_id: str
    subaccount_id: str
    line_id: str
    request_id: str


@dataclass
class Seeded:
    workspace_id: str
    api_key: str
    secret: str
    setup_ids: list[str] = field(default_factory=list)
    pending: list[PendingLine] = field(default_factory=list)
    events: int = 0
    deliveries: int = 0
    seconds: float = 0.0


async def workspace_with_key(database: BenchDatabase, name: str = "bench") -> tuple[str, str]:
    """Create a workspace through the product's own path; (workspace id, API key)."""
    db = Database(database.url)
    try:
        key = await create_api_key(db, name)
    finally:
        await db.dispose()
    conn = await asyncpg.connect(database.dsn)
    try:
        workspace_id = await conn.fetchval("SELECT id FROM workspace WHERE name = $1", name)
    finally:
        await conn.close()
    return str(workspace_id), key


def phone_number(n: int) -> str:
    return f"+1{5_550_000_000 + n}"


def _history_statement() -> str:
    """Events for a chunk's lines, their snapshots built by the read model's own SQL (the
    statement the journal writes with), numbered after the workspace's last."""
    b = SqlBuilder(POSTGRESQL)
    snapshot = (
        "'{\"setup\":' || "
        + record_sql(b, rm.SETUP, "s")
        + " || ',\"line\":' || "
        + record_sql(b, rm.PHONE_LINE, "l")
        + " || '}'"
    )
    return (
        "INSERT INTO event (id, workspace_id, seq, setup_id, line_id, type, payload, "
        "created_at) "
        "SELECT 'evt_' || md5(l.id || k.kind), s.workspace_id, "
        "$1::bigint + row_number() OVER (ORDER BY l.id, k.kind), s.id, l.id, k.kind, "
        f"{snapshot}, s.created_at "
        "FROM imessage_setup s JOIN phone_line l ON l.setup_id = s.id "
        "CROSS JOIN (VALUES ('LINE_ADDED'), ('LINE_ASSIGNED')) k(kind) "
        "WHERE s.id = ANY($2::text[]) AND (k.kind = 'LINE_ADDED' OR l.status = 'ASSIGNED')"
    )


async def seed(
    database: BenchDatabase,
    keyring: str,
    *,
    setups: int,
    lines_per_setup: int,
    assigned_per_setup: int = 0,
    history: bool = False,
    workspace: tuple[str, str] | None = None,
    chunk: int = 10_000,
    progress: Callable[[str], None] = lambda _m: None,
) -> Seeded:
    """``setups`` READY setups with ``lines_per_setup`` lines each, the first
    ``assigned_per_setup`` of them assigned, the rest pending. With ``history``, one
    published event per line created or assigned and one delivery per assigned line."""
    started = time.perf_counter()
    vault = Vault(Keyring.parse(keyring))
    workspace_id, api_key = workspace or await workspace_with_key(database)
    secret = generate_secret()
    result = Seeded(workspace_id, api_key, secret)
    conn = await asyncpg.connect(database.dsn)
    base = datetime.now(UTC) - timedelta(days=1)
    seq = int(await conn.fetchval("SELECT event_seq FROM workspace WHERE id = $1", workspace_id))
    history_sql = _history_statement()
    numbers = int(await conn.fetchval("SELECT count(*) FROM phone_line"))
    try:
        for first in range(0, setups, chunk):
            setup_rows: list[tuple[Any, ...]] = []
            line_rows: list[tuple[Any, ...]] = []
            chunk_setups: list[str] = []
            delivery_rows: list[tuple[Any, ...]] = []
            for n in range(first, min(first + chunk, setups)):
                setup_id = ids.new_id(ids.SETUP)
                created = base + timedelta(milliseconds=n)
                status = "ACTIVE" if assigned_per_setup > 0 else "PENDING"
                subaccount = f"sa_{secrets.token_hex(12)}"
                setup = (
                    setup_id,
                    workspace_id,
                    f"Clinic {n:06d}",
                    f"Front desk {n % 7}",
                    "ready",
                    status,
                    subaccount,
                    vault.encrypt(
                        f"key_{n}\nsecret_{secrets.token_hex(16)}", aad=credentials_aad(setup_id)
                    ),
                    vault.encrypt(secret, aad=webhook_secret_aad(setup_id)),
                    created,
                    created,
                )
                setup_rows.append(setup)
                chunk_setups.append(setup_id)
                result.setup_ids.append(setup_id)
                for k in range(lines_per_setup):
                    line_id = ids.new_id(ids.PHONE_LINE)
                    request_id = f"lr_{secrets.token_hex(12)}"
                    assigned = k < assigned_per_setup
                    numbers += 1
                    line = (
                        line_id,
                        setup_id,
                        workspace_id,
                        "ASSIGNED" if assigned else "PENDING",
                        phone_number(numbers) if assigned else None,
                        request_id,
                        created,
                        created + timedelta(seconds=3) if assigned else None,
                    )
                    line_rows.append(line)
                    if not assigned:
                        result.pending.append(
                            PendingLine(setup_id, subaccount, line_id, request_id)
                        )
                    if not history:
                        continue
                    if assigned:
                        delivery_rows.append(
                            (
                                ids.new_id(ids.DELIVERY),
                                setup_id,
                                f"msg_{secrets.token_hex(8)}",
                                "line.assigned",
                                "applied",
                                created,
                            )
                        )
            async with conn.transaction():
                await conn.copy_records_to_table(
                    "imessage_setup", records=setup_rows, columns=SETUP_COLUMNS
                )
                await conn.copy_records_to_table(
                    "phone_line", records=line_rows, columns=LINE_COLUMNS
                )
                if history:
                    written = await conn.execute(history_sql, seq, chunk_setups)
                    added = int(written.rsplit(" ", 1)[-1])
                    seq += added
                    result.events += added
                    await conn.execute(
                        "UPDATE workspace SET event_seq = $2 WHERE id = $1", workspace_id, seq
                    )
                if delivery_rows:
                    await conn.copy_records_to_table(
                        "webhook_delivery", records=delivery_rows, columns=DELIVERY_COLUMNS
                    )
            result.deliveries += len(delivery_rows)
            progress(f"seeded {min(first + chunk, setups):,}/{setups:,} setups")
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    result.seconds = time.perf_counter() - started
    return result


async def scalar(database: BenchDatabase, query: str, *args: Any) -> Any:
    conn = await asyncpg.connect(database.dsn)
    try:
        return await conn.fetchval(query, *args)
    finally:
        await conn.close()
