"""Console case views: which console user looked at which case, and when

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 23:30:00.000000
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import hubbridge.store

revision = '0007'
# chained after 0006, the newest revision when this was written; the lead may renumber it
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('console_case_views',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('user', sa.String(length=64), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('hub_ref', sa.String(length=128), nullable=False),
    sa.Column('page', sa.String(length=32), nullable=False),
    sa.Column('viewed_at', hubbridge.store.UtcDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_console_case_views_hub_ref', 'console_case_views', ['hub_ref'])


def downgrade() -> None:
    op.drop_index('ix_console_case_views_hub_ref', table_name='console_case_views')
    op.drop_table('console_case_views')
