"""ls_tasks remember whether the prediction a task was labeled with has been kept

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 17:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Tasks finished before this revision lost their ranking predictions already: nothing left to keep.
    with op.batch_alter_table("ls_tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("prediction_kept", sa.Boolean(), nullable=False, server_default=sa.true()))


def downgrade() -> None:
    with op.batch_alter_table("ls_tasks", schema=None) as batch_op:
        batch_op.drop_column("prediction_kept")
