"""journeys (versions, enrollments, steps taken) and the activity feed they react to

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-03 07:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op
from kit.types import JSONType, UTCDateTime

revision: str = '0016'
down_revision: str | None = '0015'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'customer_activity',
        sa.Column('id', sa.Integer(), primary_key=True),
        sa.Column('customer_id', sa.Integer(), nullable=False),
        sa.Column('kind', sa.String(16), nullable=False),
        sa.Column('name', sa.String(64), nullable=True),
        sa.Column('ref_id', sa.BigInteger(), nullable=True),
        sa.Column('properties', JSONType, nullable=True),
        sa.Column('occurred_at', UTCDateTime(), nullable=False),
        sa.Column('recorded_at', UTCDateTime(), nullable=False))
    op.create_table(
        'activity_interest',
        sa.Column('kind', sa.String(16), primary_key=True),
        sa.Column('name', sa.String(64), primary_key=True))
    op.create_table(
        'journey',
        sa.Column('id', sa.Integer(), primary_key=True),
        sa.Column('name', sa.String(120), nullable=False, unique=True),
        sa.Column('status', sa.String(12), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.Column('priority', sa.Integer(), nullable=False),
        sa.Column('spec', JSONType, nullable=False),
        sa.Column('created_at', UTCDateTime(), nullable=False),
        sa.Column('created_by', sa.String(120), nullable=False),
        sa.Column('updated_at', UTCDateTime(), nullable=False),
        sa.Column('updated_by', sa.String(120), nullable=False))
    op.create_index('ix_journey_status', 'journey', ['status'])
    op.create_table(
        'journey_version',
        sa.Column('id', sa.Integer(), primary_key=True),
        sa.Column('journey_id', sa.Integer(), sa.ForeignKey('journey.id'), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.Column('status', sa.String(12), nullable=False),
        sa.Column('spec', JSONType, nullable=False),
        sa.Column('created_at', UTCDateTime(), nullable=False),
        sa.Column('created_by', sa.String(120), nullable=False),
        sa.UniqueConstraint('journey_id', 'version'))
    op.create_table(
        'journey_enrollment',
        sa.Column('id', sa.Integer(), primary_key=True),
        sa.Column('journey_id', sa.Integer(), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.Column('customer_id', sa.Integer(), nullable=False),
        sa.Column('status', sa.String(12), nullable=False),
        sa.Column('step_id', sa.String(40), nullable=True),
        sa.Column('seq', sa.Integer(), nullable=False),
        sa.Column('wake_at', UTCDateTime(), nullable=True),
        sa.Column('entry_key', sa.String(80), nullable=False),
        sa.Column('entered_at', UTCDateTime(), nullable=False),
        sa.Column('ended_at', UTCDateTime(), nullable=True),
        sa.Column('end_reason', sa.String(40), nullable=True),
        sa.Column('context', JSONType, nullable=False),
        sa.Column('updated_at', UTCDateTime(), nullable=False),
        sa.UniqueConstraint('journey_id', 'customer_id', 'entry_key', name='uq_journey_entry'))
    op.create_index('ix_journey_enrollment_due', 'journey_enrollment', ['status', 'wake_at'])
    op.create_index('ix_journey_enrollment_customer', 'journey_enrollment', ['customer_id'])
    op.create_table(
        'journey_step',
        sa.Column('id', sa.Integer(), primary_key=True),
        sa.Column('enrollment_id', sa.Integer(), nullable=False),
        sa.Column('journey_id', sa.Integer(), nullable=False),
        sa.Column('seq', sa.Integer(), nullable=False),
        sa.Column('step_id', sa.String(40), nullable=False),
        sa.Column('kind', sa.String(12), nullable=False),
        sa.Column('outcome', sa.String(48), nullable=False),
        sa.Column('reason', sa.String(40), nullable=True),
        sa.Column('message_id', sa.Integer(), nullable=True),
        sa.Column('at', UTCDateTime(), nullable=False),
        sa.UniqueConstraint('enrollment_id', 'seq', name='uq_journey_step'))
    op.create_index('ix_journey_step_journey', 'journey_step', ['journey_id', 'step_id'])


def downgrade() -> None:
    for table in ('journey_step', 'journey_enrollment', 'journey_version', 'journey', 'activity_interest',
                  'customer_activity'):
        op.drop_table(table)
