"""eval results: one candidate scored on one task, with lineage

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "eval_results",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("task", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("dataset", sa.Text(), nullable=False),
        sa.Column("dataset_hash", sa.String(64), nullable=False),
        sa.Column("candidate", sa.String(300), nullable=False),
        sa.Column("candidate_kind", sa.String(20), nullable=False),
        sa.Column("base_model", sa.String(200), nullable=True),
        sa.Column("adapter", sa.String(200), nullable=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("n_done", sa.Integer(), nullable=False),
        sa.Column("primary", sa.String(40), nullable=False),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("lineage", sa.JSON(), nullable=False),
        sa.Column("parameters", sa.BigInteger(), nullable=True),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_eval_results_key", "eval_results", ["key"], unique=True)
    op.create_index("ix_eval_results_task", "eval_results", ["task"])
    op.create_index("ix_eval_results_candidate", "eval_results", ["candidate"])


def downgrade() -> None:
    op.drop_table("eval_results")
