"""Live events for tests of the hub and the bus (no database behind them)."""

from __future__ import annotations

from blueline.persistence.eventlog import LiveEvent


def live_event(seq: int, workspace_id: str = "ws_a") -> LiveEvent:
    return LiveEvent(
        workspace_id=workspace_id,
        seq=seq,
        row_id=f"evt_{seq:026d}",
        setup_id="ims_01HZZZZZZZZZZZZZZZZZZZZZZZ",
        line_id=None,
        change="UPDATED",
        payload="{}",
    )
