"""answers stored for every POST made with an Idempotency-Key (the ingestion API's own table goes)

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-04 02:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op
from kit.types import JSONType, UTCDateTime

revision: str = '0019'
down_revision: str | None = '0018'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'idempotency_record',
        sa.Column('identity', sa.String(64), primary_key=True),
        sa.Column('request_hash', sa.String(64), nullable=True),
        sa.Column('status', sa.Integer(), nullable=True),
        sa.Column('headers', JSONType, nullable=True),
        sa.Column('body', sa.LargeBinary(), nullable=True),
        sa.Column('created_at', UTCDateTime(), nullable=False),
        sa.Column('expires_at', UTCDateTime(), nullable=False),
    )
    op.create_index('ix_idempotency_record_expires_at', 'idempotency_record', ['expires_at'])
    op.drop_index('ix_idempotent_request_created_at', table_name='idempotent_request')
    op.drop_table('idempotent_request')


def downgrade() -> None:
    op.create_table(
        'idempotent_request',
        sa.Column('key', sa.String(64), primary_key=True),
        sa.Column('key_id', sa.Integer(), primary_key=True),
        sa.Column('route', sa.String(100), nullable=False),
        sa.Column('body_digest', sa.String(64), nullable=False),
        sa.Column('status_code', sa.Integer(), nullable=False),
        sa.Column('response', JSONType, nullable=False),
        sa.Column('created_at', UTCDateTime(), nullable=False),
    )
    op.create_index('ix_idempotent_request_created_at', 'idempotent_request', ['created_at'])
    op.drop_index('ix_idempotency_record_expires_at', table_name='idempotency_record')
    op.drop_table('idempotency_record')
