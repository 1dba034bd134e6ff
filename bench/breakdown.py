"""Where the CPU of a webhook delivery goes, measured in-process with explicit timers.

    python -m bench.breakdown [--deliveries N]

Sampling profilers attribute SQLAlchemy's asyncio work poorly (its ORM code runs in
greenlets, and py-spy charges much of it to the asyncpg frames that resumed them), so
this tool times the pieces directly: the product's own objects (``WebhookIntake``,
``Relay``, ``Database``) on a throwaway database, no HTTP, one operation at a time, CPU
time of this process per operation. Next to them it times prototypes of cheaper
paths, written here with asyncpg, doing the same database work. The prototypes are
evidence for a product change, not part of the product.

Writes ``bench/results/breakdown.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import inspect
import json
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
from sqlalchemy import text

from bench.clients import Delivery, assignment
from bench.infra import keyring_spec, throwaway_database
from bench.report import Row, ScenarioResult
from bench.seed import PendingLine, seed
from blueline import ids
from blueline.events import outbox
from blueline.events.bus import MemoryBus
from blueline.events.hub import Hub
from blueline.events.relay import Relay
from blueline.persistence.database import Database
from blueline.provisioning.service import webhook_secret_aad
from blueline.security.vault import Keyring, Vault
from blueline.webhooks import intake as intake_module
from blueline.webhooks import signature
from blueline.webhooks.intake import WebhookIntake

T = TypeVar("T")
DEFAULT_RESULTS = Path(__file__).resolve().parent / "results"


class Timers:
    """CPU and wall time per named stage; stages may nest (each counts its own span)."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = defaultdict(float)
        self.wall: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        cpu, wall = time.process_time(), time.perf_counter()
        try:
            yield
        finally:
            self.cpu[name] += time.process_time() - cpu
            self.wall[name] += time.perf_counter() - wall
            self.calls[name] += 1

    def wrap(self, name: str, fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        @functools.wraps(fn)
        async def timed(*args: Any, **kwargs: Any) -> T:
            with self.stage(name):
                return await fn(*args, **kwargs)

        return timed

    def per_call_ms(self, name: str, per: int) -> float:
        return 1000 * self.cpu[name] / per if per else float("nan")


async def session_cost(url: str, count: int) -> float:
    """CPU ms of: take a session (product engine settings), run ``SELECT 1``, give it back."""
    db = Database(url)
    try:
        for _ in range(20):
            async with db.session() as session:
                await session.execute(text("SELECT 1"))
        started = time.process_time()
        for _ in range(count):
            async with db.session() as session:
                await session.execute(text("SELECT 1"))
        return 1000 * (time.process_time() - started) / count
    finally:
        await db.dispose()


def _hook(timers: Timers, owner: Any, name: str, label: str) -> Callable[[], None] | None:
    """Time ``owner.name`` (sync or async) under ``label``; returns the undo, or None
    when the product has no such attribute (it is refactored often)."""
    original = getattr(owner, name, None)
    if original is None or not callable(original):
        return None
    if inspect.iscoroutinefunction(original):
        replacement: Any = timers.wrap(label, original)
    else:

        def replacement(*args: Any, **kwargs: Any) -> Any:
            with timers.stage(label):
                return original(*args, **kwargs)

    setattr(owner, name, replacement)
    return lambda: setattr(owner, name, original)


async def product_intake(url: str, vault: Vault, deliveries: list[Delivery]) -> Timers:
    """``WebhookIntake.handle`` per delivery, with its stages timed."""
    timers = Timers()
    db = Database(url)
    intake = WebhookIntake(db, vault)
    hooks = [
        (intake, "_secret_of", "secret lookup + decrypt"),
        (intake, "_apply", "apply transaction"),
        (intake_module, "assign_line", "  assign_line (in apply)"),
        (outbox, "record", "    outbox.record (in assign_line)"),
        (signature, "verify", "signature.verify"),
    ]
    undo = [u for u in (_hook(timers, *hook) for hook in hooks) if u is not None]
    try:
        for delivery in deliveries[:20]:
            await intake.handle(delivery.setup_id, delivery.headers, delivery.body)
        timers.__init__()  # type: ignore[misc]
        for delivery in deliveries[20:]:
            with timers.stage("handle"):
                answer = await intake.handle(delivery.setup_id, delivery.headers, delivery.body)
            if answer.status != 200:
                raise RuntimeError(f"delivery answered {answer}")
    finally:
        for restore in reversed(undo):
            restore()
        await db.dispose()
    return timers


# A prototype of the direct path: one read, then one statement that records the
# delivery, moves the line forward, activates the setup and writes the outbox event.
APPLY_SQL = """
WITH d AS (
  INSERT INTO webhook_delivery (id, setup_id, webhook_id, event_type, outcome, received_at)
  VALUES ($1, $2, $3, 'line.assigned', 'applied', now())
  ON CONFLICT (setup_id, webhook_id) DO NOTHING
  RETURNING id
), l AS (
  UPDATE phone_line SET status = 'ASSIGNED', phone_number = $5, assigned_at = now()
  WHERE setup_id = $2 AND request_id = $4 AND status = 'PENDING' AND EXISTS (SELECT 1 FROM d)
  RETURNING id, request_id, requested_at, assigned_at
), s AS (
  UPDATE imessage_setup SET status = 'ACTIVE', updated_at = now()
  WHERE id = $2 AND EXISTS (SELECT 1 FROM l)
  RETURNING id, workspace_id, business_name, label, status, created_at, updated_at
), e AS (
  INSERT INTO event (id, workspace_id, setup_id, line_id, type, payload, created_at)
  SELECT $6, s.workspace_id, s.id, l.id, 'line.assigned',
         json_build_object(
           'setup', json_build_object('id', s.id, 'business_name', s.business_name,
             'label', s.label, 'status', s.status,
             'phone_line_count', (SELECT count(*) FROM phone_line p WHERE p.setup_id = s.id),
             'created_at', s.created_at, 'updated_at', s.updated_at),
           'line', json_build_object('id', l.id, 'status', 'ASSIGNED', 'phone_number', $5::text,
             'request_id', NULL, 'requested_at', l.requested_at, 'assigned_at', l.assigned_at)
         )::text,
         now()
  FROM s, l
  RETURNING id
)
SELECT (SELECT count(*) FROM d) AS recorded, (SELECT count(*) FROM e) AS applied
"""
SECRET_SQL = (
    "SELECT webhook_secret_enc, subaccount_id FROM imessage_setup WHERE id = $1 AND state = 'ready'"
)


async def direct_intake(dsn: str, vault: Vault, deliveries: list[Delivery]) -> Timers:
    timers = Timers()
    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=4)
    assert pool is not None
    try:

        async def handle(delivery: Delivery) -> None:
            async with pool.acquire() as conn:
                row = await conn.fetchrow(SECRET_SQL, delivery.setup_id)
                secret = vault.decrypt(
                    row["webhook_secret_enc"], aad=webhook_secret_aad(delivery.setup_id)
                )
                if not signature.verify(
                    [secret],
                    delivery.headers["webhook-id"],
                    delivery.headers["webhook-timestamp"],
                    delivery.headers["webhook-signature"],
                    delivery.body,
                    time.time(),
                ):
                    raise RuntimeError("bad signature in the prototype")
                event = json.loads(delivery.body)["data"]
                done = await conn.fetchrow(
                    APPLY_SQL,
                    ids.new_id(ids.DELIVERY),
                    delivery.setup_id,
                    delivery.headers["webhook-id"],
                    event["request_id"],
                    event["phone_number"],
                    ids.new_id(ids.EVENT),
                )
                if done["applied"] != 1:
                    raise RuntimeError(f"prototype did not apply: {dict(done)}")

        for delivery in deliveries[:20]:
            await handle(delivery)
        for delivery in deliveries[20:]:
            with timers.stage("handle"):
                await handle(delivery)
    finally:
        await pool.close()
    return timers


