"""day buckets and the customer state keep planning's money (discount, cost of goods); open offers indexed

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-02 17:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = '0015'
down_revision: str | None = '0014'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MONEY = sa.Numeric(14, 2)
DAY_COLUMNS = ('discount', 'cost_known_value', 'cost_of_goods')
STATE_COLUMNS = ('discount_365d', 'cost_known_value_365d', 'cost_of_goods_365d')


def upgrade() -> None:
    # Derived tables: emptied and marked for a rebuild, as in 0013 (crm.state.needs_rebuild).
    for table in ('customer_change', 'customer_state', 'customer_day', 'state_clock'):
        op.execute(f'DELETE FROM {table}')
    op.execute("INSERT INTO state_clock (id, as_of, params, advanced_at) SELECT 1, CURRENT_DATE, "
               "'{\"rebuild\": true}', CURRENT_TIMESTAMP WHERE EXISTS (SELECT 1 FROM customer)")
    with op.batch_alter_table('customer_day', schema=None) as batch_op:
        for name in DAY_COLUMNS:
            batch_op.add_column(sa.Column(name, MONEY, nullable=False, server_default='0'))
    with op.batch_alter_table('customer_state', schema=None) as batch_op:
        for name in STATE_COLUMNS:
            batch_op.add_column(sa.Column(name, MONEY, nullable=False, server_default='0'))
    op.create_index('ix_message_valid_until', 'message', ['valid_until'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_message_valid_until', table_name='message')
    with op.batch_alter_table('customer_state', schema=None) as batch_op:
        for name in reversed(STATE_COLUMNS):
            batch_op.drop_column(name)
    with op.batch_alter_table('customer_day', schema=None) as batch_op:
        for name in reversed(DAY_COLUMNS):
            batch_op.drop_column(name)
