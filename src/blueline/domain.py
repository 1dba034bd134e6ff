"""The vocabulary of a channel's life: states, statuses, changes and the rules between them.

Framework-free and storage-free: persistence stores these values, the read model
exposes them, services decide with them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class SetupState(StrEnum):
    """Lifecycle of the local row; only READY setups are visible to clients."""

    PROVISIONING = "provisioning"
    READY = "ready"
    # Creation failed; the provider may still hold a subaccount for it, which recovery
    # closes before moving the row to DISCARDED.
    FAILED = "failed"
    DISCARDED = "discarded"


class SetupStatus(StrEnum):
    PENDING = "PENDING"
    ACTIVE = "ACTIVE"
    SUSPENDED = "SUSPENDED"
    CLOSED = "CLOSED"


class LineStatus(StrEnum):
    PENDING = "PENDING"
    ASSIGNED = "ASSIGNED"
    RELEASED = "RELEASED"


class SetupChange(StrEnum):
    """What an event says happened; ``imessageSetupUpdates`` carries every kind,
    ``phoneLineUpdates`` the ones about a line."""

    CREATED = "CREATED"
    UPDATED = "UPDATED"
    SUSPENDED = "SUSPENDED"
    REACTIVATED = "REACTIVATED"
    CLOSED = "CLOSED"
    LINE_ADDED = "LINE_ADDED"
    LINE_ASSIGNED = "LINE_ASSIGNED"
    LINE_RELEASED = "LINE_RELEASED"

    @property
    def is_about_a_line(self) -> bool:
        return self in (
            SetupChange.LINE_ADDED,
            SetupChange.LINE_ASSIGNED,
            SetupChange.LINE_RELEASED,
        )


class AuditAction(StrEnum):
    SETUP_CREATED = "setup.created"
    SETUP_UPDATED = "setup.updated"
    SETUP_SUSPENDED = "setup.suspended"
    SETUP_REACTIVATED = "setup.reactivated"
    SETUP_CLOSED = "setup.closed"
    LINE_REQUESTED = "line.requested"
    LINE_ASSIGNED = "line.assigned"
    LINE_RELEASED = "line.released"


# Who made a change, as audit records name them (API keys are "api_key:<id>").
ACTOR_PROVIDER = "provider"
ACTOR_RECONCILE = "system:reconcile"
ACTOR_RECOVERY = "system:recovery"
ACTOR_CLI = "cli"


def api_key_actor(key_id: str) -> str:
    return f"api_key:{key_id}"


@dataclass(frozen=True)
class Caller:
    """Who is asking: an API key of a workspace."""

    workspace_id: str
    api_key_id: str


@dataclass(frozen=True)
class Origin:
    """Who caused a change, and the request it came from (audit's actor and request id)."""

    actor: str
    request_id: str | None = None


def derive_status(*, closed: bool, suspended: bool, has_assigned_line: bool) -> SetupStatus:
    """The one rule for a setup's status: CLOSED, then SUSPENDED, then ACTIVE, else PENDING.

    The status is stored with the row (the list filters on it through an index) and
    recomputed with this rule by every change that could move it.
    """
    if closed:
        return SetupStatus.CLOSED
    if suspended:
        return SetupStatus.SUSPENDED
    if has_assigned_line:
        return SetupStatus.ACTIVE
    return SetupStatus.PENDING
