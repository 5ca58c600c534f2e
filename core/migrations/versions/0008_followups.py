"""Follow-ups from the Hub (notes, amendments, evidence, priority, cancel, reopen) and their files

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-08 01:45:00.000000
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import hubbridge.store

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table('followups',
    sa.Column('id', ID, autoincrement=True, nullable=False),
    sa.Column('hub_ref', sa.String(length=32), nullable=False),
    sa.Column('sequence', sa.Integer(), nullable=False),
    sa.Column('client_id', sa.String(length=64), nullable=True),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('channel', sa.String(length=16), nullable=False),
    sa.Column('payload', sa.JSON(), nullable=False),
    sa.Column('digest', sa.String(length=64), nullable=False),
    sa.Column('state', sa.String(length=12), nullable=False),
    sa.Column('via', sa.String(length=16), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', hubbridge.store.UtcDateTime(timezone=True), nullable=True),
    sa.Column('claimed_until', hubbridge.store.UtcDateTime(timezone=True), nullable=True),
    sa.Column('unknown_outcome', sa.Boolean(), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('backoffice_id', sa.String(length=128), nullable=True),
    sa.Column('created_at', hubbridge.store.UtcDateTime(timezone=True), nullable=False),
    sa.Column('delivered_at', hubbridge.store.UtcDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['hub_ref'], ['cases.hub_ref']),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('hub_ref', 'sequence', name='uq_followups_seq'),
    sa.UniqueConstraint('hub_ref', 'client_id', name='uq_followups_client_id'),
    )
    op.create_index('ix_followups_due', 'followups', ['state', 'next_attempt_at'])
    op.create_table('followup_files',
    sa.Column('id', ID, autoincrement=True, nullable=False),
    sa.Column('followup_id', ID, nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('filename', sa.String(length=200), nullable=False),
    sa.Column('content_type', sa.String(length=100), nullable=False),
    sa.Column('size', sa.Integer(), nullable=True),
    sa.Column('sha256', sa.String(length=64), nullable=True),
    sa.Column('url', sa.Text(), nullable=True),
    sa.Column('content', sa.LargeBinary(), nullable=True),
    sa.Column('erased_at', hubbridge.store.UtcDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['followup_id'], ['followups.id']),
    sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_followup_files_followup_id', 'followup_files', ['followup_id'])


def downgrade() -> None:
    op.drop_index('ix_followup_files_followup_id', table_name='followup_files')
    op.drop_table('followup_files')
    op.drop_index('ix_followups_due', table_name='followups')
    op.drop_table('followups')
