"""Rejected intake bodies counted by digest; console sessions revoked at logout

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 23:20:00.000000
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import hubbridge.store

revision = '0006'
# chained after 0005 so the store has one head today; the lead may renumber it
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('dead_letters') as batch:
        batch.add_column(sa.Column('body_digest', sa.String(length=64), nullable=True))
        batch.add_column(sa.Column('seen_count', sa.Integer(), nullable=False, server_default='1'))
        batch.add_column(sa.Column('last_seen_at', hubbridge.store.UtcDateTime(timezone=True), nullable=True))
        batch.create_index('ix_dead_letters_body_digest', ['body_digest'])
    op.create_table('console_revoked_sessions',
    sa.Column('session_digest', sa.String(length=64), nullable=False),
    sa.Column('user', sa.String(length=64), nullable=False),
    sa.Column('revoked_at', hubbridge.store.UtcDateTime(timezone=True), nullable=False),
    sa.Column('expires_at', hubbridge.store.UtcDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('session_digest')
    )


def downgrade() -> None:
    op.drop_table('console_revoked_sessions')
    with op.batch_alter_table('dead_letters') as batch:
        batch.drop_index('ix_dead_letters_body_digest')
        batch.drop_column('last_seen_at')
        batch.drop_column('seen_count')
        batch.drop_column('body_digest')
