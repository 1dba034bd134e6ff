"""Table models. The only place the schema is described; Alembic migrations create it.

Secret columns hold vault ciphertext (``kid:…``), never plaintext, and are excluded
from every repr so a stray log line cannot leak them.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, Column, Index, String, Text, UniqueConstraint, text
from sqlmodel import Field, SQLModel

from blueline.domain import LineStatus, SetupState, SetupStatus
from blueline.persistence.types import UTCDateTime, utcnow

__all__ = [
    "ApiKey",
    "AuditEvent",
    "Event",
    "EventOutbox",
    "IMessageSetup",
    "LineStatus",
    "Operation",
    "PhoneLine",
    "SetupState",
    "SetupStatus",
    "WebhookDelivery",
    "Workspace",
]


def _ts(*, nullable: bool = False) -> Column[datetime]:
    return Column(UTCDateTime(), nullable=nullable)


class Workspace(SQLModel, table=True):
    __tablename__ = "workspace"

    id: str = Field(primary_key=True, max_length=40)
    name: str = Field(sa_column=Column(String(128), nullable=False, unique=True))
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    # Per-workspace counters, advanced in the transaction of each change: locking this
    # row orders the workspace's events and audit records by commit, so `after` replay
    # and the audit chain need no global sequence (which told workspaces apart).
    event_seq: int = Field(
        default=0, sa_column=Column(BigInteger, nullable=False, server_default=text("0"))
    )
    audit_seq: int = Field(
        default=0, sa_column=Column(BigInteger, nullable=False, server_default=text("0"))
    )
    # Hash of the newest audit record (empty before the first).
    audit_head: str = Field(
        default="", sa_column=Column(String(64), nullable=False, server_default=text("''"))
    )


class ApiKey(SQLModel, table=True):
    __tablename__ = "api_key"

    id: str = Field(primary_key=True, max_length=40)
    workspace_id: str = Field(foreign_key="workspace.id", index=True, max_length=40)
    # What an operator sees to tell keys apart; the rest of the key exists only as a hash.
    display_prefix: str = Field(max_length=24)
    key_hash: str = Field(sa_column=Column(String(64), nullable=False, unique=True), repr=False)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    last_used_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    revoked_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))

    # Every process polls for revocations newer than the last it saw.
    __table_args__ = (Index("ix_api_key_revoked", "revoked_at"),)


class IMessageSetup(SQLModel, table=True):
    __tablename__ = "imessage_setup"
    __table_args__ = (
        UniqueConstraint("workspace_id", "idempotency_key", name="uq_setup_idempotency"),
        # Keyset pagination: newest first within a workspace, optionally by status.
        Index("ix_setup_list", "workspace_id", "state", "id"),
        Index("ix_setup_list_status", "workspace_id", "state", "status", "id"),
    )

    id: str = Field(primary_key=True, max_length=40)
    workspace_id: str = Field(foreign_key="workspace.id", max_length=40)
    business_name: str = Field(sa_column=Column(String(128), nullable=False))
    label: str = Field(sa_column=Column(String(128), nullable=False))
    state: SetupState = Field(sa_column=Column(String(16), nullable=False))
    # Kept in the row (not derived per query) so the list can filter on it with an index;
    # every change that could move it recomputes it with `domain.derive_status`.
    status: SetupStatus = Field(sa_column=Column(String(16), nullable=False))
    subaccount_id: str | None = Field(
        default=None, sa_column=Column(String(64), nullable=True, unique=True)
    )
    credentials_enc: str | None = Field(default=None, sa_column=Column(Text), repr=False)
    webhook_secret_enc: str | None = Field(default=None, sa_column=Column(Text), repr=False)
    idempotency_key: str | None = Field(default=None, sa_column=Column(String(255)))
    input_fingerprint: str | None = Field(default=None, sa_column=Column(String(64)))
    failure_reason: str | None = Field(default=None, sa_column=Column(String(255)))
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    updated_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    suspended_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    closed_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    # When reconciliation last compared this setup with the provider (oldest go first).
    reconciled_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))


class PhoneLine(SQLModel, table=True):
    __tablename__ = "phone_line"
    __table_args__ = (
        Index("ix_line_setup", "setup_id", "id"),
        # Partial: it serves the sweep for pending lines and nothing else. A full index
        # on status would also offer the planner every ASSIGNED line of the table for
        # "does this setup have an assigned line", which it takes when its statistics
        # still count few of them (a fresh or freshly loaded database).
        Index(
            "ix_line_pending",
            "requested_at",
            postgresql_where=text(f"status = '{LineStatus.PENDING.value}'"),
            sqlite_where=text(f"status = '{LineStatus.PENDING.value}'"),
        ),
    )

    id: str = Field(primary_key=True, max_length=40)
    setup_id: str = Field(foreign_key="imessage_setup.id", max_length=40)
    workspace_id: str = Field(foreign_key="workspace.id", index=True, max_length=40)
    status: LineStatus = Field(sa_column=Column(String(16), nullable=False))
    phone_number: str | None = Field(default=None, sa_column=Column(String(20)))
    request_id: str | None = Field(
        default=None, sa_column=Column(String(64), nullable=True, unique=True)
    )
    requested_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    assigned_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    released_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))


class Event(SQLModel, table=True):
    """Outbox and event log in one table.

    Rows are written in the transaction of the change they describe, numbered by the
    workspace's counter under its row lock, so within a workspace seq order is commit
    order: replay ``after`` a seq can never miss an event committed late. The payload is
    the read-model snapshot of the setup (and line) as the change left them. What is
    still to go out on the bus is in :class:`EventOutbox`.
    """

    __tablename__ = "event"
    __table_args__ = (
        UniqueConstraint("workspace_id", "seq", name="uq_event_workspace_seq"),
        Index("ix_event_setup", "workspace_id", "setup_id", "seq"),
    )

    id: str = Field(primary_key=True, max_length=40)
    workspace_id: str = Field(max_length=40)
    seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    setup_id: str = Field(max_length=40)
    line_id: str | None = Field(default=None, max_length=40)
    type: str = Field(max_length=40)
    payload: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())


class EventOutbox(SQLModel, table=True):
    """One row per committed event not yet published: inserted with the event, deleted
    once it went out on the bus. The sweep publishes whatever a crash or an outage left.

    A table of its own rather than a flag on the event, so marking an event published
    deletes a narrow row instead of rewriting the event with its snapshot.
    """

    __tablename__ = "event_outbox"
    __table_args__ = (Index("ix_event_outbox_created", "created_at"),)

    event_id: str = Field(primary_key=True, max_length=40)
    created_at: datetime = Field(sa_column=_ts())


class AuditEvent(SQLModel, table=True):
    """Append-only record of one change: who, what, when, from which request.

    Each record carries the hash of the one before it in its workspace and its own hash
    over both (HMAC under a key derived from the keyring, named by ``key_id``), so an
    altered, removed or reordered record breaks the chain where it happened.
    """

    __tablename__ = "audit_event"
    __table_args__ = (
        UniqueConstraint("workspace_id", "seq", name="uq_audit_workspace_seq"),
        Index("ix_audit_setup", "workspace_id", "setup_id", "seq"),
    )

    id: str = Field(primary_key=True, max_length=40)
    workspace_id: str = Field(max_length=40)
    seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    occurred_at: datetime = Field(sa_column=_ts())
    action: str = Field(max_length=40)
    actor: str = Field(max_length=80)
    setup_id: str = Field(max_length=40)
    phone_line_id: str | None = Field(default=None, max_length=40)
    request_id: str | None = Field(default=None, max_length=64)
    changes: str = Field(sa_column=Column(Text, nullable=False))
    prev_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64)
    key_id: str = Field(max_length=40)


class Operation(SQLModel, table=True):
    """Write-ahead record of a change that needs the provider.

    Written before the provider is called and finished (``done``) in the transaction that
    applies the change locally; one still ``pending`` after a crash is finished by
    recovery, which repeats the (idempotent) provider call. At most one exclusive
    operation (update, suspend, reactivate, close) is pending per setup.
    """

    __tablename__ = "operation"
    __table_args__ = (
        Index("ix_operation_pending", "state", "created_at"),
        Index(
            "uq_operation_exclusive",
            "setup_id",
            unique=True,
            postgresql_where=text("state = 'pending' AND exclusive"),
            sqlite_where=text("state = 'pending' AND exclusive"),
        ),
    )

    id: str = Field(primary_key=True, max_length=40)
    workspace_id: str = Field(max_length=40)
    setup_id: str = Field(max_length=40)
    line_id: str | None = Field(default=None, max_length=40)
    kind: str = Field(max_length=32)
    exclusive: bool = Field(sa_column=Column(Boolean, nullable=False))
    params: str = Field(sa_column=Column(Text, nullable=False))
    actor: str = Field(max_length=80)
    request_id: str | None = Field(default=None, max_length=64)
    state: str = Field(max_length=16)
    outcome: str | None = Field(default=None, max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    updated_at: datetime = Field(default_factory=utcnow, sa_column=_ts())


class WebhookDelivery(SQLModel, table=True):
    """Durable log of verified deliveries; the unique key makes re-deliveries no-ops."""

    __tablename__ = "webhook_delivery"
    __table_args__ = (
        UniqueConstraint("setup_id", "webhook_id", name="uq_delivery_setup_webhook"),
        Index("ix_delivery_received", "received_at"),
    )

    id: str = Field(primary_key=True, max_length=40)
    setup_id: str = Field(max_length=40)
    webhook_id: str = Field(sa_column=Column(String(256), nullable=False))
    event_type: str = Field(sa_column=Column(String(64), nullable=False))
    outcome: str = Field(max_length=32)
    received_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
