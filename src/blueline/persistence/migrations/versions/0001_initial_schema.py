"""Initial schema: workspaces, API keys, setups, phone lines, events, webhook deliveries.

Revision ID: 0001
Revises:
Create Date: 2026-11-29 15:49:37.341585
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "event",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=True),
        sa.Column("workspace_id", sa.String(length=40), nullable=False),
        sa.Column("setup_id", sa.String(length=40), nullable=False),
        sa.Column("line_id", sa.String(length=40), nullable=False),
        sa.Column("type", sa.String(length=40), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("seq"),
    )
    with op.batch_alter_table("event", schema=None) as batch_op:
        batch_op.create_index("ix_event_workspace_seq", ["workspace_id", "seq"], unique=False)
        batch_op.create_index(
            "ix_event_unpublished",
            ["id"],
            unique=False,
            postgresql_where=sa.text("published_at IS NULL"),
            sqlite_where=sa.text("published_at IS NULL"),
        )

    op.create_table(
        "webhook_delivery",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("setup_id", sa.String(length=40), nullable=False),
        sa.Column("webhook_id", sa.String(length=256), nullable=False),
        sa.Column("event_type", sa.String(length=64), nullable=False),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("setup_id", "webhook_id", name="uq_delivery_setup_webhook"),
    )
    with op.batch_alter_table("webhook_delivery", schema=None) as batch_op:
        batch_op.create_index("ix_delivery_received", ["received_at"], unique=False)

    op.create_table(
        "workspace",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "api_key",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("workspace_id", sa.String(length=40), nullable=False),
        sa.Column("display_prefix", sa.String(length=24), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspace.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key_hash"),
    )
    with op.batch_alter_table("api_key", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_api_key_workspace_id"), ["workspace_id"], unique=False)

    op.create_table(
        "imessage_setup",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("workspace_id", sa.String(length=40), nullable=False),
        sa.Column("business_name", sa.String(length=128), nullable=False),
        sa.Column("label", sa.String(length=128), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("subaccount_id", sa.String(length=64), nullable=True),
        sa.Column("credentials_enc", sa.Text(), nullable=True),
        sa.Column("webhook_secret_enc", sa.Text(), nullable=True),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("input_fingerprint", sa.String(length=64), nullable=True),
        sa.Column("failure_reason", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspace.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("subaccount_id"),
        sa.UniqueConstraint("workspace_id", "idempotency_key", name="uq_setup_idempotency"),
    )
    with op.batch_alter_table("imessage_setup", schema=None) as batch_op:
        batch_op.create_index("ix_setup_list", ["workspace_id", "state", "id"], unique=False)
        batch_op.create_index(
            "ix_setup_list_status", ["workspace_id", "state", "status", "id"], unique=False
        )

    op.create_table(
        "phone_line",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("setup_id", sa.String(length=40), nullable=False),
        sa.Column("workspace_id", sa.String(length=40), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("phone_number", sa.String(length=20), nullable=True),
        sa.Column("request_id", sa.String(length=64), nullable=True),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("assigned_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["setup_id"],
            ["imessage_setup.id"],
        ),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspace.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("request_id"),
    )
    with op.batch_alter_table("phone_line", schema=None) as batch_op:
        batch_op.create_index("ix_line_setup", ["setup_id", "id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_phone_line_workspace_id"), ["workspace_id"], unique=False
        )
        batch_op.create_index("ix_line_pending", ["status", "requested_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("phone_line", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_phone_line_workspace_id"))
        batch_op.drop_index("ix_line_pending")
        batch_op.drop_index("ix_line_setup")

    op.drop_table("phone_line")
    with op.batch_alter_table("imessage_setup", schema=None) as batch_op:
        batch_op.drop_index("ix_setup_list_status")
        batch_op.drop_index("ix_setup_list")

    op.drop_table("imessage_setup")
    with op.batch_alter_table("api_key", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_key_workspace_id"))

    op.drop_table("api_key")
    op.drop_table("workspace")
    with op.batch_alter_table("webhook_delivery", schema=None) as batch_op:
        batch_op.drop_index("ix_delivery_received")

    op.drop_table("webhook_delivery")
    with op.batch_alter_table("event", schema=None) as batch_op:
        batch_op.drop_index("ix_event_unpublished")
        batch_op.drop_index("ix_event_workspace_seq")

    op.drop_table("event")
