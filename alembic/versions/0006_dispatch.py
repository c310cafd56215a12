"""dispatch: message delivery columns, call tasks, webhook receipts

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa

import kit.types
from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MOMENTS = ("lease_until", "sent_at", "delivered_at", "opened_at", "clicked_at")


def upgrade() -> None:
    with op.batch_alter_table('message', schema=None) as batch_op:
        batch_op.add_column(sa.Column('provider', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('worker', sa.String(length=64), nullable=True))
        for name in MOMENTS:
            batch_op.add_column(sa.Column(name, kit.types.UTCDateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f('ix_message_provider_id'), ['provider_id'], unique=False)
    op.create_table('call_task',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('message_id', sa.Integer(), nullable=False),
    sa.Column('customer_id', sa.Integer(), nullable=False),
    sa.Column('campaign_id', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=12), nullable=False),
    sa.Column('script', sa.Text(), nullable=False),
    sa.Column('claimed_by', sa.String(length=120), nullable=True),
    sa.Column('claimed_at', kit.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('outcome', sa.String(length=20), nullable=True),
    sa.Column('notes', sa.Text(), nullable=True),
    sa.Column('done_at', kit.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('created_at', kit.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('message_id')
    )
    with op.batch_alter_table('call_task', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_call_task_customer_id'), ['customer_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_call_task_status'), ['status'], unique=False)
    op.create_table('webhook_receipt',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('provider', sa.String(length=16), nullable=False),
    sa.Column('event_id', sa.String(length=120), nullable=False),
    sa.Column('received_at', kit.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('provider', 'event_id', name='uq_webhook_receipt')
    )


def downgrade() -> None:
    op.drop_table('webhook_receipt')
    with op.batch_alter_table('call_task', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_call_task_status'))
        batch_op.drop_index(batch_op.f('ix_call_task_customer_id'))
    op.drop_table('call_task')
    with op.batch_alter_table('message', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_message_provider_id'))
        for name in (*reversed(MOMENTS), 'worker', 'provider'):
            batch_op.drop_column(name)
