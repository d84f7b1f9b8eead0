"""person index, linkage review and the linkage officer role

``linkage_runs``, ``person_index_entries``, ``linkage_candidates`` and ``linkage_decisions`` hold
the person index (pseudonymisation/person_index.py, ADR 0021). The role checks of ``user_roles``
and ``role_grants`` learn the new ``linkage_officer`` role.

Revision ID: dfa7c7132c7c
Revises: c7e5a1d9f3b2
Create Date: 2026-12-06 00:24:20.236893
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import tre.core.db

revision = 'dfa7c7132c7c'
down_revision = 'c7e5a1d9f3b2'
branch_labels = None
depends_on = None

_OLD_ROLES = ('researcher', 'dac_member', 'dac_chair', 'output_checker', 'data_custodian', 'administrator',
              'auditor')
_NEW_ROLES = (*_OLD_ROLES, 'linkage_officer')


def _role_checks(roles: tuple[str, ...]) -> None:
    for table in ('user_roles', 'role_grants'):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_constraint(op.f(f'ck_{table}_role_known'), type_='check')
            batch_op.create_check_constraint(op.f(f'ck_{table}_role_known'), f"role IN {roles!r}")


def upgrade() -> None:
    _role_checks(_NEW_ROLES)
    op.create_table('linkage_runs',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('inputs_sha256', sa.String(length=64), nullable=False),
    sa.Column('state', sa.String(length=20), nullable=False),
    sa.Column('job_id', sa.String(length=32), nullable=True),
    sa.Column('settings', sa.JSON(), nullable=False),
    sa.Column('requested_by', sa.String(length=32), nullable=True),
    sa.Column('requested_at', tre.core.db.UTCDateTime(), nullable=False),
    sa.Column('finished_at', tre.core.db.UTCDateTime(), nullable=True),
    sa.Column('quality', sa.JSON(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.CheckConstraint("(state IN ('succeeded', 'failed')) = (finished_at IS NOT NULL)", name=op.f('ck_linkage_runs_finished_when_final')),
    sa.CheckConstraint("state IN ('queued', 'running', 'succeeded', 'failed')", name=op.f('ck_linkage_runs_state_known')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_linkage_runs'))
    )
    with op.batch_alter_table('linkage_runs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_linkage_runs_inputs_sha256'), ['inputs_sha256'], unique=False)
        batch_op.create_index('ix_linkage_runs_state', ['state', 'finished_at'], unique=False)

    op.create_table('linkage_candidates',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('run_id', sa.String(length=32), nullable=False),
    sa.Column('left_source', sa.String(length=100), nullable=False),
    sa.Column('left_record_id', sa.String(length=200), nullable=False),
    sa.Column('right_source', sa.String(length=100), nullable=False),
    sa.Column('right_record_id', sa.String(length=200), nullable=False),
    sa.Column('match_probability', sa.Float(), nullable=False),
    sa.Column('match_weight', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['linkage_runs.id'], name=op.f('fk_linkage_candidates_run_id_linkage_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_linkage_candidates')),
    sa.UniqueConstraint('run_id', 'left_source', 'left_record_id', 'right_source', 'right_record_id', name='uq_linkage_candidates_pair')
    )
    with op.batch_alter_table('linkage_candidates', schema=None) as batch_op:
        batch_op.create_index('ix_linkage_candidates_run', ['run_id', 'match_probability'], unique=False)

    op.create_table('linkage_decisions',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('left_source', sa.String(length=100), nullable=False),
    sa.Column('left_record_id', sa.String(length=200), nullable=False),
    sa.Column('right_source', sa.String(length=100), nullable=False),
    sa.Column('right_record_id', sa.String(length=200), nullable=False),
    sa.Column('decision', sa.String(length=10), nullable=False),
    sa.Column('rationale', sa.Text(), nullable=False),
    sa.Column('candidate_id', sa.String(length=32), nullable=True),
    sa.Column('decided_by', sa.String(length=32), nullable=False),
    sa.Column('decided_at', tre.core.db.UTCDateTime(), nullable=False),
    sa.CheckConstraint("decision IN ('match', 'no_match')", name=op.f('ck_linkage_decisions_decision_known')),
    sa.ForeignKeyConstraint(['decided_by'], ['users.id'], name=op.f('fk_linkage_decisions_decided_by_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_linkage_decisions')),
    sa.UniqueConstraint('left_source', 'left_record_id', 'right_source', 'right_record_id', name='uq_linkage_decisions_pair')
    )
    op.create_table('person_index_entries',
    sa.Column('run_id', sa.String(length=32), nullable=False),
    sa.Column('source', sa.String(length=100), nullable=False),
    sa.Column('record_id', sa.String(length=200), nullable=False),
    sa.Column('person_id', sa.Integer(), nullable=False),
    sa.Column('person_pseudonym', sa.LargeBinary(length=16), nullable=False),
    sa.Column('method', sa.String(length=20), nullable=False),
    sa.Column('match_probability', sa.Float(), nullable=True),
    sa.CheckConstraint("(method = 'singleton') = (match_probability IS NULL)", name=op.f('ck_person_index_entries_probability_unless_singleton')),
    sa.CheckConstraint("method IN ('deterministic', 'probabilistic', 'clerical', 'singleton')", name=op.f('ck_person_index_entries_method_known')),
    sa.ForeignKeyConstraint(['run_id'], ['linkage_runs.id'], name=op.f('fk_person_index_entries_run_id_linkage_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'source', 'record_id', name=op.f('pk_person_index_entries'))
    )
    with op.batch_alter_table('person_index_entries', schema=None) as batch_op:
        batch_op.create_index('ix_person_index_entries_person', ['run_id', 'person_id'], unique=False)



def downgrade() -> None:
    op.execute("DELETE FROM user_roles WHERE role = 'linkage_officer'")
    op.execute("DELETE FROM role_grants WHERE role = 'linkage_officer'")
    _role_checks(_OLD_ROLES)
    with op.batch_alter_table('person_index_entries', schema=None) as batch_op:
        batch_op.drop_index('ix_person_index_entries_person')

    op.drop_table('person_index_entries')
    op.drop_table('linkage_decisions')
    with op.batch_alter_table('linkage_candidates', schema=None) as batch_op:
        batch_op.drop_index('ix_linkage_candidates_run')

    op.drop_table('linkage_candidates')
    with op.batch_alter_table('linkage_runs', schema=None) as batch_op:
        batch_op.drop_index('ix_linkage_runs_state')
        batch_op.drop_index(batch_op.f('ix_linkage_runs_inputs_sha256'))

    op.drop_table('linkage_runs')
