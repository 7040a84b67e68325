"""feedback: thumbs up/down on one answer in the playground (unpaired preference data for KTO)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True, nullable=False),
        sa.Column("messages", sa.JSON, nullable=False),
        sa.Column("completion", sa.Text, nullable=False),
        sa.Column("label", sa.Boolean, nullable=False),
        sa.Column("model", sa.String(300), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("feedback")
