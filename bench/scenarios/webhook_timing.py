"""``webhook-timing``: do the rejections take the same time?

Four kinds of delivery, interleaved in shuffled blocks on one keep-alive connection so
drift of a shared machine falls on all of them alike:

- ``unknown setup``: a well-formed setup id that does not exist;
- ``bad signature``: a real setup, signed with another secret;
- ``stale timestamp``: a real setup, correctly signed, timestamp 10 minutes old;
- ``duplicate``: a real setup, a delivery already applied, sent again unchanged (2xx).

The first three must be indistinguishable (same answer, same time); the duplicate is
the reference of an accepted delivery that does no new work. Rate limits are off.
"""

from __future__ import annotations

import random
import time

from bench.clients import Delivery, assignment, assignment_body, signed
from bench.context import RunContext
from bench.infra import keyring_spec, running_servers, throwaway_database
from bench.loadgen import Connection, Response, timed
from bench.report import Row, ScenarioResult, Summary, Target
from bench.scenarios.common import NO_RATE_LIMITS, serve_env
from bench.seed import seed
from blueline import ids
from blueline.webhooks.signature import generate_secret

DESCRIPTION = "time of each webhook rejection kind (interleaved, sequential)"
REJECTIONS = ("unknown setup", "bad signature", "stale timestamp")
KINDS = (*REJECTIONS, "duplicate")


async def run(ctx: RunContext) -> ScenarioResult:
    per_kind = ctx.pick(500, 30)
    warmup = ctx.pick(100, 8)
    setups = ctx.pick(40, 5)
    result = ScenarioResult(
        "webhook-timing",
        ctx.smoke,
        DESCRIPTION,
        config={"requests_per_kind": per_kind, "warmup_blocks": warmup, "setups": setups},
    )
    rng = random.Random(20_260_101)
    keyring = keyring_spec()
    async with throwaway_database() as database:
        seeded = await seed(database, keyring, setups=setups, lines_per_setup=1)
        env = serve_env(ctx, database, keyring, extra=NO_RATE_LIMITS)
        async with running_servers([("api", env, [])], ctx.log_dir) as [server]:
            port = server.port
            conn = Connection(port)
            # One delivery per setup, applied once: re-sending it is the duplicate kind.
            duplicates: list[bytes] = []
            for n, line in enumerate(seeded.pending):
                raw = assignment(line, seeded.secret, n).request(port)
                first = await conn.request(raw)
                if first.status != 200:
                    raise RuntimeError(f"could not apply the original delivery: {first}")
                duplicates.append(raw)
            real = seeded.pending

            def build(kind: str, i: int) -> bytes:
                line = real[i % len(real)]
                body = assignment_body(line.subaccount_id, line.request_id, "+15550000000")
                if kind == "unknown setup":
                    unknown = ids.new_id(ids.SETUP)
                    return Delivery(unknown, "", signed(generate_secret(), body), body).request(
                        port
                    )
                if kind == "bad signature":
                    headers = signed(generate_secret(), body)
                    return Delivery(line.setup_id, "", headers, body).request(port)
                if kind == "stale timestamp":
                    stale = int(time.time()) - 600
                    headers = signed(seeded.secret, body, timestamp=stale)
                    return Delivery(line.setup_id, "", headers, body).request(port)
                return duplicates[i % len(duplicates)]

            schedule: list[tuple[str, bytes]] = []
            for i in range(warmup + per_kind):
                block = [(kind, build(kind, i)) for kind in KINDS]
                rng.shuffle(block)
                schedule.extend(block)
            samples: dict[str, list[int]] = {kind: [] for kind in KINDS}
            answers: dict[str, Response] = {}
            statuses: dict[str, dict[int, int]] = {kind: {} for kind in KINDS}
            for index, (kind, raw) in enumerate(schedule):
                took, response = await timed(conn, raw)
                statuses[kind][response.status] = statuses[kind].get(response.status, 0) + 1
                answers.setdefault(kind, response)
                if index >= warmup * len(KINDS):
                    samples[kind].append(took)
            await conn.close()

    summaries = {kind: Summary.of_ns(samples[kind]) for kind in KINDS}
    medians = {kind: summaries[kind].p50 for kind in REJECTIONS}
    spread = (max(medians.values()) - min(medians.values())) / min(medians.values())
    reference = summaries["unknown setup"].p50
    for kind in REJECTIONS:
        result.add(
            Row(
                f"{kind}: median",
                summaries[kind].p50,
                "ms",
                baseline=reference,
                baseline_label="unknown setup",
            )
        )
    result.add(
        Row(
            "max relative difference of rejection medians",
            spread,
            "",
            target=Target("<", 0.05),
            target_on="value",
        )
    )
    result.add(
        Row(
            "duplicate (accepted again): median",
            summaries["duplicate"].p50,
            "ms",
            baseline=reference,
            baseline_label="unknown setup",
        )
    )
    shapes = {
        kind: (answers[kind].status, answers[kind].headers_without("date"), answers[kind].body)
        for kind in REJECTIONS
        if kind in answers
    }
    identical = len({repr(shape) for shape in shapes.values()}) == 1
    result.add(Row("rejections answered identically (1 = yes)", float(identical), ""))
    result.details = {
        "latency_ms": {kind: summaries[kind].as_dict() for kind in KINDS},
        "statuses": {kind: {str(k): v for k, v in s.items()} for kind, s in statuses.items()},
        "rejection_answer": {
            "status": answers["unknown setup"].status,
            "headers": answers["unknown setup"].headers_without("date"),
            "body": answers["unknown setup"].body.decode(errors="replace"),
        },
    }
    if not identical:
        result.notes.append("the three rejection kinds were not answered identically")
    return result
