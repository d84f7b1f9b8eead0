"""token generation of each person, and role grants a second administrator approves

A password change or reset (with its MFA reset) and a deactivation or reactivation bump
``users.token_generation``; an API token minted in an older generation is refused (ADR 0010).
Existing accounts start at 0; tokens minted before this revision carry no generation and are
refused, so a workspace started before it needs a restart.

``role_grants`` holds the roles that touch data which one administrator asked for and a second
must approve (tre/core/roles.py).

Revision ID: b3c1d2e4f5a6
Revises: 708259946e60
Create Date: 2026-12-05 21:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import tre.core.db

revision = 'b3c1d2e4f5a6'
down_revision = '708259946e60'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('token_generation', sa.Integer(), server_default='0', nullable=False))
    op.create_table('role_grants',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('user_id', sa.String(length=32), nullable=False),
    sa.Column('role', sa.String(length=50), nullable=False),
    sa.Column('requested_by', sa.String(length=32), nullable=False),
    sa.Column('requested_at', tre.core.db.UTCDateTime(), nullable=False),
    sa.Column('state', sa.String(length=20), nullable=False),
    sa.Column('decided_by', sa.String(length=32), nullable=True),
    sa.Column('decided_at', tre.core.db.UTCDateTime(), nullable=True),
    sa.CheckConstraint("role IN ('researcher', 'dac_member', 'dac_chair', 'output_checker', 'data_custodian', 'administrator', 'auditor')", name=op.f('ck_role_grants_role_known')),
    sa.CheckConstraint("state IN ('pending', 'approved', 'refused')", name=op.f('ck_role_grants_state_known')),
    sa.CheckConstraint("(decided_by IS NULL) = (state = 'pending')", name=op.f('ck_role_grants_decided_unless_pending')),
    sa.CheckConstraint("(decided_at IS NULL) = (state = 'pending')", name=op.f('ck_role_grants_decided_at_unless_pending')),
    sa.CheckConstraint("state <> 'approved' OR (decided_by <> requested_by AND decided_by <> user_id)", name=op.f('ck_role_grants_approved_by_someone_else')),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_role_grants_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_role_grants'))
    )
    with op.batch_alter_table('role_grants', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_role_grants_user_id'), ['user_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('role_grants', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_role_grants_user_id'))
    op.drop_table('role_grants')
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_column('token_generation')
