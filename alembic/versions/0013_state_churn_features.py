"""customer state keeps the churn features; day buckets keep the first order, the last order's value, cart adds

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02 12:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

import kit.types
from alembic import op

revision: str = '0013'
down_revision: str | None = '0012'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MONEY = sa.Numeric(14, 2)


def day_columns() -> list[sa.Column]:
    return [
        sa.Column('zero_orders', sa.Integer(), nullable=False, server_default='0'),
        sa.Column('first_order_at', sa.BigInteger(), nullable=True),
        sa.Column('last_order_net', MONEY, nullable=True),
        sa.Column('cart_adds', sa.Integer(), nullable=False, server_default='0'),
    ]


def state_columns() -> list[sa.Column]:
    return [
        sa.Column('churn_first_order_at', kit.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column('churn_orders', sa.Integer(), nullable=False, server_default='0'),
        sa.Column('churn_spend', MONEY, nullable=False, server_default='0'),
        sa.Column('churn_zero_orders', sa.Integer(), nullable=False, server_default='0'),
        sa.Column('churn_last_order_value', MONEY, nullable=True),
        sa.Column('churn_purchase_days', sa.Integer(), nullable=False, server_default='0'),
        sa.Column('churn_gap_mean', sa.Float(), nullable=True),
        sa.Column('churn_gap_std', sa.Float(), nullable=True),
        sa.Column('churn_last_gap', sa.Float(), nullable=True),
        sa.Column('churn_discounted_orders', sa.Integer(), nullable=False, server_default='0'),
        sa.Column('churn_new_product_orders', sa.Integer(), nullable=False, server_default='0'),
        sa.Column('churn_full_price_streak', sa.Integer(), nullable=False, server_default='0'),
        sa.Column('churn_last_event_at', kit.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column('churn_orders_30d', sa.Integer(), nullable=False, server_default='0'),
        sa.Column('churn_orders_90d', sa.Integer(), nullable=False, server_default='0'),
        sa.Column('churn_orders_180d', sa.Integer(), nullable=False, server_default='0'),
        sa.Column('churn_orders_365d', sa.Integer(), nullable=False, server_default='0'),
        sa.Column('churn_spend_30d', MONEY, nullable=False, server_default='0'),
        sa.Column('churn_spend_90d', MONEY, nullable=False, server_default='0'),
        sa.Column('churn_spend_180d', MONEY, nullable=False, server_default='0'),
        sa.Column('churn_spend_365d', MONEY, nullable=False, server_default='0'),
        sa.Column('churn_login_7d', sa.Integer(), nullable=False, server_default='0'),
        sa.Column('churn_login_30d', sa.Integer(), nullable=False, server_default='0'),
        sa.Column('churn_login_90d', sa.Integer(), nullable=False, server_default='0'),
        sa.Column('churn_view_7d', sa.Integer(), nullable=False, server_default='0'),
        sa.Column('churn_view_30d', sa.Integer(), nullable=False, server_default='0'),
        sa.Column('churn_view_90d', sa.Integer(), nullable=False, server_default='0'),
        sa.Column('churn_cart_add_7d', sa.Integer(), nullable=False, server_default='0'),
        sa.Column('churn_cart_add_30d', sa.Integer(), nullable=False, server_default='0'),
        sa.Column('churn_cart_add_90d', sa.Integer(), nullable=False, server_default='0'),
        sa.Column('churn_cart_abandon_7d', sa.Integer(), nullable=False, server_default='0'),
        sa.Column('churn_cart_abandon_30d', sa.Integer(), nullable=False, server_default='0'),
        sa.Column('churn_cart_abandon_90d', sa.Integer(), nullable=False, server_default='0'),
    ]


def upgrade() -> None:
    # Derived tables: emptied, so the next nightly run (or `crm state rebuild`) recomputes them from the raw rows.
    for table in ('customer_change', 'customer_state', 'customer_day', 'state_clock'):
        op.execute(f'DELETE FROM {table}')
    # A shop with history gets a clock marked for a rebuild: writers until the next night keep their customers'
    # rows current, and that night's segmentation rebuilds everything (crm.state.needs_rebuild).
    op.execute("INSERT INTO state_clock (id, as_of, params, advanced_at) SELECT 1, CURRENT_DATE, "
               "'{\"rebuild\": true}', CURRENT_TIMESTAMP WHERE EXISTS (SELECT 1 FROM customer)")
    with op.batch_alter_table('customer_day', schema=None) as batch_op:
        for column in day_columns():
            batch_op.add_column(column)
    with op.batch_alter_table('customer_state', schema=None) as batch_op:
        for column in state_columns():
            batch_op.add_column(column)


def downgrade() -> None:
    with op.batch_alter_table('customer_state', schema=None) as batch_op:
        for column in reversed(state_columns()):
            batch_op.drop_column(column.name)
    with op.batch_alter_table('customer_day', schema=None) as batch_op:
        for column in reversed(day_columns()):
            batch_op.drop_column(column.name)
