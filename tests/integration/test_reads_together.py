"""Concurrent runs of one compiled read, sent to PostgreSQL as one statement."""

from __future__ import annotations

import asyncio
from typing import Any

import graphql
import pytest

from blueline.access import create_api_key
from blueline.api.planning import PlanKey, plan_query
from blueline.api.schema import build_schema
from blueline.domain import Origin
from blueline.persistence.database import CACHEABLE_STATEMENT_CHARS, observing_statements
from blueline.persistence.dialect import POSTGRESQL
from blueline.persistence.reads import (
    WORKSPACE_SLOT,
    BatchedRead,
    Reads,
    list_records_plan,
    one_record_plan,
    optional_slots,
    root_slot,
)
from blueline.runtime import Runtime
from blueline.selection import QueryPlan


def _by_id(object_id: Any) -> dict[str, Any]:
    return {WORKSPACE_SLOT: "ws-a", root_slot(0, "id"): object_id}


async def test_reads_sent_together_each_answer_their_own_values(runtime: Runtime) -> None:
    plan = one_record_plan("imessageSetup")
    workspaces = []
    for name in ("clinic-a", "clinic-b"):
        await create_api_key(runtime.db, name)
        async with runtime.db.read() as conn:
            sql = (
                f"SELECT id FROM workspace WHERE name = {runtime.db.dialect.placeholder(1, 'text')}"
            )
            workspaces.append(await conn.fetchval(sql, [name]))
    made = {
        workspace: [
            await runtime.provisioning.create_setup(
                workspace, Origin("test"), f"{workspace} {i}", "Desk"
            )
            for i in range(3)
        ]
        for workspace in workspaces
    }
    asks = [
        {WORKSPACE_SLOT: workspace, root_slot(0, "id"): setup_id}
        for workspace in made
        for ids in made.values()
        for setup_id in ids
    ]
    alone = [await runtime.reads.data(plan, values) for values in asks]
    assert sum(answer["imessageSetup"] is not None for answer in alone) == 6

    seen: list[str] = []
    with observing_statements(seen.append):
        together = await asyncio.gather(
            *(runtime.reads.data(plan, values) for _ in range(4) for values in asks)
        )
    assert together == alone * 4
    if runtime.db.dialect.is_postgresql:
        assert len(seen) < len(together) / 2
    else:
        assert len(seen) == len(together)


async def test_reads_too_dear_to_share_run_alone_and_side_by_side(runtime: Runtime) -> None:
    """A read whose database time exceeds the batch budget is not queued behind others
    of its kind in one statement: each runs on its own connection."""
    plan = one_record_plan("imessageSetup")

    async def statements(reads: Reads) -> int:
        await reads.data_text(plan, _by_id("first"))  # its cost is learnt from a run
        seen: list[str] = []
        try:
            with observing_statements(seen.append):
                answers = await asyncio.gather(
                    *(reads.data_text(plan, _by_id(f"setup-{i}")) for i in range(24))
                )
        finally:
            await reads.close()
        assert answers == ['{"imessageSetup":null}'] * 24
        return len(seen)

    shared = await statements(Reads(runtime.db))
    alone = await statements(Reads(runtime.db, batch_budget_s=0.0))
    if runtime.db.dialect.is_postgresql:
        assert (shared < 12, alone) == (True, 24), shared
    else:
        assert (shared, alone) == (24, 24)


async def test_a_failing_read_among_concurrent_ones_fails_alone(runtime: Runtime) -> None:
    plan = one_record_plan("imessageSetup")

    def values(object_id: Any) -> dict[str, Any]:
        return {WORKSPACE_SLOT: "ws-a", root_slot(0, "id"): object_id}

    # An int where the statement binds text: asyncpg refuses the whole statement it is
    # in (SQLite, which runs each read alone, compares it and finds nothing).
    asks = [values(f"setup-{i}") for i in range(12)]
    asks.insert(5, values(12345))
    answers = await asyncio.gather(
        *(runtime.reads.data_text(plan, v) for v in asks), return_exceptions=True
    )
    failed = [i for i, answer in enumerate(answers) if isinstance(answer, Exception)]
    assert failed == ([5] if runtime.db.dialect.is_postgresql else [])
    assert all(answer == '{"imessageSetup":null}' for i, answer in enumerate(answers) if i != 5)


def _planned(document: str) -> QueryPlan:
    parsed = graphql.parse(document)
    operation = parsed.definitions[0]
    assert isinstance(operation, graphql.OperationDefinitionNode)
    plan = plan_query(build_schema()._schema, parsed, operation, PlanKey(None, ()))
    assert plan is not None
    return plan


# Its copies grow past the first copy's length times their number: later placeholders
# are longer (`$1` becomes `$49`).
_AUDIT = "auditEvents(setupId: $s, after: $a) { edges { node { id } } }"
_WIDE = "query($s: ID!, $a: String) { " + " ".join(f"e{i}: {_AUDIT}" for i in range(3)) + " }"


@pytest.mark.parametrize(
    "plan",
    [
        one_record_plan("imessageSetup"),
        one_record_plan("node"),
        list_records_plan("imessageSetups", with_total=True),
        _planned(_WIDE),
    ],
    ids=["setup", "node", "list", "wide"],
)
def test_reads_sent_together_stay_within_what_the_driver_keeps_prepared(plan: Any) -> None:
    present = frozenset(optional_slots(plan))
    entry = BatchedRead(plan, present, POSTGRESQL, None)  # type: ignore[arg-type]
    assert len(entry.copies(entry.most)) <= CACHEABLE_STATEMENT_CHARS
    assert entry.most == 16 or len(entry.copies(entry.most + 1)) > CACHEABLE_STATEMENT_CHARS


async def test_reads_too_dear_to_share_may_use_the_whole_pool(runtime: Runtime) -> None:
    plan = one_record_plan("imessageSetup")
    for budget_s, concurrency in ((1.0, 2), (0.0, runtime.db.limits.raw_pool_size)):
        reads = Reads(runtime.db, batch_budget_s=budget_s)
        await reads.data_text(plan, _by_id("setup"))
        if runtime.db.dialect.is_postgresql:
            assert reads.entry(plan, _by_id("setup")).batcher.full_concurrency == concurrency
        await reads.close()


async def test_compiled_reads_are_bounded_by_their_total_length(runtime: Runtime) -> None:
    setup, node = one_record_plan("imessageSetup"), one_record_plan("node")
    for max_chars, kept in ((32 * 1024 * 1024, True), (1, False)):
        reads = Reads(runtime.db, max_chars=max_chars)
        first = reads.entry(setup, _by_id("a"))
        reads.entry(node, _by_id("a"))  # past the bound: the cache starts again
        assert (reads.entry(setup, _by_id("a")) is first) is kept
        await reads.close()
