"""The pending-line index covers pending lines only.

A full index on (status, requested_at) also offered the planner every ASSIGNED line
for "does this setup have an assigned line" (the derived status, recomputed by every
assignment), which it chose while its statistics still counted few assigned lines: on a
fresh or freshly loaded database each batch of assignments then read every assigned
line of the table. The sweep for pending lines is all the index was for.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 02:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PENDING = sa.text("status = 'PENDING'")


def upgrade() -> None:
    with op.batch_alter_table("phone_line") as batch:
        batch.drop_index("ix_line_pending")
        batch.create_index(
            "ix_line_pending",
            ["requested_at"],
            unique=False,
            postgresql_where=_PENDING,
            sqlite_where=_PENDING,
        )


def downgrade() -> None:
    with op.batch_alter_table("phone_line") as batch:
        batch.drop_index("ix_line_pending")
        batch.create_index("ix_line_pending", ["status", "requested_at"], unique=False)
