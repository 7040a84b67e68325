"""workflows: business tables for lookups, and the runs of workflows with their traces

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""
import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "lookup_tables",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(10), nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("sql_table", sa.String(200), nullable=True),
        sa.Column("columns", sa.JSON, nullable=False),
        sa.Column("rows", sa.JSON, nullable=False),
        sa.Column("row_count", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_lookup_tables_name", "lookup_tables", ["name"], unique=True)
    op.create_table(
        "workflow_runs",
        sa.Column("id", sa.String(40), primary_key=True, nullable=False),
        sa.Column("app", sa.String(200), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("inputs", sa.JSON, nullable=False),
        sa.Column("output", sa.JSON, nullable=True),
        sa.Column("trace", sa.JSON, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("ms", sa.Float, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_workflow_runs_app", "workflow_runs", ["app"])
    op.create_index("ix_workflow_runs_created_at", "workflow_runs", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_workflow_runs_created_at", "workflow_runs")
    op.drop_index("ix_workflow_runs_app", "workflow_runs")
    op.drop_table("workflow_runs")
    op.drop_index("ix_lookup_tables_name", "lookup_tables")
    op.drop_table("lookup_tables")
