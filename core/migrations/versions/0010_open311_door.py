"""The Open311 front door: per-client reference serials and the requests clients posted (idempotency, tokens)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-08 01:10:00.000000
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import hubbridge.store

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('open311_serials',
    sa.Column('prefix', sa.String(length=2), nullable=False),
    sa.Column('year', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('last', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('prefix', 'year')
    )
    op.create_table('open311_requests',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('client', sa.String(length=64), nullable=False),
    sa.Column('client_request_id', sa.String(length=128), nullable=True),
    sa.Column('token', sa.String(length=64), nullable=False),
    sa.Column('hub_ref', sa.String(length=32), nullable=False),
    sa.Column('service_code', sa.String(length=80), nullable=False),
    sa.Column('state', sa.String(length=12), nullable=False),
    sa.Column('created_at', hubbridge.store.UtcDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('client', 'client_request_id', name='uq_open311_requests_client_id'),
    sa.UniqueConstraint('hub_ref'),
    sa.UniqueConstraint('token')
    )


def downgrade() -> None:
    op.drop_table('open311_requests')
    op.drop_table('open311_serials')
