"""browser uploads of deliveries, and where each delivery came from

``dataset_uploads`` holds a file a custodian is sending in chunks (its bytes are only in the
identifiable zone); ``dataset_deliveries.origin`` says whether a delivery came from the landing
folder, an upload or a named database source.

Revision ID: e1f2a3b4c5d6
Revises: c7d8e9f0a1b2
Create Date: 2026-12-06 04:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import tre.core.db

revision = 'e1f2a3b4c5d6'
down_revision = 'c7d8e9f0a1b2'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('dataset_deliveries', schema=None) as batch_op:
        batch_op.add_column(sa.Column('origin', sa.String(length=20), server_default='landing', nullable=False))
        batch_op.create_check_constraint(op.f('ck_dataset_deliveries_origin_known'),
                                         "origin IN ('landing', 'upload', 'database')")
    op.create_table('dataset_uploads',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('dataset_id', sa.String(length=32), nullable=True),
    sa.Column('register', sa.JSON(), nullable=True),
    sa.Column('created_by', sa.String(length=32), nullable=False),
    sa.Column('file_name', sa.String(length=200), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('upload_offset', sa.BigInteger(), nullable=False),
    sa.Column('expected_sha256', sa.String(length=64), nullable=True),
    sa.Column('sha256', sa.String(length=64), nullable=True),
    sa.Column('dialect', sa.JSON(), nullable=True),
    sa.Column('state', sa.String(length=20), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('delivery_id', sa.String(length=32), nullable=True),
    sa.Column('created_at', tre.core.db.UTCDateTime(), nullable=False),
    sa.Column('expires_at', tre.core.db.UTCDateTime(), nullable=False),
    sa.Column('closed_at', tre.core.db.UTCDateTime(), nullable=True),
    sa.CheckConstraint("state IN ('open', 'finished', 'expired', 'rejected')", name=op.f('ck_dataset_uploads_state_known')),
    sa.CheckConstraint('size > 0 AND upload_offset >= 0 AND upload_offset <= size', name=op.f('ck_dataset_uploads_offset_in_size')),
    sa.CheckConstraint("(state = 'open') = (closed_at IS NULL)", name=op.f('ck_dataset_uploads_closed_when_not_open')),
    sa.CheckConstraint("(state = 'finished') = (delivery_id IS NOT NULL)", name=op.f('ck_dataset_uploads_delivery_when_finished')),
    sa.CheckConstraint('dataset_id IS NOT NULL OR register IS NOT NULL', name=op.f('ck_dataset_uploads_names_its_dataset')),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], name=op.f('fk_dataset_uploads_dataset_id_datasets')),
    sa.ForeignKeyConstraint(['delivery_id'], ['dataset_deliveries.id'], name=op.f('fk_dataset_uploads_delivery_id_dataset_deliveries')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dataset_uploads'))
    )
    with op.batch_alter_table('dataset_uploads', schema=None) as batch_op:
        batch_op.create_index('ix_dataset_uploads_open', ['state', 'expires_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('dataset_uploads', schema=None) as batch_op:
        batch_op.drop_index('ix_dataset_uploads_open')
    op.drop_table('dataset_uploads')
    with op.batch_alter_table('dataset_deliveries', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_dataset_deliveries_origin_known'), type_='check')
        batch_op.drop_column('origin')
