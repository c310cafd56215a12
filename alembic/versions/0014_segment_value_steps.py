"""profiles explain from the customer state: segment_metric gives way to the run's spend distribution steps

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-02 13:25:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = '0014'
down_revision: str | None = '0013'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade() -> None:
    op.create_table('segment_value_step',
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('monetary', sa.Float(), nullable=False),
    sa.Column('buyers_at_or_below', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('run_id', 'monetary')
    )
    with op.batch_alter_table('segment_run', schema=None) as batch_op:
        batch_op.add_column(sa.Column('population', JSON, nullable=False, server_default='{}'))
    op.drop_table('segment_metric')


def downgrade() -> None:
    op.create_table('segment_metric',
    sa.Column('customer_id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('metric_values', JSON, nullable=False),
    sa.ForeignKeyConstraint(['customer_id'], ['customer.id'], ),
    sa.PrimaryKeyConstraint('customer_id')
    )
    with op.batch_alter_table('segment_run', schema=None) as batch_op:
        batch_op.drop_column('population')
    op.drop_table('segment_value_step')
