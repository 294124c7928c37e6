"""selections remember the Label Studio project they are meant for

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22 02:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("selections", schema=None) as batch_op:
        batch_op.add_column(sa.Column("push_ls_project_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_selections_push_ls_project_id_ls_projects"),
            "ls_projects",
            ["push_ls_project_id"],
            ["id"],
            ondelete="SET NULL",
        )
    # With a single project, every selection pushed so far was meant for it; otherwise leave them project-less
    # (pushable to any project, as before).
    conn = op.get_bind()
    projects = [row[0] for row in conn.execute(sa.text("SELECT id FROM ls_projects"))]
    if len(projects) == 1:
        conn.execute(
            sa.text("UPDATE selections SET push_ls_project_id = :p WHERE push"),
            {"p": projects[0]},
        )


def downgrade() -> None:
    with op.batch_alter_table("selections", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_selections_push_ls_project_id_ls_projects"), type_="foreignkey")
        batch_op.drop_column("push_ls_project_id")
