"""declarations of a conflict of interest withdrawn as made in error

``withdrawn_conflicts`` keeps each declaration a committee member withdrew from an application
version (when and why it was declared, when and why it was withdrawn, and whether the chair had
assigned the member), written once by ``Committee.withdraw_conflict`` (ADR 0065). The declaration
itself leaves ``review_assignments``.

Revision ID: d4e5f6a7b8c9
Revises: a9b8c7d6e5f4
Create Date: 2026-12-07 05:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import tre.core.db

revision = 'd4e5f6a7b8c9'
down_revision = 'a9b8c7d6e5f4'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('withdrawn_conflicts',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('version_id', sa.String(length=32), nullable=False),
    sa.Column('reviewer_id', sa.String(length=32), nullable=False),
    sa.Column('while_assigned', sa.Boolean(), nullable=False),
    sa.Column('declared_at', tre.core.db.UTCDateTime(), nullable=False),
    sa.Column('declared_reason', sa.Text(), nullable=False),
    sa.Column('withdrawn_at', tre.core.db.UTCDateTime(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.CheckConstraint('length(trim(declared_reason)) > 0', name=op.f('ck_withdrawn_conflicts_declared_reason_required')),
    sa.CheckConstraint('length(trim(reason)) > 0', name=op.f('ck_withdrawn_conflicts_reason_required')),
    sa.ForeignKeyConstraint(['reviewer_id'], ['users.id'], name=op.f('fk_withdrawn_conflicts_reviewer_id_users')),
    sa.ForeignKeyConstraint(['version_id'], ['application_versions.id'], name=op.f('fk_withdrawn_conflicts_version_id_application_versions'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_withdrawn_conflicts'))
    )
    with op.batch_alter_table('withdrawn_conflicts', schema=None) as batch_op:
        batch_op.create_index('ix_withdrawn_conflicts_version', ['version_id', 'withdrawn_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('withdrawn_conflicts', schema=None) as batch_op:
        batch_op.drop_index('ix_withdrawn_conflicts_version')
    op.drop_table('withdrawn_conflicts')
