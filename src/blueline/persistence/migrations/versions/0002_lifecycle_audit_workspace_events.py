"""Channel lifecycle, audit trail, write-ahead operations, per-workspace event numbers.

- setups gain suspended_at, closed_at and reconciled_at; lines gain released_at;
- workspaces gain their own event and audit counters and the audit chain's head;
- events are renumbered per workspace (a global sequence told every workspace how
  busy the others were). Events written before this revision keep the old snapshot
  format: they are marked published so nothing sends them again, and since event ids
  changed format no client can ask to replay them;
- audit_event (hash-chained per workspace) and operation (write-ahead log of provider
  calls) are new.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 22:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TS = sa.DateTime(timezone=True)


def _new_event_table(name: str) -> None:
    op.create_table(
        name,
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("workspace_id", sa.String(length=40), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("setup_id", sa.String(length=40), nullable=False),
        sa.Column("line_id", sa.String(length=40), nullable=True),
        sa.Column("type", sa.String(length=40), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("published_at", _TS, nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("workspace_id", "seq", name="uq_event_workspace_seq"),
    )


def upgrade() -> None:
    with op.batch_alter_table("workspace") as batch:
        batch.add_column(
            sa.Column("event_seq", sa.BigInteger(), nullable=False, server_default=sa.text("0"))
        )
        batch.add_column(
            sa.Column("audit_seq", sa.BigInteger(), nullable=False, server_default=sa.text("0"))
        )
        batch.add_column(
            sa.Column(
                "audit_head", sa.String(length=64), nullable=False, server_default=sa.text("''")
            )
        )
    with op.batch_alter_table("api_key") as batch:
        batch.create_index("ix_api_key_revoked", ["revoked_at"], unique=False)
    with op.batch_alter_table("imessage_setup") as batch:
        batch.add_column(sa.Column("suspended_at", _TS, nullable=True))
        batch.add_column(sa.Column("closed_at", _TS, nullable=True))
        batch.add_column(sa.Column("reconciled_at", _TS, nullable=True))
    with op.batch_alter_table("phone_line") as batch:
        batch.add_column(sa.Column("released_at", _TS, nullable=True))

    _new_event_table("event_v2")
    op.execute(
        "INSERT INTO event_v2 (id, workspace_id, seq, setup_id, line_id, type, payload, "
        "created_at, published_at) "
        "SELECT id, workspace_id, row_number() OVER (PARTITION BY workspace_id "
        "ORDER BY seq IS NULL, seq, id), setup_id, line_id, type, payload, created_at, "
        "COALESCE(published_at, created_at) FROM event"
    )
    op.drop_table("event")
    op.rename_table("event_v2", "event")
    with op.batch_alter_table("event") as batch:
        batch.create_index("ix_event_setup", ["workspace_id", "setup_id", "seq"], unique=False)
        batch.create_index(
            "ix_event_unpublished",
            ["created_at"],
            unique=False,
            postgresql_where=sa.text("published_at IS NULL"),
            sqlite_where=sa.text("published_at IS NULL"),
        )
    op.execute(
        "UPDATE workspace SET event_seq = COALESCE("
        "(SELECT max(seq) FROM event WHERE event.workspace_id = workspace.id), 0)"
    )

    op.create_table(
        "audit_event",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("workspace_id", sa.String(length=40), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("occurred_at", _TS, nullable=False),
        sa.Column("action", sa.String(length=40), nullable=False),
        sa.Column("actor", sa.String(length=80), nullable=False),
        sa.Column("setup_id", sa.String(length=40), nullable=False),
        sa.Column("phone_line_id", sa.String(length=40), nullable=True),
        sa.Column("request_id", sa.String(length=64), nullable=True),
        sa.Column("changes", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("key_id", sa.String(length=40), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("workspace_id", "seq", name="uq_audit_workspace_seq"),
    )
    with op.batch_alter_table("audit_event") as batch:
        batch.create_index("ix_audit_setup", ["workspace_id", "setup_id", "seq"], unique=False)

    op.create_table(
        "operation",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("workspace_id", sa.String(length=40), nullable=False),
        sa.Column("setup_id", sa.String(length=40), nullable=False),
        sa.Column("line_id", sa.String(length=40), nullable=True),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("exclusive", sa.Boolean(), nullable=False),
        sa.Column("params", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(length=80), nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("outcome", sa.String(length=64), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("operation") as batch:
        batch.create_index("ix_operation_pending", ["state", "created_at"], unique=False)
        batch.create_index(
            "uq_operation_exclusive",
            ["setup_id"],
            unique=True,
            postgresql_where=sa.text("state = 'pending' AND exclusive"),
            sqlite_where=sa.text("state = 'pending' AND exclusive"),
        )


def downgrade() -> None:
    op.drop_table("operation")
    op.drop_table("audit_event")

    # Back to one global sequence, in commit order as far as it can be told.
    op.create_table(
        "event_v1",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=True),
        sa.Column("workspace_id", sa.String(length=40), nullable=False),
        sa.Column("setup_id", sa.String(length=40), nullable=False),
        sa.Column("line_id", sa.String(length=40), nullable=False),
        sa.Column("type", sa.String(length=40), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("published_at", _TS, nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("seq"),
    )
    op.execute(
        "INSERT INTO event_v1 (id, seq, workspace_id, setup_id, line_id, type, payload, "
        "created_at, published_at) "
        "SELECT id, row_number() OVER (ORDER BY created_at, id), workspace_id, setup_id, "
        "line_id, type, payload, created_at, published_at FROM event "
        "WHERE line_id IS NOT NULL"
    )
    op.drop_table("event")
    op.rename_table("event_v1", "event")
    with op.batch_alter_table("event") as batch:
        batch.create_index("ix_event_workspace_seq", ["workspace_id", "seq"], unique=False)
        batch.create_index(
            "ix_event_unpublished",
            ["id"],
            unique=False,
            postgresql_where=sa.text("published_at IS NULL"),
            sqlite_where=sa.text("published_at IS NULL"),
        )

    with op.batch_alter_table("phone_line") as batch:
        batch.drop_column("released_at")
    with op.batch_alter_table("imessage_setup") as batch:
        batch.drop_column("reconciled_at")
        batch.drop_column("closed_at")
        batch.drop_column("suspended_at")
    with op.batch_alter_table("api_key") as batch:
        batch.drop_index("ix_api_key_revoked")
    with op.batch_alter_table("workspace") as batch:
        batch.drop_column("audit_head")
        batch.drop_column("audit_seq")
        batch.drop_column("event_seq")
