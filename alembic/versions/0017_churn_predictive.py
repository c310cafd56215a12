"""churn models stored in the database; predictive fields and the risk level on each score; kept predictions
remember whether the customer was flagged

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-03 16:00:00
"""

from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa

from alembic import op
from kit.types import UTCDateTime

revision: str = '0017'
down_revision: str | None = '0016'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'churn_model_artifact',
        sa.Column('model_id', sa.Integer(), sa.ForeignKey('churn_model.id', ondelete='CASCADE'), primary_key=True),
        sa.Column('content', sa.Text(), nullable=False),
    )
    # Models trained before this revision live in files: copy the ones this host can read into the table.
    bind = op.get_bind()
    for model_id, artifact in bind.execute(sa.text("SELECT id, artifact FROM churn_model")).all():
        path = Path(artifact)
        if artifact != 'db' and path.is_file():
            bind.execute(sa.text("INSERT INTO churn_model_artifact (model_id, content) VALUES (:id, :content)"),
                         {"id": model_id, "content": path.read_text()})
            bind.execute(sa.text("UPDATE churn_model SET artifact = 'db' WHERE id = :id"), {"id": model_id})
    with op.batch_alter_table('churn_score') as batch:
        batch.add_column(sa.Column('risk_level', sa.String(8), nullable=True))
        batch.add_column(sa.Column('p_alive', sa.Float(), nullable=True))
        batch.add_column(sa.Column('expected_orders_90d', sa.Float(), nullable=True))
        batch.add_column(sa.Column('expected_orders_365d', sa.Float(), nullable=True))
        batch.add_column(sa.Column('predicted_clv_12m', sa.Float(), nullable=True))
        batch.add_column(sa.Column('expected_next_order_at', UTCDateTime(), nullable=True))
    with op.batch_alter_table('churn_prediction') as batch:
        batch.add_column(sa.Column('at_risk', sa.Boolean(), nullable=True))
    # The nightly rewrite of ~150k scores paid 2 s of 7 for the row-by-row foreign-key check (customers are never
    # deleted; the bulk fact tables carry none either). SQLite's is unnamed: a naming convention finds it.
    to_customer = [fk['name'] or 'fk_churn_score_customer_id_customer'
                   for fk in sa.inspect(bind).get_foreign_keys('churn_score') if fk['referred_table'] == 'customer']
    with op.batch_alter_table('churn_score', naming_convention={
            'fk': 'fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s'}) as batch:
        for name in to_customer:
            batch.drop_constraint(name, type_='foreignkey')
    op.create_index('ix_churn_score_predicted_clv_12m', 'churn_score', ['predicted_clv_12m'])
    op.create_index('ix_churn_score_expected_next_order_at', 'churn_score', ['expected_next_order_at'])


def downgrade() -> None:
    for name in ('expected_next_order_at', 'predicted_clv_12m'):
        op.drop_index(f'ix_churn_score_{name}', 'churn_score')
    with op.batch_alter_table('churn_score') as batch:
        batch.create_foreign_key('churn_score_customer_id_fkey', 'customer', ['customer_id'], ['id'])
    with op.batch_alter_table('churn_score') as batch:
        for name in ('expected_next_order_at', 'predicted_clv_12m', 'expected_orders_365d', 'expected_orders_90d',
                     'p_alive', 'risk_level'):
            batch.drop_column(name)
    with op.batch_alter_table('churn_prediction') as batch:
        batch.drop_column('at_risk')
    op.drop_table('churn_model_artifact')
