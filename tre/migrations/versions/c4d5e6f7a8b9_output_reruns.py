"""output_reruns: the code a round of an output request was submitted with, and its re-run (issue 24)

Revision ID: c4d5e6f7a8b9
Revises: 3195606d1c9e
Create Date: 2026-12-06 00:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import tre.core.db

revision = 'c4d5e6f7a8b9'
down_revision = '3195606d1c9e'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('output_reruns',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('request_id', sa.String(length=32), nullable=False),
    sa.Column('round', sa.Integer(), nullable=False),
    sa.Column('code_path', sa.String(length=300), nullable=False),
    sa.Column('code_kind', sa.String(length=20), nullable=False),
    sa.Column('code_sha256', sa.String(length=64), nullable=False),
    sa.Column('code_bytes', sa.Integer(), nullable=False),
    sa.Column('extract_version', sa.String(length=64), nullable=True),
    sa.Column('state', sa.String(length=20), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('log', sa.JSON(), nullable=False),
    sa.Column('files', sa.JSON(), nullable=False),
    sa.Column('timings', sa.JSON(), nullable=False),
    sa.Column('job_id', sa.String(length=32), nullable=True),
    sa.Column('created_at', tre.core.db.UTCDateTime(), nullable=False),
    sa.Column('finished_at', tre.core.db.UTCDateTime(), nullable=True),
    sa.CheckConstraint("state IN ('pending', 'done', 'failed')", name=op.f('ck_output_reruns_rerun_state_known')),
    sa.CheckConstraint("code_kind IN ('notebook', 'script')", name=op.f('ck_output_reruns_code_kind_known')),
    sa.CheckConstraint("(state = 'pending') = (finished_at IS NULL)", name=op.f('ck_output_reruns_finished_when_not_pending')),
    sa.CheckConstraint("state <> 'failed' OR length(trim(reason)) > 0", name=op.f('ck_output_reruns_failure_has_reason')),
    sa.ForeignKeyConstraint(['request_id'], ['output_requests.id'], name=op.f('fk_output_reruns_request_id_output_requests'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_output_reruns')),
    sa.UniqueConstraint('request_id', 'round', name=op.f('uq_output_reruns_request_id_round'))
    )
    with op.batch_alter_table('output_reruns', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_output_reruns_request_id'), ['request_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('output_reruns', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_output_reruns_request_id'))
    op.drop_table('output_reruns')
