"""Table models. The only place the schema is described; Alembic migrations create it.

Secret columns hold vault ciphertext (``kid:…``), never plaintext, and are excluded
from every repr so a stray log line cannot leak them.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import BigInteger, Column, Index, String, Text, UniqueConstraint, text
from sqlmodel import Field, SQLModel

from blueline.persistence.types import UTCDateTime, utcnow


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


class LineStatus(StrEnum):
    PENDING = "PENDING"
    ASSIGNED = "ASSIGNED"


def _ts(*, nullable: bool = False) -> Column[datetime]:
    return Column(UTCDateTime(), nullable=nullable)


class Workspace(SQLModel, table=True):
    __tablename__ = "workspace"

    id: str = Field(primary_key=True, max_length=40)
    name: str = Field(sa_column=Column(String(128), nullable=False, unique=True))
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())


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
    # it only ever moves PENDING -> ACTIVE, in the transaction that assigns a line.
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


class PhoneLine(SQLModel, table=True):
    __tablename__ = "phone_line"
    __table_args__ = (
        Index("ix_line_setup", "setup_id", "id"),
        Index("ix_line_pending", "status", "requested_at"),
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


class Event(SQLModel, table=True):
    """Outbox and event log in one table.

    Rows are written in the transaction of the change they describe. ``seq`` is given
    by the relay after commit, under a lock, so seq order is the order events became
    visible: replay ``after`` a seq can never miss an event committed late.
    """

    __tablename__ = "event"
    __table_args__ = (
        Index("ix_event_workspace_seq", "workspace_id", "seq"),
        Index(
            "ix_event_unpublished",
            "id",
            postgresql_where=text("published_at IS NULL"),
            sqlite_where=text("published_at IS NULL"),
        ),
    )

    id: str = Field(primary_key=True, max_length=40)
    seq: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True, unique=True))
    workspace_id: str = Field(max_length=40)
    setup_id: str = Field(max_length=40)
    line_id: str = Field(max_length=40)
    type: str = Field(max_length=40)
    payload: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    published_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))


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
