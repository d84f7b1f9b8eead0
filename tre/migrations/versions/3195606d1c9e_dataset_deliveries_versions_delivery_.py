"""dataset deliveries, versions, delivery rules and version pins

Every refresh of a dataset is a delivery, checked before anything else; an accepted one becomes
the next dataset version (ADR 0020). Projects follow the latest version unless pinned.

Revision ID: 3195606d1c9e
Revises: b3c1d2e4f5a6
Create Date: 2026-12-06 00:32:04.335744
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import tre.core.db

revision = '3195606d1c9e'
down_revision = 'b3c1d2e4f5a6'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('dataset_deliveries',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('dataset_id', sa.String(length=32), nullable=False),
    sa.Column('state', sa.String(length=20), nullable=False),
    sa.Column('source_name', sa.String(length=500), nullable=False),
    sa.Column('stored_path', sa.String(length=1000), nullable=True),
    sa.Column('source_sha256', sa.String(length=64), nullable=True),
    sa.Column('size_bytes', sa.BigInteger(), nullable=True),
    sa.Column('rows', sa.BigInteger(), nullable=True),
    sa.Column('dialect', sa.JSON(), nullable=True),
    sa.Column('report', sa.JSON(), nullable=True),
    sa.Column('problems', sa.JSON(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('version', sa.Integer(), nullable=True),
    sa.Column('job_id', sa.String(length=32), nullable=True),
    sa.Column('delivered_by', sa.String(length=32), nullable=True),
    sa.Column('received_at', tre.core.db.UTCDateTime(), nullable=False),
    sa.Column('finished_at', tre.core.db.UTCDateTime(), nullable=True),
    sa.CheckConstraint("(state = 'accepted') = (version IS NOT NULL)", name=op.f('ck_dataset_deliveries_version_when_accepted')),
    sa.CheckConstraint("(state IN ('accepted', 'quarantined', 'failed')) = (finished_at IS NOT NULL)", name=op.f('ck_dataset_deliveries_finished_when_final')),
    sa.CheckConstraint("state IN ('received', 'checking', 'accepted', 'quarantined', 'failed')", name=op.f('ck_dataset_deliveries_state_known')),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], name=op.f('fk_dataset_deliveries_dataset_id_datasets')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dataset_deliveries'))
    )
    with op.batch_alter_table('dataset_deliveries', schema=None) as batch_op:
        batch_op.create_index('ix_dataset_deliveries_dataset', ['dataset_id', 'received_at'], unique=False)

    op.create_table('dataset_delivery_rules',
    sa.Column('dataset_id', sa.String(length=32), nullable=False),
    sa.Column('rules', sa.JSON(), nullable=False),
    sa.Column('updated_by', sa.String(length=32), nullable=True),
    sa.Column('updated_at', tre.core.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], name=op.f('fk_dataset_delivery_rules_dataset_id_datasets')),
    sa.PrimaryKeyConstraint('dataset_id', name=op.f('pk_dataset_delivery_rules'))
    )
    op.create_table('dataset_version_pins',
    sa.Column('project_id', sa.String(length=32), nullable=False),
    sa.Column('dataset_id', sa.String(length=32), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('pinned_by', sa.String(length=32), nullable=True),
    sa.Column('pinned_at', tre.core.db.UTCDateTime(), nullable=False),
    sa.CheckConstraint('version >= 1', name=op.f('ck_dataset_version_pins_version_positive')),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], name=op.f('fk_dataset_version_pins_dataset_id_datasets')),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_dataset_version_pins_project_id_projects')),
    sa.PrimaryKeyConstraint('project_id', 'dataset_id', name=op.f('pk_dataset_version_pins'))
    )
    op.create_table('dataset_versions',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('dataset_id', sa.String(length=32), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('delivery_id', sa.String(length=32), nullable=False),
    sa.Column('source_location', sa.String(length=1000), nullable=False),
    sa.Column('source_sha256', sa.String(length=64), nullable=False),
    sa.Column('rows', sa.BigInteger(), nullable=False),
    sa.Column('created_at', tre.core.db.UTCDateTime(), nullable=False),
    sa.CheckConstraint('version >= 1', name=op.f('ck_dataset_versions_version_positive')),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], name=op.f('fk_dataset_versions_dataset_id_datasets')),
    sa.ForeignKeyConstraint(['delivery_id'], ['dataset_deliveries.id'], name=op.f('fk_dataset_versions_delivery_id_dataset_deliveries')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dataset_versions')),
    sa.UniqueConstraint('dataset_id', 'version', name=op.f('uq_dataset_versions_dataset_id_version')),
    sa.UniqueConstraint('delivery_id', name=op.f('uq_dataset_versions_delivery_id'))
    )


def downgrade() -> None:
    op.drop_table('dataset_versions')
    op.drop_table('dataset_version_pins')
    op.drop_table('dataset_delivery_rules')
    with op.batch_alter_table('dataset_deliveries', schema=None) as batch_op:
        batch_op.drop_index('ix_dataset_deliveries_dataset')

    op.drop_table('dataset_deliveries')
