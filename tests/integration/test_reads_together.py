"""Concurrent runs of one compiled read, sent to PostgreSQL as one statement."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from blueline.persistence.database import CACHEABLE_STATEMENT_CHARS
from blueline.persistence.dialect import POSTGRESQL
from blueline.persistence.reads import (
    WORKSPACE_SLOT,
    BatchedRead,
    list_records_plan,
    one_record_plan,
    root_slot,
)
from blueline.runtime import Runtime


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


@pytest.mark.parametrize(
    "plan",
    [
        one_record_plan("imessageSetup"),
        one_record_plan("node"),
        list_records_plan("imessageSetups", with_total=True),
    ],
    ids=["setup", "node", "list"],
)
def test_reads_sent_together_stay_within_what_the_driver_keeps_prepared(plan: Any) -> None:
    entry = BatchedRead(plan, frozenset(), POSTGRESQL, None)  # type: ignore[arg-type]
    assert len(entry.copies(entry.most)) <= CACHEABLE_STATEMENT_CHARS
    assert entry.most == 16 or len(entry.copies(entry.most + 1)) > CACHEABLE_STATEMENT_CHARS
