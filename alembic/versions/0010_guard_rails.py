"""guard rails: versioned settings, template kinds, coupon redemptions

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01 21:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

import kit.types
from alembic import op

revision: str = '0010'
down_revision: str | None = '0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('guard_rail_version',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('settings', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'),
              nullable=False),
    sa.Column('created_at', kit.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('created_by', sa.String(length=120), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('version')
    )
    with op.batch_alter_table('message_template', schema=None) as batch_op:
        batch_op.add_column(sa.Column('kind', sa.String(length=16), server_default='marketing', nullable=False))
    with op.batch_alter_table('message', schema=None) as batch_op:
        batch_op.add_column(sa.Column('redeemed_order_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('redeemed_discount', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('redeemed_at', kit.types.UTCDateTime(timezone=True), nullable=True))
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.create_index('ix_orders_coupon_code', ['coupon_code'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_index('ix_orders_coupon_code')
    with op.batch_alter_table('message', schema=None) as batch_op:
        batch_op.drop_column('redeemed_at')
        batch_op.drop_column('redeemed_discount')
        batch_op.drop_column('redeemed_order_id')
    with op.batch_alter_table('message_template', schema=None) as batch_op:
        batch_op.drop_column('kind')
    op.drop_table('guard_rail_version')
