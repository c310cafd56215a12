"""scheduler: job runs and steps, scheduler instances, APScheduler job store, conversions

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25 17:19:43.923267
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

import kit.types
from alembic import op

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('apscheduler_jobs',
    sa.Column('id', sa.Unicode(length=191), nullable=False),
    sa.Column('next_run_time', sa.Float(precision=25), nullable=True),
    sa.Column('job_state', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('apscheduler_jobs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_apscheduler_jobs_next_run_time'), ['next_run_time'], unique=False)

    op.create_table('conversion',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('order_id', sa.Integer(), nullable=False),
    sa.Column('message_id', sa.Integer(), nullable=False),
    sa.Column('campaign_id', sa.Integer(), nullable=False),
    sa.Column('customer_id', sa.Integer(), nullable=False),
    sa.Column('channel', sa.String(length=8), nullable=False),
    sa.Column('touch', sa.String(length=8), nullable=False),
    sa.Column('ordered_at', kit.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('revenue', sa.Float(), nullable=False),
    sa.Column('discount', sa.Float(), nullable=False),
    sa.Column('attributed_at', kit.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('order_id')
    )
    with op.batch_alter_table('conversion', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_conversion_campaign_id'), ['campaign_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_conversion_message_id'), ['message_id'], unique=False)

    op.create_table('job_run',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('job', sa.String(length=64), nullable=False),
    sa.Column('occurrence', sa.String(length=32), nullable=False),
    sa.Column('status', sa.String(length=12), nullable=False),
    sa.Column('trigger', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('instance', sa.String(length=120), nullable=True),
    sa.Column('started_at', kit.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('finished_at', kit.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('error', sa.String(length=1000), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('job', 'occurrence', name='uq_job_run_occurrence')
    )
    with op.batch_alter_table('job_run', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_job_run_started_at'), ['started_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_job_run_status'), ['status'], unique=False)

    op.create_table('scheduler_instance',
    sa.Column('instance', sa.String(length=120), nullable=False),
    sa.Column('role', sa.String(length=12), nullable=False),
    sa.Column('started_at', kit.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('beat_at', kit.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('leader_since', kit.types.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('instance')
    )
    with op.batch_alter_table('scheduler_instance', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_scheduler_instance_beat_at'), ['beat_at'], unique=False)

    op.create_table('job_step',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('step', sa.String(length=32), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=12), nullable=False),
    sa.Column('started_at', kit.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('finished_at', kit.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('seconds', sa.Float(), nullable=True),
    sa.Column('counts', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('error', sa.String(length=1000), nullable=True),
    sa.ForeignKeyConstraint(['run_id'], ['job_run.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('run_id', 'step', name='uq_job_step')
    )


def downgrade() -> None:
    op.drop_table('job_step')
    with op.batch_alter_table('scheduler_instance', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_scheduler_instance_beat_at'))

    op.drop_table('scheduler_instance')
    with op.batch_alter_table('job_run', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_job_run_status'))
        batch_op.drop_index(batch_op.f('ix_job_run_started_at'))

    op.drop_table('job_run')
    with op.batch_alter_table('conversion', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_conversion_message_id'))
        batch_op.drop_index(batch_op.f('ix_conversion_campaign_id'))

    op.drop_table('conversion')
    with op.batch_alter_table('apscheduler_jobs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_apscheduler_jobs_next_run_time'))

    op.drop_table('apscheduler_jobs')
