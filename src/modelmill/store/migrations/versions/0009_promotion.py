"""promotion: a deployment's gate task, and its history (created, promoted, refused, rolled back)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""
import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deployments") as b:
        b.add_column(sa.Column("gate", sa.JSON, nullable=True))
    op.create_table(
        "deployment_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True, nullable=False),
        sa.Column("deployment", sa.String(200), nullable=False),
        sa.Column("action", sa.String(20), nullable=False),
        sa.Column("model", sa.String(300), nullable=False),
        sa.Column("previous", sa.String(300), nullable=True),
        sa.Column("task", sa.String(200), nullable=True),
        sa.Column("metric", sa.String(40), nullable=True),
        sa.Column("score", sa.Float, nullable=True),
        sa.Column("previous_score", sa.Float, nullable=True),
        sa.Column("margin", sa.Float, nullable=True),
        sa.Column("note", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_deployment_events_deployment", "deployment_events", ["deployment"])
    op.create_index("ix_deployment_events_created_at", "deployment_events", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_deployment_events_created_at", "deployment_events")
    op.drop_index("ix_deployment_events_deployment", "deployment_events")
    op.drop_table("deployment_events")
    with op.batch_alter_table("deployments") as b:
        b.drop_column("gate")
