"""Privacy: the audit of exports, erasures and retention runs; the items already erased

Revision ID: 0005
Revises: 0003
Create Date: 2026-12-07 23:00:00.000000
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import hubbridge.store

revision = '0005'
# the lead rechains this to '0004' when the other helper's 0004 lands
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('privacy_actions',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('action', sa.String(length=16), nullable=False),
    sa.Column('subject', sa.String(length=24), nullable=True),
    sa.Column('hub_refs', sa.JSON(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('by', sa.String(length=128), nullable=False),
    sa.Column('at', hubbridge.store.UtcDateTime(timezone=True), nullable=False),
    sa.Column('counts', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('privacy_erased',
    sa.Column('kind', sa.String(length=12), nullable=False),
    sa.Column('key', sa.String(length=140), nullable=False),
    sa.Column('erased_at', hubbridge.store.UtcDateTime(timezone=True), nullable=False),
    sa.Column('action_id', sa.BigInteger(), nullable=True),
    sa.PrimaryKeyConstraint('kind', 'key')
    )


def downgrade() -> None:
    op.drop_table('privacy_erased')
    op.drop_table('privacy_actions')
