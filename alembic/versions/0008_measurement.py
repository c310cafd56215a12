"""measurement: message variant, churn predictions

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-25 19:11:01.189104
"""

from collections.abc import Sequence

import sqlalchemy as sa

import kit.types
from alembic import op

revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('churn_prediction',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('scored_on', kit.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('customer_id', sa.Integer(), nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('probability', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('churn_prediction', schema=None) as batch_op:
        batch_op.create_index('ix_churn_prediction_scored_on', ['scored_on'], unique=False)

    with op.batch_alter_table('message', schema=None) as batch_op:
        batch_op.add_column(sa.Column('variant', sa.String(length=40), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('message', schema=None) as batch_op:
        batch_op.drop_column('variant')

    with op.batch_alter_table('churn_prediction', schema=None) as batch_op:
        batch_op.drop_index('ix_churn_prediction_scored_on')

    op.drop_table('churn_prediction')
