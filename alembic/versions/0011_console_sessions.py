"""console sessions kept server-side (sign-out revokes them)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01 21:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

import kit.types
from alembic import op

revision: str = '0011'
down_revision: str | None = '0010'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('console_session',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('key_id', sa.Integer(), nullable=False),
    sa.Column('created_at', kit.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('expires_at', kit.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', kit.types.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('console_session', schema=None) as batch_op:
        batch_op.create_index('ix_console_session_key_id', ['key_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('console_session', schema=None) as batch_op:
        batch_op.drop_index('ix_console_session_key_id')
    op.drop_table('console_session')
