"""customer state, order lifecycle, ingestion

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02 06:45:31.180754
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

import kit.types
from alembic import op

revision: str = '0012'
down_revision: str | None = '0011'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('customer_change',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('customer_id', sa.Integer(), nullable=False),
    sa.Column('at', kit.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('cause', sa.String(length=16), nullable=False),
    sa.Column('processed_at', kit.types.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('customer_change', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_customer_change_at'), ['at'], unique=False)
        batch_op.create_index('ix_customer_change_customer', ['customer_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_customer_change_processed_at'), ['processed_at'], unique=False)

    op.create_table('customer_day',
    sa.Column('customer_id', sa.Integer(), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('orders', sa.Integer(), nullable=False),
    sa.Column('net_spend', sa.Numeric(precision=14, scale=2), nullable=False),
    sa.Column('discounted_orders', sa.Integer(), nullable=False),
    sa.Column('new_product_orders', sa.Integer(), nullable=False),
    sa.Column('full_price_after_discount', sa.Integer(), nullable=False),
    sa.Column('last_order_at', sa.BigInteger(), nullable=True),
    sa.Column('last_discounted_at', sa.BigInteger(), nullable=True),
    sa.Column('events', sa.Integer(), nullable=False),
    sa.Column('logins', sa.Integer(), nullable=False),
    sa.Column('views', sa.Integer(), nullable=False),
    sa.Column('cart_abandons', sa.Integer(), nullable=False),
    sa.Column('last_event_at', sa.BigInteger(), nullable=True),
    sa.Column('last_login_at', sa.BigInteger(), nullable=True),
    sa.Column('last_abandon_at', sa.BigInteger(), nullable=True),
    sa.PrimaryKeyConstraint('customer_id', 'day')
    )
    with op.batch_alter_table('customer_day', schema=None) as batch_op:
        batch_op.create_index('ix_customer_day_day', ['day'], unique=False)

    op.create_table('customer_state',
    sa.Column('customer_id', sa.Integer(), nullable=False),
    sa.Column('lifetime_orders', sa.Integer(), nullable=False),
    sa.Column('lifetime_spend', sa.Numeric(precision=14, scale=2), nullable=False),
    sa.Column('lifetime_first_order_at', kit.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('lifetime_last_order_at', kit.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('lifetime_last_event_at', kit.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('first_order_at', kit.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_order_at', kit.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('orders_total', sa.Integer(), nullable=False),
    sa.Column('monetary_total', sa.Numeric(precision=14, scale=2), nullable=False),
    sa.Column('frequency', sa.Integer(), nullable=False),
    sa.Column('monetary', sa.Numeric(precision=14, scale=2), nullable=False),
    sa.Column('orders_30d', sa.Integer(), nullable=False),
    sa.Column('discounted_in_window', sa.Integer(), nullable=False),
    sa.Column('new_product_orders', sa.Integer(), nullable=False),
    sa.Column('full_price_streak', sa.Integer(), nullable=False),
    sa.Column('last_event_at', kit.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_login_at', kit.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_abandon_at', kit.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('logins_30d', sa.Integer(), nullable=False),
    sa.Column('views_30d', sa.Integer(), nullable=False),
    sa.Column('cart_abandons_30d', sa.Integer(), nullable=False),
    sa.Column('newest_busy_month', sa.Date(), nullable=True),
    sa.Column('updated_at', kit.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('customer_id')
    )
    op.create_table('idempotent_request',
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('key_id', sa.Integer(), nullable=False),
    sa.Column('route', sa.String(length=100), nullable=False),
    sa.Column('body_digest', sa.String(length=64), nullable=False),
    sa.Column('status_code', sa.Integer(), nullable=False),
    sa.Column('response', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('created_at', kit.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('key', 'key_id')
    )
    with op.batch_alter_table('idempotent_request', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_idempotent_request_created_at'), ['created_at'], unique=False)

    op.create_table('order_refund',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('external_id', sa.String(length=128), nullable=False),
    sa.Column('order_id', sa.Integer(), nullable=False),
    sa.Column('amount', sa.Numeric(precision=14, scale=2), nullable=False),
    sa.Column('refunded_at', kit.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('items', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('reason', sa.String(length=200), nullable=True),
    sa.Column('created_at', kit.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('external_id')
    )
    with op.batch_alter_table('order_refund', schema=None) as batch_op:
        batch_op.create_index('ix_order_refund_order', ['order_id'], unique=False)

    op.create_table('shop_webhook_receipt',
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('webhook_id', sa.String(length=128), nullable=False),
    sa.Column('topic', sa.String(length=64), nullable=False),
    sa.Column('received_at', kit.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('source', 'webhook_id')
    )
    op.create_table('state_clock',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('as_of', kit.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('params', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('advanced_at', kit.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('customer', schema=None) as batch_op:
        batch_op.add_column(sa.Column('name_ciphertext', sa.LargeBinary(), nullable=True))
        batch_op.add_column(sa.Column('name_hash', sa.String(length=64), nullable=True))
        batch_op.create_index(batch_op.f('ix_customer_name_hash'), ['name_hash'], unique=False)

    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.add_column(sa.Column('status', sa.String(length=20), server_default='paid', nullable=False))
        batch_op.add_column(sa.Column('refunded_amount', sa.Numeric(precision=14, scale=2), server_default='0', nullable=False))



def downgrade() -> None:
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_column('refunded_amount')
        batch_op.drop_column('status')

    with op.batch_alter_table('customer', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_customer_name_hash'))
        batch_op.drop_column('name_hash')
        batch_op.drop_column('name_ciphertext')

    op.drop_table('state_clock')
    op.drop_table('shop_webhook_receipt')
    with op.batch_alter_table('order_refund', schema=None) as batch_op:
        batch_op.drop_index('ix_order_refund_order')

    op.drop_table('order_refund')
    with op.batch_alter_table('idempotent_request', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_idempotent_request_created_at'))

    op.drop_table('idempotent_request')
    op.drop_table('customer_state')
    with op.batch_alter_table('customer_day', schema=None) as batch_op:
        batch_op.drop_index('ix_customer_day_day')

    op.drop_table('customer_day')
    with op.batch_alter_table('customer_change', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_customer_change_processed_at'))
        batch_op.drop_index('ix_customer_change_customer')
        batch_op.drop_index(batch_op.f('ix_customer_change_at'))

    op.drop_table('customer_change')
