"""each project's privacy budget and the ledger of its spends and refunds

``project_privacy_budgets`` holds the total epsilon a project may spend on differentially private
releases (set by its DAC, else the policy's default); ``privacy_budget_entries`` one row per spend (a
DP file released) or refund. What is left is derived from the rows, never stored.

Revision ID: c7d8e9f0a1b2
Revises: dfa7c7132c7c
Create Date: 2026-12-06 01:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import tre.core.db

revision = 'c7d8e9f0a1b2'
down_revision = 'dfa7c7132c7c'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('project_privacy_budgets',
    sa.Column('project_id', sa.String(length=32), nullable=False),
    sa.Column('total_epsilon', sa.Double(), nullable=False),
    sa.Column('set_by', sa.String(length=32), nullable=True),
    sa.Column('set_at', tre.core.db.UTCDateTime(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.CheckConstraint('total_epsilon >= 0', name=op.f('ck_project_privacy_budgets_total_not_negative')),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_project_privacy_budgets_project_id_projects'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('project_id', name=op.f('pk_project_privacy_budgets'))
    )
    op.create_table('privacy_budget_entries',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('project_id', sa.String(length=32), nullable=False),
    sa.Column('kind', sa.String(length=10), nullable=False),
    sa.Column('epsilon', sa.Double(), nullable=False),
    sa.Column('request_id', sa.String(length=32), nullable=True),
    sa.Column('file_id', sa.String(length=32), nullable=True),
    sa.Column('actor_id', sa.String(length=32), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('created_at', tre.core.db.UTCDateTime(), nullable=False),
    sa.CheckConstraint("kind IN ('spend', 'refund')", name=op.f('ck_privacy_budget_entries_kind_known')),
    sa.CheckConstraint('epsilon > 0', name=op.f('ck_privacy_budget_entries_epsilon_positive')),
    sa.CheckConstraint("kind = 'refund' OR file_id IS NOT NULL", name=op.f('ck_privacy_budget_entries_spend_names_its_file')),
    sa.CheckConstraint("kind = 'spend' OR length(trim(reason)) > 0", name=op.f('ck_privacy_budget_entries_refund_has_reason')),
    sa.ForeignKeyConstraint(['actor_id'], ['users.id'], name=op.f('fk_privacy_budget_entries_actor_id_users')),
    sa.ForeignKeyConstraint(['project_id'], ['project_privacy_budgets.project_id'], name=op.f('fk_privacy_budget_entries_project_id_project_privacy_budgets'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_privacy_budget_entries')),
    sa.UniqueConstraint('kind', 'file_id', name=op.f('uq_privacy_budget_entries_kind_file_id'))
    )
    with op.batch_alter_table('privacy_budget_entries', schema=None) as batch_op:
        batch_op.create_index('ix_privacy_budget_entries_project', ['project_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('privacy_budget_entries', schema=None) as batch_op:
        batch_op.drop_index('ix_privacy_budget_entries_project')
    op.drop_table('privacy_budget_entries')
    op.drop_table('project_privacy_budgets')
