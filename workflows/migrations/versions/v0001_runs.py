"""The run registry: runs, what depends on them, and the configurations they tried.

Revision ID: 0001
Revises: (none)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("ended_at", sa.DateTime(), nullable=True),
        sa.Column("code_version", sa.String(128), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("inputs", sa.JSON(), nullable=False),
        sa.Column("artifacts", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("pid_started", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_runs"),
    )
    op.create_index("ix_runs_kind", "runs", ["kind"])
    op.create_index("ix_runs_status", "runs", ["status"])
    op.create_table(
        "run_depends",
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("dependent_kind", sa.String(8), nullable=False),
        sa.Column("dependent", sa.String(255), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.CheckConstraint("dependent_kind IN ('run', 'model')", name="ck_run_depends_kind"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_run_depends_run_id_runs"),
        sa.PrimaryKeyConstraint("run_id", "dependent_kind", "dependent", name="pk_run_depends"),
    )
    op.create_index("ix_run_depends_dependent", "run_depends", ["dependent"])
    op.create_table(
        "run_trials",
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_run_trials_run_id_runs"),
        sa.PrimaryKeyConstraint("run_id", "seq", name="pk_run_trials"),
    )


def downgrade() -> None:
    op.drop_table("run_trials")
    op.drop_index("ix_run_depends_dependent", table_name="run_depends")
    op.drop_table("run_depends")
    op.drop_index("ix_runs_status", table_name="runs")
    op.drop_index("ix_runs_kind", table_name="runs")
    op.drop_table("runs")