async def relay_cost(
    url: str, events_per_pass: int, passes: int, lines: list[PendingLine]
) -> float:
    """CPU ms per event of ``Relay.pass_once`` when each pass finds ``events_per_pass``."""
    db = Database(url)
    relay = Relay(db, MemoryBus(Hub()))
    used = 0
    total = 0.0
    try:
        for _ in range(100):
            if not await relay.pass_once():
                break
        for _ in range(passes):
            batch = lines[used : used + events_per_pass]
            used += len(batch)
            await _write_events(db, batch)
            started = time.process_time()
            sent = await relay.pass_once()
            total += time.process_time() - started
            if sent != len(batch):
                raise RuntimeError(f"relay sent {sent}, expected {len(batch)}")
    finally:
        await db.dispose()
    return 1000 * total / (passes * events_per_pass)


async def _write_events(db: Database, lines: list[PendingLine]) -> None:
    async with db.transaction() as session:
        for line in lines:
            await session.execute(
                text(
                    "INSERT INTO event (id, workspace_id, setup_id, line_id, type, payload, "
                    "created_at) SELECT :id, workspace_id, id, :line, 'line.assigned', '{}', now() "
                    "FROM imessage_setup WHERE id = :setup"
                ),
                {"id": ids.new_id(ids.EVENT), "line": line.line_id, "setup": line.setup_id},
            )


LIST_QUERY = (
    "query { imessageSetups(first: 50) { edges { node "
    "{ id businessName label status phoneLineCount } } } }"
)


