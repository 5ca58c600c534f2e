"""SLA escalation sends: each warning and breach to each e-mail and webhook target, once, with retries

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-08 01:30:00.000000
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import hubbridge.store

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
WHEN = hubbridge.store.UtcDateTime(timezone=True)


def upgrade() -> None:
    op.create_table('sla_escalation_sends',
    sa.Column('id', ID, autoincrement=True, nullable=False),
    sa.Column('sweep_id', sa.BigInteger(), nullable=False),
    sa.Column('clock_id', sa.BigInteger(), nullable=False),
    sa.Column('hub_ref', sa.String(length=32), nullable=False),
    sa.Column('clock', sa.String(length=32), nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('service', sa.String(length=80), nullable=False),
    sa.Column('authority', sa.String(length=64), nullable=False),
    sa.Column('escalation', sa.String(length=64), nullable=False),
    sa.Column('target', sa.String(length=32), nullable=False),
    sa.Column('channel', sa.String(length=8), nullable=False),
    sa.Column('priority', sa.String(length=16), nullable=True),
    sa.Column('due_at', WHEN, nullable=True),
    sa.Column('fired_at', WHEN, nullable=False),
    sa.Column('state', sa.String(length=8), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', WHEN, nullable=False),
    sa.Column('claimed_until', WHEN, nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('sent_at', WHEN, nullable=True),
    sa.Column('dead_letter_id', sa.BigInteger(), nullable=True),
    sa.Column('created_at', WHEN, nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('sweep_id', 'clock_id', 'kind', 'escalation', 'target', name='uq_sla_escalation_sends_once'),
    )
    op.create_index('ix_sla_escalation_sends_due', 'sla_escalation_sends', ['state', 'next_attempt_at'])
    op.create_index('ix_sla_escalation_sends_hub_ref', 'sla_escalation_sends', ['hub_ref'])


def downgrade() -> None:
    op.drop_index('ix_sla_escalation_sends_hub_ref', table_name='sla_escalation_sends')
    op.drop_index('ix_sla_escalation_sends_due', table_name='sla_escalation_sends')
    op.drop_table('sla_escalation_sends')
