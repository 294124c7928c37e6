"""selections drawn as the test set (train.test_set_size, curate testset draw): evaluation-only items

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03 13:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("selections", schema=None) as batch_op:
        batch_op.add_column(sa.Column("purpose", sa.String(length=8), server_default="active", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("selections", schema=None) as batch_op:
        batch_op.drop_column("purpose")