async def validation_evidence(executions: int = 50) -> dict[str, float]:
    """Does Strawberry's ValidationCache hit on the product schema, and what is a miss?

    Runs the list query through ``build_schema()`` (no context, so execution itself
    fails after validation) and reads the shared cache's counters; then times one
    validation of that document with the same rules.
    """
    from graphql import parse, specified_rules
    from strawberry.extensions import MaxAliasesLimiter, QueryDepthLimiter
    from strawberry.extensions.validation_cache import DEFAULT_MAXSIZE, _get_validate_cache
    from strawberry.schema.schema import validate_document

    import blueline.schema

    schema = blueline.schema.build_schema()
    cache: Any = _get_validate_cache(DEFAULT_MAXSIZE)
    before = cache.cache_info()
    # Execution fails without a context, after validation; its log line is expected.
    quiet = [logging.getLogger(name) for name in ("strawberry.execution", "blueline.graphql")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.CRITICAL)
    try:
        for _ in range(executions):
            await schema.execute(LIST_QUERY)
    finally:
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)
    after = cache.cache_info()
    rules = (
        *specified_rules,
        *QueryDepthLimiter(max_depth=blueline.schema.MAX_DEPTH).validation_rules,
        *MaxAliasesLimiter(max_alias_count=blueline.schema.MAX_ALIASES).validation_rules,
    )
    document = parse(LIST_QUERY)
    started = time.process_time()
    for _ in range(100):
        validate_document(schema._schema, document, tuple(rules))
    return {
        "executions": executions,
        "cache_hits": after.hits - before.hits,
        "cache_misses": after.misses - before.misses,
        "validate_ms": 1000 * (time.process_time() - started) / 100,
    }


async def measure(deliveries_n: int) -> ScenarioResult:
    result = ScenarioResult(
        "breakdown",
        False,
        "CPU per webhook delivery by stage, in-process, vs prototypes of a direct path",
        config={"deliveries": deliveries_n},
    )
    keyring = keyring_spec()
    vault = Vault(Keyring.parse(keyring))
    need = 2 * (deliveries_n + 20) + 300
    async with throwaway_database() as database:
        seeded = await seed(database, keyring, setups=need, lines_per_setup=1)
        lines = list(seeded.pending)
        batches = iter(range(0, len(lines), deliveries_n + 20))

        def next_deliveries() -> list[Delivery]:
            start = next(batches)
            return [
                assignment(line, seeded.secret, start + n)
                for n, line in enumerate(lines[start : start + deliveries_n + 20])
            ]

        url = database.url
        session_ms = await session_cost(url, 300)
        product = await product_intake(url, vault, next_deliveries())
        direct = await direct_intake(database.dsn, vault, next_deliveries())
        rest = lines[2 * (deliveries_n + 20) :]
        relay_single = await relay_cost(url, 1, 100, rest[:100])
        relay_batch = await relay_cost(url, 100, 2, rest[100:300])
        validation = await validation_evidence()

    n = deliveries_n
    handle = product.per_call_ms("handle", n)
    result.add(Row("session + SELECT 1 (reference)", session_ms, "ms"))
    result.add(Row("WebhookIntake.handle (product)", handle, "ms"))
    for stage in sorted(product.cpu, key=lambda s: -product.cpu[s]):
        if stage != "handle":
            result.add(
                Row(
                    f"  {stage}",
                    product.per_call_ms(stage, n),
                    "ms",
                    baseline=handle,
                    baseline_label="handle",
                )
            )
    result.add(
        Row(
            "direct path prototype (asyncpg, 2 statements)",
            direct.per_call_ms("handle", n),
            "ms",
            baseline=handle,
            baseline_label="product",
        )
    )
    result.add(Row("Relay.pass_once per event, 1 event per pass", relay_single, "ms"))
    result.add(
        Row(
            "Relay.pass_once per event, 100 per pass",
            relay_batch,
            "ms",
            baseline=relay_single,
            baseline_label="1 per pass",
        )
    )
    result.add(
        Row(
            "GraphQL: validation of the list query, per request",
            validation["validate_ms"],
            "ms",
        )
    )
    result.add(
        Row(
            f"GraphQL: ValidationCache hits in {validation['executions']} identical queries",
            validation["cache_hits"],
            "",
            baseline=validation["executions"] - 1,
            baseline_label="a working cache",
        )
    )
    result.details = {
        "validation": validation,
        "product_stages_ms": {k.strip(): product.per_call_ms(k, n) for k in product.cpu},
        "product_wall_ms": {k.strip(): 1000 * v / n for k, v in product.wall.items()},
        "direct_wall_ms": 1000 * direct.wall["handle"] / n,
        "apply_sql": APPLY_SQL.strip(),
    }
    result.notes.append("CPU time of one process doing one operation at a time; no HTTP")
    return result


def main() -> None:
    from bench.report import render_table

    parser = argparse.ArgumentParser(prog="python -m bench.breakdown", description=__doc__)
    parser.add_argument("--deliveries", type=int, default=300)
    parser.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS)
    args = parser.parse_args()
    started = time.perf_counter()
    result = asyncio.run(measure(args.deliveries))
    result.elapsed_s = time.perf_counter() - started
    path = result.write(args.results_dir)
    print(render_table(result))
    print(f"  wrote {path}")


if __name__ == "__main__":
    main()
