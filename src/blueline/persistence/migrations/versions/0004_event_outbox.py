"""What is still to publish lives in a narrow table of its own.

A ``published_at`` flag on the event row, with a partial index of the rows still
unset, made every mark a non-HOT update: a new version of the whole row, snapshot
included, and an entry in every index of ``event``, for each event published. An
``event_outbox`` row per unpublished event, inserted with the event and deleted once
it went out, costs a narrow insert and delete instead.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 08:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TS = sa.DateTime(timezone=True)
_UNPUBLISHED = sa.text("published_at IS NULL")


def upgrade() -> None:
    op.create_table(
        "event_outbox",
        sa.Column("event_id", sa.String(length=40), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("event_id"),
    )
    op.create_index("ix_event_outbox_created", "event_outbox", ["created_at"], unique=False)
    op.execute(
        "INSERT INTO event_outbox (event_id, created_at) "
        "SELECT id, created_at FROM event WHERE published_at IS NULL"
    )
    with op.batch_alter_table("event") as batch:
        batch.drop_index("ix_event_unpublished")
        batch.drop_column("published_at")


def downgrade() -> None:
    with op.batch_alter_table("event") as batch:
        batch.add_column(sa.Column("published_at", _TS, nullable=True))
    op.execute(
        "UPDATE event SET published_at = created_at "
        "WHERE id NOT IN (SELECT event_id FROM event_outbox)"
    )
    with op.batch_alter_table("event") as batch:
        batch.create_index(
            "ix_event_unpublished",
            ["created_at"],
            unique=False,
            postgresql_where=_UNPUBLISHED,
            sqlite_where=_UNPUBLISHED,
        )
    op.drop_index("ix_event_outbox_created", table_name="event_outbox")
    op.drop_table("event_outbox")
