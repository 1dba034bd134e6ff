"""The scenarios, in the order ``python -m bench`` runs them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from bench.context import RunContext
from bench.report import ScenarioResult
from bench.scenarios import (
    create,
    document_memory,
    fanout,
    latency,
    listing,
    peers,
    scale,
    soak,
    webhook,
    webhook_timing,
)

Scenario = Callable[[RunContext], Awaitable[ScenarioResult]]

SCENARIOS: dict[str, Scenario] = {
    "webhook": webhook.run,
    "webhook-timing": webhook_timing.run,
    "list": listing.run,
    "latency": latency.run,
    "fanout": fanout.run,
    "scale": scale.run,
    "create": create.run,
    "peers": peers.run,
    "document-memory": document_memory.run,
    "soak": soak.run,
}

# Run only when named (or with --smoke): 30 minutes would dwarf the rest of the run.
ON_REQUEST = frozenset({"soak"})
