"""labels imported from a YOLO dataset or a Label Studio export: annotations without a project, with a source;
Label Studio's ground-truth flag on annotations (pull.resolve: ground_truth)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 17:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("annotations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("source", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("ground_truth", sa.Boolean(), server_default=sa.false(), nullable=False))
        batch_op.alter_column("ls_project_id", existing_type=sa.Integer(), nullable=True)


def downgrade() -> None:
    op.execute("DELETE FROM annotations WHERE ls_project_id IS NULL")
    with op.batch_alter_table("annotations", schema=None) as batch_op:
        batch_op.alter_column("ls_project_id", existing_type=sa.Integer(), nullable=False)
        batch_op.drop_column("ground_truth")
        batch_op.drop_column("source")
