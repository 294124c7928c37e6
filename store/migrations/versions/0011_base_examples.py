"""the train.base_dataset images every trained model version replayed (curate export --model-version)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 07:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "training_base_examples",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("content_id", sa.String(length=64), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("split", sa.String(length=8), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("height", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_training_base_examples_model_version_id_model_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_training_base_examples")),
    )
    with op.batch_alter_table("training_base_examples", schema=None) as batch_op:
        batch_op.create_index("ix_training_base_examples_model_version", ["model_version_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("training_base_examples", schema=None) as batch_op:
        batch_op.drop_index("ix_training_base_examples_model_version")
    op.drop_table("training_base_examples")
