"""uplift models fitted on past campaign and journey arms, and each customer's predicted uplift per segment

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-03 19:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op
from kit.types import JSONType, UTCDateTime

revision: str = '0018'
down_revision: str | None = '0017'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'uplift_model',
        sa.Column('id', sa.Integer(), primary_key=True),
        sa.Column('segment', sa.String(60), nullable=False),
        sa.Column('status', sa.String(12), nullable=False),
        sa.Column('trained_at', UTCDateTime(), nullable=False),
        sa.Column('members', sa.Integer(), nullable=False),
        sa.Column('metrics', JSONType, nullable=False),
        sa.Column('content', sa.Text(), nullable=False),
    )
    op.create_index('ix_uplift_model_segment', 'uplift_model', ['segment'])
    op.create_table(
        'uplift_score',
        sa.Column('customer_id', sa.Integer(), primary_key=True),
        sa.Column('segment', sa.String(60), primary_key=True),
        sa.Column('uplift', sa.Float(), nullable=False),
        sa.Column('model_id', sa.Integer(), nullable=False),
        sa.Column('scored_at', UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table('uplift_score')
    op.drop_index('ix_uplift_model_segment', table_name='uplift_model')
    op.drop_table('uplift_model')
