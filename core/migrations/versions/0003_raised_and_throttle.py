"""Back-office-raised case outbox; per-connector rate and concurrency limits

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 10:00:00.000000
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import hubbridge.store

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('raised_cases',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('connector', sa.String(length=64), nullable=False),
    sa.Column('backoffice_ref', sa.String(length=128), nullable=False),
    sa.Column('state', sa.String(length=12), nullable=False),
    sa.Column('hub_ref', sa.String(length=32), nullable=True),
    sa.Column('service_code', sa.String(length=100), nullable=True),
    sa.Column('updates', sa.JSON(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', hubbridge.store.UtcDateTime(timezone=True), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('created_at', hubbridge.store.UtcDateTime(timezone=True), nullable=False),
    sa.Column('seen_at', hubbridge.store.UtcDateTime(timezone=True), nullable=False),
    sa.Column('raised_at', hubbridge.store.UtcDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('connector', 'backoffice_ref', name='uq_raised_cases_backoffice')
    )
    with op.batch_alter_table('raised_cases', schema=None) as batch_op:
        batch_op.create_index('ix_raised_cases_due', ['connector', 'state', 'next_attempt_at'], unique=False)
    op.create_table('connector_throttle',
    sa.Column('connector', sa.String(length=64), nullable=False),
    sa.Column('tat', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('connector')
    )
    op.create_table('connector_slots',
    sa.Column('connector', sa.String(length=64), nullable=False),
    sa.Column('slot', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('holder', sa.String(length=64), nullable=True),
    sa.Column('lease_until', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('connector', 'slot')
    )


def downgrade() -> None:
    op.drop_table('connector_slots')
    op.drop_table('connector_throttle')
    with op.batch_alter_table('raised_cases', schema=None) as batch_op:
        batch_op.drop_index('ix_raised_cases_due')
    op.drop_table('raised_cases')
