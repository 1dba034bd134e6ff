"""``webhook-timing``: does a rejection take the same time whatever the path's id?

Six kinds of delivery that all end in the same 401, on both PostgreSQL and SQLite:

- ``fresh random 36 hex``: a new random id of 36 hex characters each time (not even
  shaped like a setup id);
- ``fresh id shaped like a real one``: a new ``ims_…`` id each time, in no table;
- ``fixed unknown id``: the same well-formed id that names nothing, every time;
- ``200 characters``: an id far longer than any real one;
- ``real setup, bad signature``: a real setup, signed with another secret (the
  reference every other kind is compared with);
- ``real setup, stale timestamp``: a real setup, correctly signed, ten minutes old.

They are interleaved in blocks of one of each (every kind in every place of a block
equally often), paced at a steady rate on one kept-alive connection, so drift of a
shared machine falls on all of them alike and no queue forms. Besides the medians, each
kind is compared with the reference sent in the same block (a fraction of a second
apart): the median of those paired ratios is what load on a shared database or machine
moves least. The setups are made through the API (the embedded sandbox provider gives each its own
secret), so the rows are the ones Blueline writes. Rate limits are off.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.clients import Delivery, assignment_body, signed
from bench.context import RunContext
from bench.infra import free_port, keyring_spec, running_servers, server_env, throwaway_database
from bench.loadgen import Connection, Response, timed
from bench.report import Row, ScenarioResult, Summary, Target
from bench.scenarios.common import NO_RATE_LIMITS
from blueline import ids
from blueline.access import create_api_key
from blueline.persistence.database import Database
from blueline.persistence.migrate import upgrade
from blueline.webhooks.signature import generate_secret

DESCRIPTION = "time of each webhook rejection kind, by path id (interleaved, paced, both databases)"
REFERENCE = "real setup, bad signature"
KINDS = (
    "fresh random 36 hex",
    "fresh id shaped like a real one",
    "fixed unknown id",
    "200 characters",
    REFERENCE,
    "real setup, stale timestamp",
)
DATABASES = {"postgresql": "PostgreSQL", "sqlite": "SQLite"}
FIXED_UNKNOWN = "ims_" + "0" * 25 + "1"
CREATE = """
mutation Create($input: CreateImessageSetupInput!) {
  createImessageSetup(input: $input) { setup { id } userErrors { code message } }
}"""


@dataclass(frozen=True)
class RealSetup:
    setup_id: str
    subaccount_id: str
    request_id: str
    secret: str


@asynccontextmanager
async def database_url(kind: str) -> AsyncIterator[str]:
    """A fresh, migrated database of that kind."""
    if kind == "postgresql":
        async with throwaway_database() as database:
            yield database.url
        return
    directory = Path(tempfile.mkdtemp(prefix="blueline-bench-sqlite-"))
    try:
        url = f"sqlite+aiosqlite:///{directory / 'blueline.db'}"
        await asyncio.to_thread(upgrade, url)
        yield url
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def real_setups(base_url: str, api_key: str, count: int) -> list[RealSetup]:
    """Setups made through the API; their secrets from the embedded sandbox provider."""
    async with httpx.AsyncClient(base_url=base_url, timeout=30, trust_env=False) as http:
        made = []
        for n in range(count):
            response = await http.post(
                "/graphql",
                json={
                    "query": CREATE,
                    "variables": {"input": {"businessName": f"Clinic {n}", "label": "Desk"}},
                },
                headers={"Authorization": f"Bearer {api_key}"},
            )
            payload = response.json()["data"]["createImessageSetup"]
            if payload["userErrors"]:
                raise RuntimeError(f"could not create a setup: {payload['userErrors']}")
            made.append(payload["setup"]["id"])
        listed = await http.get("/_sandbox-provider/sandbox/subaccounts")
        listed.raise_for_status()
    accounts = {a["external_id"]: a for a in listed.json()["data"]}
    return [
        RealSetup(
            setup_id,
            accounts[setup_id]["id"],
            accounts[setup_id]["lines"][0]["request_id"],
            accounts[setup_id]["webhook_secret"],
        )
        for setup_id in made
    ]


def delivery(kind: str, setup: RealSetup, port: int) -> bytes:
    body = assignment_body(setup.subaccount_id, setup.request_id, "+15550000000")
    forged = signed(generate_secret(), body)
    path_id = {
        "fresh random 36 hex": secrets.token_hex(18),
        "fresh id shaped like a real one": ids.new_id(ids.SETUP),
        "fixed unknown id": FIXED_UNKNOWN,
        "200 characters": "ims_" + "Z" * 196,
    }.get(kind, setup.setup_id)
    headers = forged
    if kind == "real setup, stale timestamp":
        headers = signed(setup.secret, body, timestamp=int(time.time()) - 600)
    return Delivery(path_id, "", headers, body).request(port)


@dataclass
class Measured:
    summaries: dict[str, Summary]
    answers: dict[str, Response]
    statuses: dict[str, dict[int, int]]
    # Per block, each kind's time over the reference's in that block.
    paired: dict[str, list[float]]

    @property
    def identical(self) -> bool:
        shapes = {
            repr((a.status, a.headers_without("date"), a.body)) for a in self.answers.values()
        }
        return len(shapes) == 1

    @property
    def spread(self) -> float:
        reference = self.summaries[REFERENCE].p50
        return max(abs(s.p50 - reference) / reference for s in self.summaries.values())

    def paired_difference(self, kind: str) -> float:
        ratios = sorted(self.paired[kind])
        return ratios[len(ratios) // 2] - 1.0 if ratios else float("nan")

    @property
    def paired_spread(self) -> float:
        return max(abs(self.paired_difference(kind)) for kind in KINDS)


async def measure(ctx: RunContext, kind: str, keyring: str) -> Measured:
    # Whole runs of six blocks, so every kind takes every place equally often.
    per_kind = ctx.pick(300, 18)
    warmup = ctx.pick(24, 6)
    rate = ctx.pick(20.0, 200.0)
    rng = random.Random(20_260_101)
    async with database_url(kind) as url:
        db = Database(url)
        try:
            api_key = await create_api_key(db, "bench")
        finally:
            await db.dispose()
        env = server_env(
            database_url=url,
            redis_url=ctx.redis_url,
            port=free_port(),
            encryption_keys=keyring,
            extra={**NO_RATE_LIMITS, "BLUELINE_SANDBOX_AUTO_ASSIGN_AFTER_S": "null"},
        )
        async with running_servers([(f"api-{kind}", env, [])], ctx.log_dir) as [server]:
            setups = await real_setups(server.base_url, api_key, ctx.pick(40, 5))
            schedule: list[tuple[int, str, bytes]] = []
            order = list(KINDS)
            for i in range(warmup + per_kind):
                # Each run of six blocks rotates one shuffled order, so every kind takes
                # every place in a block (and follows different kinds) equally often.
                if i % len(KINDS) == 0:
                    rng.shuffle(order)
                turn = i % len(KINDS)
                batch = [
                    (i, k, delivery(k, setups[i % len(setups)], server.port))
                    for k in order[turn:] + order[:turn]
                ]
                schedule.extend(batch)
            ctx.say(f"{DATABASES[kind]}: {len(schedule)} deliveries at {rate:g}/s")
            samples: dict[str, list[int]] = {k: [] for k in KINDS}
            blocks: dict[int, dict[str, int]] = {}
            answers: dict[str, Response] = {}
            statuses: dict[str, dict[int, int]] = {k: {} for k in KINDS}
            conn = Connection(server.port)
            loop = asyncio.get_running_loop()
            started = loop.time()
            try:
                for index, (block, k, raw) in enumerate(schedule):
                    # Paced, not back to back: each request finds the server idle.
                    await asyncio.sleep(max(0.0, started + index / rate - loop.time()))
                    took, response = await timed(conn, raw)
                    statuses[k][response.status] = statuses[k].get(response.status, 0) + 1
                    answers.setdefault(k, response)
                    if block >= warmup:
                        samples[k].append(took)
                        blocks.setdefault(block, {})[k] = took
            finally:
                await conn.close()
    paired = {
        k: [times[k] / times[REFERENCE] for times in blocks.values() if len(times) == len(KINDS)]
        for k in KINDS
    }
    return Measured({k: Summary.of_ns(samples[k]) for k in KINDS}, answers, statuses, paired)


async def run(ctx: RunContext) -> ScenarioResult:
    result = ScenarioResult(
        "webhook-timing",
        ctx.smoke,
        DESCRIPTION,
        config={
            "requests_per_kind": ctx.pick(300, 18),
            "warmup_blocks": ctx.pick(24, 6),
            "rate_per_s": ctx.pick(20.0, 200.0),
            "setups": ctx.pick(40, 5),
            "databases": list(DATABASES.values()),
        },
    )
    keyring = keyring_spec()
    details: dict[str, Any] = {}
    for kind, label in DATABASES.items():
        measured = await measure(ctx, kind, keyring)
        reference = measured.summaries[REFERENCE].p50
        for name in KINDS:
            result.add(
                Row(
                    f"{label}: {name}: median",
                    measured.summaries[name].p50,
                    "ms",
                    baseline=reference,
                    baseline_label=REFERENCE,
                )
            )
        result.add(
            Row(
                f"{label}: max relative difference of medians vs {REFERENCE}",
                measured.spread,
                "",
                target=Target("<", 0.05),
                target_on="value",
            )
        )
        result.add(
            Row(
                f"{label}: max paired difference (median over blocks, vs the same block's "
                "reference)",
                measured.paired_spread,
                "",
            )
        )
        result.add(
            Row(f"{label}: rejections answered identically (1 = yes)", float(measured.identical))
        )
        if not measured.identical:
            result.notes.append(f"{label}: the rejection kinds were not answered identically")
        sample = measured.answers[REFERENCE]
        details[label] = {
            "latency_ms": {name: s.as_dict() for name, s in measured.summaries.items()},
            "paired_difference": {
                name: round(measured.paired_difference(name), 4) for name in KINDS
            },
            "statuses": {
                name: {str(k): v for k, v in s.items()} for name, s in measured.statuses.items()
            },
            "rejection_answer": {
                "status": sample.status,
                "headers": sample.headers_without("date"),
                "body": sample.body.decode(errors="replace"),
            },
        }
    result.details = details
    return result
