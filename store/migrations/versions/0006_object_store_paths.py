"""item paths remember an object's ETag and the scan that last saw them (object-store pools)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 17:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("item_paths", schema=None) as batch_op:
        batch_op.add_column(sa.Column("etag", sa.String(length=256), nullable=True))
        batch_op.add_column(sa.Column("scan_mark", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("item_paths", schema=None) as batch_op:
        batch_op.drop_column("scan_mark")
        batch_op.drop_column("etag")
