"""dialogue bots: conversations (state and turns) by conversation id

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""
import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bot_conversations",
        sa.Column("id", sa.String(40), primary_key=True, nullable=False),
        sa.Column("bot", sa.String(200), nullable=False),
        sa.Column("state", sa.JSON, nullable=False),
        sa.Column("turns", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_bot_conversations_bot", "bot_conversations", ["bot"])
    op.create_index("ix_bot_conversations_updated_at", "bot_conversations", ["updated_at"])


def downgrade() -> None:
    op.drop_index("ix_bot_conversations_updated_at", "bot_conversations")
    op.drop_index("ix_bot_conversations_bot", "bot_conversations")
    op.drop_table("bot_conversations")
