"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-23 18:20:40.466609
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import tre.core.db
from tre.core.audit import append_only_ddl

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('audit_events',
    sa.Column('seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('occurred_at', tre.core.db.UTCDateTime(), nullable=False),
    sa.Column('actor_id', sa.String(length=64), nullable=True),
    sa.Column('action', sa.String(length=100), nullable=False),
    sa.Column('outcome', sa.String(length=20), nullable=False),
    sa.Column('target_type', sa.String(length=50), nullable=True),
    sa.Column('target_id', sa.String(length=64), nullable=True),
    sa.Column('project_id', sa.String(length=64), nullable=True),
    sa.Column('request_id', sa.String(length=64), nullable=True),
    sa.Column('detail', sa.JSON(), nullable=False),
    sa.Column('prev_hash', sa.String(length=64), nullable=False),
    sa.Column('chain_hash', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('seq', name=op.f('pk_audit_events')),
    sa.UniqueConstraint('chain_hash', name=op.f('uq_audit_events_chain_hash'))
    )
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.create_index('ix_audit_events_action', ['action'], unique=False)
        batch_op.create_index('ix_audit_events_actor_time', ['actor_id', 'occurred_at'], unique=False)
        batch_op.create_index('ix_audit_events_project_time', ['project_id', 'occurred_at'], unique=False)

    op.create_table('jobs',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('kind', sa.String(length=100), nullable=False),
    sa.Column('queue', sa.String(length=50), nullable=False),
    sa.Column('idempotency_key', sa.String(length=255), nullable=False),
    sa.Column('payload', sa.JSON(), nullable=False),
    sa.Column('state', sa.String(length=20), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('max_attempts', sa.Integer(), nullable=False),
    sa.Column('progress', sa.Double(), nullable=False),
    sa.Column('progress_message', sa.String(length=500), nullable=False),
    sa.Column('lease_owner', sa.String(length=64), nullable=True),
    sa.Column('lease_expires_at', tre.core.db.UTCDateTime(), nullable=True),
    sa.Column('last_sent_at', tre.core.db.UTCDateTime(), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('result', sa.JSON(), nullable=True),
    sa.Column('created_at', tre.core.db.UTCDateTime(), nullable=False),
    sa.Column('started_at', tre.core.db.UTCDateTime(), nullable=True),
    sa.Column('finished_at', tre.core.db.UTCDateTime(), nullable=True),
    sa.CheckConstraint("(state = 'running') = (lease_owner IS NOT NULL)", name=op.f('ck_jobs_lease_only_while_running')),
    sa.CheckConstraint("(state IN ('succeeded', 'failed')) = (finished_at IS NOT NULL)", name=op.f('ck_jobs_finished_when_final')),
    sa.CheckConstraint("state IN ('queued', 'running', 'succeeded', 'failed')", name=op.f('ck_jobs_state_known')),
    sa.CheckConstraint('attempts >= 0 AND attempts <= max_attempts', name=op.f('ck_jobs_attempts_bounded')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_jobs')),
    sa.UniqueConstraint('idempotency_key', name=op.f('uq_jobs_idempotency_key'))
    )
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.create_index('ix_jobs_state_lease', ['state', 'lease_expires_at'], unique=False)

    op.create_table('token_uses',
    sa.Column('jti', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('expires_at', tre.core.db.UTCDateTime(), nullable=False),
    sa.Column('recorded_at', tre.core.db.UTCDateTime(), nullable=False),
    sa.CheckConstraint("kind IN ('revoked', 'consumed')", name=op.f('ck_token_uses_kind_known')),
    sa.PrimaryKeyConstraint('jti', name=op.f('pk_token_uses'))
    )
    op.create_table('users',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('email', sa.String(length=320), nullable=False),
    sa.Column('display_name', sa.String(length=200), nullable=False),
    sa.Column('password_hash', sa.String(length=255), nullable=True),
    sa.Column('is_active', sa.Boolean(), nullable=False),
    sa.Column('mfa_secret_sealed', sa.LargeBinary(), nullable=True),
    sa.Column('mfa_enrolled_at', tre.core.db.UTCDateTime(), nullable=True),
    sa.Column('mfa_last_step', sa.Integer(), nullable=True),
    sa.Column('failed_login_count', sa.Integer(), nullable=False),
    sa.Column('locked_until', tre.core.db.UTCDateTime(), nullable=True),
    sa.Column('session_epoch', sa.Integer(), nullable=False),
    sa.Column('created_at', tre.core.db.UTCDateTime(), nullable=False),
    sa.Column('last_login_at', tre.core.db.UTCDateTime(), nullable=True),
    sa.CheckConstraint('email = lower(email)', name=op.f('ck_users_email_lowercase')),
    sa.CheckConstraint('failed_login_count >= 0', name=op.f('ck_users_failures_non_negative')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_users')),
    sa.UniqueConstraint('email', name=op.f('uq_users_email'))
    )
    op.create_table('password_reset_links',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('user_id', sa.String(length=32), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('issued_by', sa.String(length=32), nullable=False),
    sa.Column('expires_at', tre.core.db.UTCDateTime(), nullable=False),
    sa.Column('used_at', tre.core.db.UTCDateTime(), nullable=True),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_password_reset_links_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_password_reset_links')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_password_reset_links_token_hash'))
    )
    with op.batch_alter_table('password_reset_links', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_password_reset_links_user_id'), ['user_id'], unique=False)

    op.create_table('personal_api_tokens',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('user_id', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('lookup_prefix', sa.String(length=32), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('created_at', tre.core.db.UTCDateTime(), nullable=False),
    sa.Column('expires_at', tre.core.db.UTCDateTime(), nullable=False),
    sa.Column('revoked_at', tre.core.db.UTCDateTime(), nullable=True),
    sa.Column('last_used_at', tre.core.db.UTCDateTime(), nullable=True),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_personal_api_tokens_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_personal_api_tokens')),
    sa.UniqueConstraint('lookup_prefix', name=op.f('uq_personal_api_tokens_lookup_prefix'))
    )
    with op.batch_alter_table('personal_api_tokens', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_personal_api_tokens_user_id'), ['user_id'], unique=False)

    op.create_table('recovery_codes',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('user_id', sa.String(length=32), nullable=False),
    sa.Column('code_hash', sa.String(length=64), nullable=False),
    sa.Column('used_at', tre.core.db.UTCDateTime(), nullable=True),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_recovery_codes_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_recovery_codes'))
    )
    with op.batch_alter_table('recovery_codes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_recovery_codes_user_id'), ['user_id'], unique=False)

    op.create_table('user_roles',
    sa.Column('user_id', sa.String(length=32), nullable=False),
    sa.Column('role', sa.String(length=50), nullable=False),
    sa.Column('granted_by', sa.String(length=32), nullable=True),
    sa.Column('granted_at', tre.core.db.UTCDateTime(), nullable=False),
    sa.CheckConstraint("role IN ('researcher', 'dac_member', 'dac_chair', 'output_checker', 'data_custodian', 'administrator', 'auditor')", name=op.f('ck_user_roles_role_known')),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_user_roles_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('user_id', 'role', name=op.f('pk_user_roles'))
    )
    for statement in append_only_ddl(op.get_bind().dialect.name):
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute('DROP TRIGGER IF EXISTS audit_events_no_update_or_delete ON audit_events')
        op.execute('DROP TRIGGER IF EXISTS audit_events_no_truncate ON audit_events')
        op.execute('DROP FUNCTION IF EXISTS audit_events_refuse_change()')
    op.drop_table('user_roles')
    with op.batch_alter_table('recovery_codes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_recovery_codes_user_id'))

    op.drop_table('recovery_codes')
    with op.batch_alter_table('personal_api_tokens', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_personal_api_tokens_user_id'))

    op.drop_table('personal_api_tokens')
    with op.batch_alter_table('password_reset_links', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_password_reset_links_user_id'))

    op.drop_table('password_reset_links')
    op.drop_table('users')
    op.drop_table('token_uses')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_jobs_state_lease')

    op.drop_table('jobs')
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.drop_index('ix_audit_events_project_time')
        batch_op.drop_index('ix_audit_events_actor_time')
        batch_op.drop_index('ix_audit_events_action')

    op.drop_table('audit_events')
