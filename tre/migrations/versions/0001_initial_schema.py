"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-23 21:44:02.995202
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
    op.create_table('agreement_templates',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('title', sa.String(length=200), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('content_hash', sa.String(length=64), nullable=False),
    sa.Column('published_by', sa.String(length=32), nullable=True),
    sa.Column('published_at', tre.core.db.UTCDateTime(), nullable=False),
    sa.CheckConstraint('version >= 1', name=op.f('ck_agreement_templates_version_positive')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_agreement_templates')),
    sa.UniqueConstraint('content_hash', name=op.f('uq_agreement_templates_content_hash')),
    sa.UniqueConstraint('version', name=op.f('uq_agreement_templates_version'))
    )
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

    op.create_table('datasets',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('title', sa.String(length=200), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('source_kind', sa.String(length=20), nullable=False),
    sa.Column('source_location', sa.String(length=1000), nullable=False),
    sa.Column('sensitivity', sa.String(length=30), nullable=False),
    sa.Column('row_count', sa.Integer(), nullable=True),
    sa.Column('schema_spec', sa.JSON(), nullable=False),
    sa.Column('registered_by', sa.String(length=32), nullable=True),
    sa.Column('registered_at', tre.core.db.UTCDateTime(), nullable=False),
    sa.CheckConstraint("sensitivity IN ('low', 'medium', 'high', 'special_category')", name=op.f('ck_datasets_sensitivity_known')),
    sa.CheckConstraint("source_kind IN ('parquet', 'csv', 'database_table')", name=op.f('ck_datasets_source_kind_known')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_datasets')),
    sa.UniqueConstraint('name', name=op.f('uq_datasets_name'))
    )
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

    op.create_table('outbox_messages',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('recipient_id', sa.String(length=32), nullable=False),
    sa.Column('recipient_email', sa.String(length=320), nullable=False),
    sa.Column('subject', sa.String(length=200), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('topic', sa.String(length=50), nullable=False),
    sa.Column('dedupe_key', sa.String(length=200), nullable=True),
    sa.Column('state', sa.String(length=20), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('created_at', tre.core.db.UTCDateTime(), nullable=False),
    sa.Column('sent_at', tre.core.db.UTCDateTime(), nullable=True),
    sa.CheckConstraint("(state = 'sent') = (sent_at IS NOT NULL)", name=op.f('ck_outbox_messages_sent_when_sent')),
    sa.CheckConstraint("state IN ('pending', 'sent', 'failed', 'kept')", name=op.f('ck_outbox_messages_state_known')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_outbox_messages')),
    sa.UniqueConstraint('dedupe_key', name=op.f('uq_outbox_messages_dedupe_key'))
    )
    with op.batch_alter_table('outbox_messages', schema=None) as batch_op:
        batch_op.create_index('ix_outbox_messages_recipient_time', ['recipient_id', 'created_at'], unique=False)

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
    op.create_table('wrapped_keys',
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('key_id', sa.String(length=40), nullable=False),
    sa.Column('wrapped', sa.LargeBinary(), nullable=True),
    sa.Column('created_at', tre.core.db.UTCDateTime(), nullable=False),
    sa.Column('destroyed_at', tre.core.db.UTCDateTime(), nullable=True),
    sa.CheckConstraint('(wrapped IS NULL) = (destroyed_at IS NOT NULL)', name=op.f('ck_wrapped_keys_destroyed_means_gone')),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_wrapped_keys'))
    )
    op.create_table('dataset_columns',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('dataset_id', sa.String(length=32), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('role', sa.String(length=30), nullable=False),
    sa.Column('data_type', sa.String(length=50), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('sensitivity', sa.String(length=30), nullable=False),
    sa.CheckConstraint("role IN ('direct_identifier', 'quasi_identifier', 'attribute', 'free_text')", name=op.f('ck_dataset_columns_role_known')),
    sa.CheckConstraint("sensitivity IN ('low', 'medium', 'high', 'special_category')", name=op.f('ck_dataset_columns_sensitivity_known')),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], name=op.f('fk_dataset_columns_dataset_id_datasets'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dataset_columns')),
    sa.UniqueConstraint('dataset_id', 'name', name=op.f('uq_dataset_columns_dataset_id_name'))
    )
    op.create_table('oidc_links',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('user_id', sa.String(length=32), nullable=False),
    sa.Column('issuer', sa.String(length=500), nullable=False),
    sa.Column('subject', sa.String(length=255), nullable=False),
    sa.Column('method', sa.String(length=30), nullable=False),
    sa.Column('created_at', tre.core.db.UTCDateTime(), nullable=False),
    sa.Column('last_used_at', tre.core.db.UTCDateTime(), nullable=True),
    sa.CheckConstraint("method IN ('verified email', 'signed-in person')", name=op.f('ck_oidc_links_method_known')),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_oidc_links_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_oidc_links')),
    sa.UniqueConstraint('issuer', 'subject', name='oidc_subject_once'),
    sa.UniqueConstraint('user_id', 'issuer', name='oidc_one_link_per_issuer')
    )
    with op.batch_alter_table('oidc_links', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_oidc_links_user_id'), ['user_id'], unique=False)

    op.create_table('optout_list_versions',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('dataset_id', sa.String(length=32), nullable=True),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('file_sha256', sa.String(length=64), nullable=False),
    sa.Column('fingerprint', sa.String(length=64), nullable=False),
    sa.Column('number_count', sa.Integer(), nullable=False),
    sa.Column('duplicates', sa.Integer(), nullable=False),
    sa.Column('loaded_by', sa.String(length=32), nullable=True),
    sa.Column('loaded_at', tre.core.db.UTCDateTime(), nullable=False),
    sa.CheckConstraint('number_count >= 1', name=op.f('ck_optout_list_versions_not_empty')),
    sa.CheckConstraint('version >= 1', name=op.f('ck_optout_list_versions_version_positive')),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], name=op.f('fk_optout_list_versions_dataset_id_datasets')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_optout_list_versions')),
    sa.UniqueConstraint('name', 'version', name=op.f('uq_optout_list_versions_name_version'))
    )
    with op.batch_alter_table('optout_list_versions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_optout_list_versions_name'), ['name'], unique=False)

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

    op.create_table('projects',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('title', sa.String(length=300), nullable=False),
    sa.Column('state', sa.String(length=30), nullable=False),
    sa.Column('pi_id', sa.String(length=32), nullable=False),
    sa.Column('lay_summary', sa.Text(), nullable=False),
    sa.Column('scientific_purpose', sa.Text(), nullable=False),
    sa.Column('public_benefit', sa.Text(), nullable=False),
    sa.Column('legal_basis', sa.Text(), nullable=False),
    sa.Column('ethics_reference', sa.String(length=200), nullable=False),
    sa.Column('funder', sa.String(length=200), nullable=False),
    sa.Column('start_date', sa.Date(), nullable=True),
    sa.Column('end_date', sa.Date(), nullable=True),
    sa.Column('current_version', sa.Integer(), nullable=False),
    sa.Column('created_at', tre.core.db.UTCDateTime(), nullable=False),
    sa.Column('updated_at', tre.core.db.UTCDateTime(), nullable=False),
    sa.Column('state_changed_at', tre.core.db.UTCDateTime(), nullable=False),
    sa.Column('suspension_reason', sa.Text(), nullable=True),
    sa.Column('closed_at', tre.core.db.UTCDateTime(), nullable=True),
    sa.Column('closure_reason', sa.Text(), nullable=True),
    sa.Column('data_destroyed_at', tre.core.db.UTCDateTime(), nullable=True),
    sa.CheckConstraint("(closed_at IS NULL) = (state NOT IN ('closed', 'data_destroyed'))", name=op.f('ck_projects_closed_when_closed')),
    sa.CheckConstraint("(data_destroyed_at IS NULL) = (state <> 'data_destroyed')", name=op.f('ck_projects_destroyed_when_destroyed')),
    sa.CheckConstraint("state IN ('draft', 'submitted', 'in_review', 'approved', 'changes_requested', 'rejected', 'active', 'suspended', 'closed', 'data_destroyed')", name=op.f('ck_projects_state_known')),
    sa.CheckConstraint('(closed_at IS NULL) = (closure_reason IS NULL)', name=op.f('ck_projects_closure_has_reason')),
    sa.CheckConstraint('current_version >= 0', name=op.f('ck_projects_version_non_negative')),
    sa.CheckConstraint('start_date IS NULL OR end_date IS NULL OR start_date <= end_date', name=op.f('ck_projects_dates_ordered')),
    sa.ForeignKeyConstraint(['pi_id'], ['users.id'], name=op.f('fk_projects_pi_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_projects'))
    )
    with op.batch_alter_table('projects', schema=None) as batch_op:
        batch_op.create_index('ix_projects_state', ['state'], unique=False)

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

    op.create_table('training_records',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('user_id', sa.String(length=32), nullable=False),
    sa.Column('course', sa.String(length=100), nullable=False),
    sa.Column('completed_on', sa.Date(), nullable=False),
    sa.Column('expires_on', sa.Date(), nullable=False),
    sa.Column('reference', sa.String(length=200), nullable=False),
    sa.Column('recorded_by', sa.String(length=32), nullable=True),
    sa.Column('recorded_at', tre.core.db.UTCDateTime(), nullable=False),
    sa.CheckConstraint('completed_on <= expires_on', name=op.f('ck_training_records_expires_after_completion')),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_training_records_user_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_training_records'))
    )
    with op.batch_alter_table('training_records', schema=None) as batch_op:
        batch_op.create_index('ix_training_records_user_course', ['user_id', 'course'], unique=False)

    op.create_table('user_roles',
    sa.Column('user_id', sa.String(length=32), nullable=False),
    sa.Column('role', sa.String(length=50), nullable=False),
    sa.Column('granted_by', sa.String(length=32), nullable=True),
    sa.Column('granted_at', tre.core.db.UTCDateTime(), nullable=False),
    sa.CheckConstraint("role IN ('researcher', 'dac_member', 'dac_chair', 'output_checker', 'data_custodian', 'administrator', 'auditor')", name=op.f('ck_user_roles_role_known')),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_user_roles_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('user_id', 'role', name=op.f('pk_user_roles'))
    )
    op.create_table('agreement_signatures',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('template_id', sa.String(length=32), nullable=False),
    sa.Column('project_id', sa.String(length=32), nullable=False),
    sa.Column('user_id', sa.String(length=32), nullable=False),
    sa.Column('content_hash', sa.String(length=64), nullable=False),
    sa.Column('signed_name', sa.String(length=200), nullable=False),
    sa.Column('signed_at', tre.core.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_agreement_signatures_project_id_projects'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['template_id'], ['agreement_templates.id'], name=op.f('fk_agreement_signatures_template_id_agreement_templates')),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_agreement_signatures_user_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_agreement_signatures')),
    sa.UniqueConstraint('template_id', 'project_id', 'user_id', name=op.f('uq_agreement_signatures_template_id_project_id_user_id'))
    )
    with op.batch_alter_table('agreement_signatures', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_agreement_signatures_project_id'), ['project_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_agreement_signatures_user_id'), ['user_id'], unique=False)

    op.create_table('application_versions',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('project_id', sa.String(length=32), nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('content', sa.JSON(), nullable=False),
    sa.Column('submitted_by', sa.String(length=32), nullable=False),
    sa.Column('submitted_at', tre.core.db.UTCDateTime(), nullable=False),
    sa.CheckConstraint('number >= 1', name=op.f('ck_application_versions_number_positive')),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_application_versions_project_id_projects'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_application_versions')),
    sa.UniqueConstraint('project_id', 'number', name=op.f('uq_application_versions_project_id_number'))
    )
    op.create_table('dataset_requests',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('project_id', sa.String(length=32), nullable=False),
    sa.Column('dataset_id', sa.String(length=32), nullable=False),
    sa.Column('columns', sa.JSON(), nullable=False),
    sa.Column('justification', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], name=op.f('fk_dataset_requests_dataset_id_datasets')),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_dataset_requests_project_id_projects'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dataset_requests')),
    sa.UniqueConstraint('project_id', 'dataset_id', name=op.f('uq_dataset_requests_project_id_dataset_id'))
    )
    op.create_table('destruction_records',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('project_id', sa.String(length=32), nullable=False),
    sa.Column('hook', sa.String(length=100), nullable=False),
    sa.Column('completed_at', tre.core.db.UTCDateTime(), nullable=False),
    sa.Column('detail', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_destruction_records_project_id_projects'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_destruction_records')),
    sa.UniqueConstraint('project_id', 'hook', name=op.f('uq_destruction_records_project_id_hook'))
    )
    op.create_table('extension_requests',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('project_id', sa.String(length=32), nullable=False),
    sa.Column('current_end_date', sa.Date(), nullable=False),
    sa.Column('requested_end_date', sa.Date(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('requested_by', sa.String(length=32), nullable=False),
    sa.Column('requested_at', tre.core.db.UTCDateTime(), nullable=False),
    sa.Column('outcome', sa.String(length=20), nullable=True),
    sa.Column('decided_by', sa.String(length=32), nullable=True),
    sa.Column('decided_at', tre.core.db.UTCDateTime(), nullable=True),
    sa.CheckConstraint("outcome IS NULL OR outcome IN ('granted', 'refused')", name=op.f('ck_extension_requests_outcome_known')),
    sa.CheckConstraint('(decided_at IS NULL) = (decided_by IS NULL) AND (decided_at IS NULL) = (outcome IS NULL)', name=op.f('ck_extension_requests_decision_paired')),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_extension_requests_project_id_projects'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_extension_requests'))
    )
    with op.batch_alter_table('extension_requests', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_extension_requests_project_id'), ['project_id'], unique=False)

    op.create_table('extracts',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('project_id', sa.String(length=32), nullable=False),
    sa.Column('plan_hash', sa.String(length=64), nullable=False),
    sa.Column('job_id', sa.String(length=32), nullable=True),
    sa.Column('state', sa.String(length=20), nullable=False),
    sa.Column('requested_by', sa.String(length=32), nullable=True),
    sa.Column('requested_at', tre.core.db.UTCDateTime(), nullable=False),
    sa.Column('finished_at', tre.core.db.UTCDateTime(), nullable=True),
    sa.Column('manifest', sa.JSON(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.CheckConstraint("(state IN ('succeeded', 'failed')) = (finished_at IS NOT NULL)", name=op.f('ck_extracts_finished_when_final')),
    sa.CheckConstraint("state IN ('queued', 'running', 'succeeded', 'failed')", name=op.f('ck_extracts_state_known')),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_extracts_project_id_projects')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_extracts'))
    )
    with op.batch_alter_table('extracts', schema=None) as batch_op:
        batch_op.create_index('ix_extracts_project', ['project_id', 'requested_at'], unique=False)

    op.create_table('optout_exemptions',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('project_id', sa.String(length=32), nullable=False),
    sa.Column('list_name', sa.String(length=100), nullable=False),
    sa.Column('basis', sa.Text(), nullable=False),
    sa.Column('decided_by', sa.String(length=32), nullable=False),
    sa.Column('decided_at', tre.core.db.UTCDateTime(), nullable=False),
    sa.CheckConstraint('length(trim(basis)) > 0', name=op.f('ck_optout_exemptions_basis_required')),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_optout_exemptions_project_id_projects'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_optout_exemptions')),
    sa.UniqueConstraint('project_id', 'list_name', name=op.f('uq_optout_exemptions_project_id_list_name'))
    )
    with op.batch_alter_table('optout_exemptions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_optout_exemptions_project_id'), ['project_id'], unique=False)

    op.create_table('output_requests',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('project_id', sa.String(length=32), nullable=False),
    sa.Column('author_id', sa.String(length=32), nullable=False),
    sa.Column('title', sa.String(length=200), nullable=False),
    sa.Column('state', sa.String(length=30), nullable=False),
    sa.Column('round', sa.Integer(), nullable=False),
    sa.Column('reviews_required', sa.Integer(), nullable=False),
    sa.Column('client_key', sa.String(length=200), nullable=True),
    sa.Column('created_at', tre.core.db.UTCDateTime(), nullable=False),
    sa.Column('state_changed_at', tre.core.db.UTCDateTime(), nullable=False),
    sa.Column('submitted_at', tre.core.db.UTCDateTime(), nullable=True),
    sa.Column('last_submitted_at', tre.core.db.UTCDateTime(), nullable=True),
    sa.Column('checks_finished_at', tre.core.db.UTCDateTime(), nullable=True),
    sa.Column('decided_at', tre.core.db.UTCDateTime(), nullable=True),
    sa.Column('released_at', tre.core.db.UTCDateTime(), nullable=True),
    sa.CheckConstraint("(released_at IS NULL) = (state NOT IN ('released', 'revoked'))", name=op.f('ck_output_requests_released_when_released')),
    sa.CheckConstraint("state = 'draft' OR state = 'withdrawn' OR submitted_at IS NOT NULL", name=op.f('ck_output_requests_submitted_when_past_draft')),
    sa.CheckConstraint("state IN ('draft', 'submitted', 'checking', 'awaiting_review', 'approved', 'released', 'returned', 'rejected', 'withdrawn', 'revoked')", name=op.f('ck_output_requests_state_known')),
    sa.CheckConstraint('reviews_required >= 1', name=op.f('ck_output_requests_reviews_at_least_one')),
    sa.CheckConstraint('round >= 1', name=op.f('ck_output_requests_round_positive')),
    sa.ForeignKeyConstraint(['author_id'], ['users.id'], name=op.f('fk_output_requests_author_id_users')),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_output_requests_project_id_projects'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_output_requests')),
    sa.UniqueConstraint('project_id', 'client_key', name=op.f('uq_output_requests_project_id_client_key'))
    )
    with op.batch_alter_table('output_requests', schema=None) as batch_op:
        batch_op.create_index('ix_output_requests_project', ['project_id'], unique=False)
        batch_op.create_index('ix_output_requests_state', ['state'], unique=False)

    op.create_table('project_members',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('project_id', sa.String(length=32), nullable=False),
    sa.Column('user_id', sa.String(length=32), nullable=False),
    sa.Column('role', sa.String(length=30), nullable=False),
    sa.Column('added_by', sa.String(length=32), nullable=False),
    sa.Column('added_at', tre.core.db.UTCDateTime(), nullable=False),
    sa.Column('removed_at', tre.core.db.UTCDateTime(), nullable=True),
    sa.Column('removed_by', sa.String(length=32), nullable=True),
    sa.CheckConstraint("role IN ('principal_investigator', 'researcher')", name=op.f('ck_project_members_role_known')),
    sa.CheckConstraint('(removed_at IS NULL) = (removed_by IS NULL)', name=op.f('ck_project_members_removal_paired')),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_project_members_project_id_projects'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_project_members_user_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_project_members')),
    sa.UniqueConstraint('project_id', 'user_id', name=op.f('uq_project_members_project_id_user_id'))
    )
    with op.batch_alter_table('project_members', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_project_members_user_id'), ['user_id'], unique=False)

    op.create_table('project_release_ledgers',
    sa.Column('project_id', sa.String(length=32), nullable=False),
    sa.Column('ledger', sa.JSON(), nullable=False),
    sa.Column('updated_at', tre.core.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_project_release_ledgers_project_id_projects'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('project_id', name=op.f('pk_project_release_ledgers'))
    )
    op.create_table('reidentification_requests',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('project_id', sa.String(length=32), nullable=False),
    sa.Column('requested_by', sa.String(length=32), nullable=False),
    sa.Column('purpose', sa.Text(), nullable=False),
    sa.Column('tokens', sa.JSON(), nullable=False),
    sa.Column('state', sa.String(length=20), nullable=False),
    sa.Column('created_at', tre.core.db.UTCDateTime(), nullable=False),
    sa.Column('fulfilled_at', tre.core.db.UTCDateTime(), nullable=True),
    sa.CheckConstraint("state IN ('pending', 'approved', 'rejected', 'fulfilled')", name=op.f('ck_reidentification_requests_state_known')),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_reidentification_requests_project_id_projects')),
    sa.ForeignKeyConstraint(['requested_by'], ['users.id'], name=op.f('fk_reidentification_requests_requested_by_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_reidentification_requests'))
    )
    op.create_table('workspace_sessions',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('user_id', sa.String(length=32), nullable=False),
    sa.Column('project_id', sa.String(length=32), nullable=False),
    sa.Column('hub_username', sa.String(length=64), nullable=False),
    sa.Column('server_name', sa.String(length=64), nullable=False),
    sa.Column('started_at', tre.core.db.UTCDateTime(), nullable=False),
    sa.Column('stopped_at', tre.core.db.UTCDateTime(), nullable=True),
    sa.Column('stop_reason', sa.String(length=200), nullable=True),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_workspace_sessions_project_id_projects')),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_workspace_sessions_user_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_workspace_sessions'))
    )
    with op.batch_alter_table('workspace_sessions', schema=None) as batch_op:
        batch_op.create_index('ix_workspace_sessions_open', ['stopped_at'], unique=False)

    op.create_table('decisions',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('project_id', sa.String(length=32), nullable=False),
    sa.Column('version_id', sa.String(length=32), nullable=False),
    sa.Column('outcome', sa.String(length=30), nullable=False),
    sa.Column('conditions', sa.Text(), nullable=False),
    sa.Column('public_comment', sa.Text(), nullable=False),
    sa.Column('decided_by', sa.String(length=32), nullable=False),
    sa.Column('decided_at', tre.core.db.UTCDateTime(), nullable=False),
    sa.CheckConstraint("outcome IN ('approved', 'changes_requested', 'rejected')", name=op.f('ck_decisions_outcome_known')),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_decisions_project_id_projects'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['version_id'], ['application_versions.id'], name=op.f('fk_decisions_version_id_application_versions'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_decisions')),
    sa.UniqueConstraint('version_id', name=op.f('uq_decisions_version_id'))
    )
    with op.batch_alter_table('decisions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_decisions_project_id'), ['project_id'], unique=False)

    op.create_table('output_decisions',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('request_id', sa.String(length=32), nullable=False),
    sa.Column('round', sa.Integer(), nullable=False),
    sa.Column('outcome', sa.String(length=20), nullable=False),
    sa.Column('comment', sa.Text(), nullable=False),
    sa.Column('decided_by', sa.String(length=32), nullable=False),
    sa.Column('decided_at', tre.core.db.UTCDateTime(), nullable=False),
    sa.Column('file_hashes', sa.JSON(), nullable=False),
    sa.CheckConstraint("outcome = 'approve' OR length(trim(comment)) > 0", name=op.f('ck_output_decisions_refusal_has_comment')),
    sa.CheckConstraint("outcome IN ('approve', 'return', 'reject')", name=op.f('ck_output_decisions_outcome_known')),
    sa.ForeignKeyConstraint(['decided_by'], ['users.id'], name=op.f('fk_output_decisions_decided_by_users')),
    sa.ForeignKeyConstraint(['request_id'], ['output_requests.id'], name=op.f('fk_output_decisions_request_id_output_requests'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_output_decisions')),
    sa.UniqueConstraint('request_id', 'round', name=op.f('uq_output_decisions_request_id_round'))
    )
    with op.batch_alter_table('output_decisions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_output_decisions_request_id'), ['request_id'], unique=False)

    op.create_table('output_groups',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('request_id', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('context', sa.Text(), nullable=False),
    sa.Column('controls', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['request_id'], ['output_requests.id'], name=op.f('fk_output_groups_request_id_output_requests'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_output_groups')),
    sa.UniqueConstraint('request_id', 'name', name=op.f('uq_output_groups_request_id_name'))
    )
    op.create_table('output_releases',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('request_id', sa.String(length=32), nullable=False),
    sa.Column('project_id', sa.String(length=32), nullable=False),
    sa.Column('bundle_sha256', sa.String(length=64), nullable=False),
    sa.Column('bundle_bytes', sa.Integer(), nullable=False),
    sa.Column('manifest', sa.JSON(), nullable=False),
    sa.Column('released_by', sa.String(length=32), nullable=False),
    sa.Column('released_at', tre.core.db.UTCDateTime(), nullable=False),
    sa.Column('revoked_at', tre.core.db.UTCDateTime(), nullable=True),
    sa.Column('revoked_by', sa.String(length=32), nullable=True),
    sa.Column('revoke_reason', sa.Text(), nullable=True),
    sa.CheckConstraint('(revoked_at IS NULL) = (revoked_by IS NULL) AND (revoked_at IS NULL) = (revoke_reason IS NULL)', name=op.f('ck_output_releases_revocation_paired')),
    sa.ForeignKeyConstraint(['released_by'], ['users.id'], name=op.f('fk_output_releases_released_by_users')),
    sa.ForeignKeyConstraint(['request_id'], ['output_requests.id'], name=op.f('fk_output_releases_request_id_output_requests'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_output_releases')),
    sa.UniqueConstraint('request_id', name=op.f('uq_output_releases_request_id'))
    )
    with op.batch_alter_table('output_releases', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_output_releases_project_id'), ['project_id'], unique=False)

    op.create_table('output_reviews',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('request_id', sa.String(length=32), nullable=False),
    sa.Column('round', sa.Integer(), nullable=False),
    sa.Column('reviewer_id', sa.String(length=32), nullable=False),
    sa.Column('assigned_by', sa.String(length=32), nullable=False),
    sa.Column('claimed_at', tre.core.db.UTCDateTime(), nullable=False),
    sa.Column('submitted_at', tre.core.db.UTCDateTime(), nullable=True),
    sa.ForeignKeyConstraint(['request_id'], ['output_requests.id'], name=op.f('fk_output_reviews_request_id_output_requests'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['reviewer_id'], ['users.id'], name=op.f('fk_output_reviews_reviewer_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_output_reviews')),
    sa.UniqueConstraint('request_id', 'round', 'reviewer_id', name=op.f('uq_output_reviews_request_id_round_reviewer_id'))
    )
    with op.batch_alter_table('output_reviews', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_output_reviews_request_id'), ['request_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_output_reviews_reviewer_id'), ['reviewer_id'], unique=False)

    op.create_table('reidentification_approvals',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('request_id', sa.String(length=32), nullable=False),
    sa.Column('approver_id', sa.String(length=32), nullable=False),
    sa.Column('decision', sa.String(length=10), nullable=False),
    sa.Column('rationale', sa.Text(), nullable=False),
    sa.Column('decided_at', tre.core.db.UTCDateTime(), nullable=False),
    sa.CheckConstraint("decision IN ('approve', 'reject')", name=op.f('ck_reidentification_approvals_decision_known')),
    sa.ForeignKeyConstraint(['approver_id'], ['users.id'], name=op.f('fk_reidentification_approvals_approver_id_users')),
    sa.ForeignKeyConstraint(['request_id'], ['reidentification_requests.id'], name=op.f('fk_reidentification_approvals_request_id_reidentification_requests'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_reidentification_approvals')),
    sa.UniqueConstraint('request_id', 'approver_id', name=op.f('uq_reidentification_approvals_request_id_approver_id'))
    )
    op.create_table('review_assignments',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('version_id', sa.String(length=32), nullable=False),
    sa.Column('reviewer_id', sa.String(length=32), nullable=False),
    sa.Column('assigned_by', sa.String(length=32), nullable=False),
    sa.Column('assigned_at', tre.core.db.UTCDateTime(), nullable=False),
    sa.Column('conflict_declared_at', tre.core.db.UTCDateTime(), nullable=True),
    sa.Column('conflict_reason', sa.Text(), nullable=True),
    sa.CheckConstraint('(conflict_declared_at IS NULL) = (conflict_reason IS NULL)', name=op.f('ck_review_assignments_conflict_paired')),
    sa.ForeignKeyConstraint(['reviewer_id'], ['users.id'], name=op.f('fk_review_assignments_reviewer_id_users')),
    sa.ForeignKeyConstraint(['version_id'], ['application_versions.id'], name=op.f('fk_review_assignments_version_id_application_versions'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_review_assignments')),
    sa.UniqueConstraint('version_id', 'reviewer_id', name=op.f('uq_review_assignments_version_id_reviewer_id'))
    )
    with op.batch_alter_table('review_assignments', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_review_assignments_reviewer_id'), ['reviewer_id'], unique=False)

    op.create_table('votes',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('version_id', sa.String(length=32), nullable=False),
    sa.Column('reviewer_id', sa.String(length=32), nullable=False),
    sa.Column('choice', sa.String(length=40), nullable=False),
    sa.Column('rationale', sa.Text(), nullable=False),
    sa.Column('cast_at', tre.core.db.UTCDateTime(), nullable=False),
    sa.CheckConstraint("choice IN ('approve', 'approve_with_conditions', 'changes_needed', 'reject')", name=op.f('ck_votes_choice_known')),
    sa.CheckConstraint('length(trim(rationale)) > 0', name=op.f('ck_votes_rationale_required')),
    sa.ForeignKeyConstraint(['reviewer_id'], ['users.id'], name=op.f('fk_votes_reviewer_id_users')),
    sa.ForeignKeyConstraint(['version_id'], ['application_versions.id'], name=op.f('fk_votes_version_id_application_versions'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_votes')),
    sa.UniqueConstraint('version_id', 'reviewer_id', name=op.f('uq_votes_version_id_reviewer_id'))
    )
    op.create_table('approved_columns',
    sa.Column('project_id', sa.String(length=32), nullable=False),
    sa.Column('dataset_id', sa.String(length=32), nullable=False),
    sa.Column('column_name', sa.String(length=100), nullable=False),
    sa.Column('decision_id', sa.String(length=32), nullable=False),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], name=op.f('fk_approved_columns_dataset_id_datasets')),
    sa.ForeignKeyConstraint(['decision_id'], ['decisions.id'], name=op.f('fk_approved_columns_decision_id_decisions'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_approved_columns_project_id_projects'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('project_id', 'dataset_id', 'column_name', name=op.f('pk_approved_columns'))
    )
    op.create_table('output_comments',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('request_id', sa.String(length=32), nullable=False),
    sa.Column('group_id', sa.String(length=32), nullable=True),
    sa.Column('author_id', sa.String(length=32), nullable=False),
    sa.Column('round', sa.Integer(), nullable=False),
    sa.Column('visibility', sa.String(length=20), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('created_at', tre.core.db.UTCDateTime(), nullable=False),
    sa.CheckConstraint("visibility IN ('private', 'shared')", name=op.f('ck_output_comments_visibility_known')),
    sa.CheckConstraint('length(trim(body)) > 0', name=op.f('ck_output_comments_not_blank')),
    sa.ForeignKeyConstraint(['author_id'], ['users.id'], name=op.f('fk_output_comments_author_id_users')),
    sa.ForeignKeyConstraint(['group_id'], ['output_groups.id'], name=op.f('fk_output_comments_group_id_output_groups'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['request_id'], ['output_requests.id'], name=op.f('fk_output_comments_request_id_output_requests'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_output_comments'))
    )
    with op.batch_alter_table('output_comments', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_output_comments_request_id'), ['request_id'], unique=False)

    op.create_table('output_files',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('request_id', sa.String(length=32), nullable=False),
    sa.Column('group_id', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('content_type', sa.String(length=50), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('size_bytes', sa.Integer(), nullable=False),
    sa.Column('table_spec', sa.JSON(), nullable=True),
    sa.Column('added_by', sa.String(length=32), nullable=False),
    sa.Column('added_at', tre.core.db.UTCDateTime(), nullable=False),
    sa.Column('added_in_round', sa.Integer(), nullable=False),
    sa.Column('superseded_at', tre.core.db.UTCDateTime(), nullable=True),
    sa.Column('superseded_in_round', sa.Integer(), nullable=True),
    sa.CheckConstraint("kind IN ('table', 'text', 'image')", name=op.f('ck_output_files_kind_known')),
    sa.CheckConstraint('(superseded_at IS NULL) = (superseded_in_round IS NULL)', name=op.f('ck_output_files_superseded_paired')),
    sa.CheckConstraint('size_bytes > 0', name=op.f('ck_output_files_not_empty')),
    sa.ForeignKeyConstraint(['group_id'], ['output_groups.id'], name=op.f('fk_output_files_group_id_output_groups'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['request_id'], ['output_requests.id'], name=op.f('fk_output_files_request_id_output_requests'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_output_files'))
    )
    with op.batch_alter_table('output_files', schema=None) as batch_op:
        batch_op.create_index('ix_output_files_request', ['request_id'], unique=False)

    op.create_table('output_checks',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('file_id', sa.String(length=32), nullable=False),
    sa.Column('request_id', sa.String(length=32), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('policy_sha256', sa.String(length=64), nullable=False),
    sa.Column('policy_version', sa.String(length=50), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('verdict', sa.JSON(), nullable=False),
    sa.Column('recompute', sa.JSON(), nullable=False),
    sa.Column('differencing', sa.JSON(), nullable=False),
    sa.Column('aggregate', sa.JSON(), nullable=True),
    sa.Column('job_id', sa.String(length=32), nullable=True),
    sa.Column('checked_at', tre.core.db.UTCDateTime(), nullable=False),
    sa.CheckConstraint("status IN ('pass', 'review', 'fail', 'error')", name=op.f('ck_output_checks_status_known')),
    sa.ForeignKeyConstraint(['file_id'], ['output_files.id'], name=op.f('fk_output_checks_file_id_output_files'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['request_id'], ['output_requests.id'], name=op.f('fk_output_checks_request_id_output_requests'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_output_checks')),
    sa.UniqueConstraint('file_id', 'policy_sha256', name=op.f('uq_output_checks_file_id_policy_sha256'))
    )
    with op.batch_alter_table('output_checks', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_output_checks_file_id'), ['file_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_output_checks_request_id'), ['request_id'], unique=False)

    op.create_table('output_votes',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('request_id', sa.String(length=32), nullable=False),
    sa.Column('file_id', sa.String(length=32), nullable=False),
    sa.Column('reviewer_id', sa.String(length=32), nullable=False),
    sa.Column('vote', sa.String(length=30), nullable=False),
    sa.Column('comment', sa.Text(), nullable=False),
    sa.Column('round', sa.Integer(), nullable=False),
    sa.Column('updated_at', tre.core.db.UTCDateTime(), nullable=False),
    sa.CheckConstraint("vote <> 'changes_requested' OR length(trim(comment)) > 0", name=op.f('ck_output_votes_changes_need_comment')),
    sa.CheckConstraint("vote IN ('approve', 'changes_requested', 'undecided')", name=op.f('ck_output_votes_vote_known')),
    sa.ForeignKeyConstraint(['file_id'], ['output_files.id'], name=op.f('fk_output_votes_file_id_output_files'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['request_id'], ['output_requests.id'], name=op.f('fk_output_votes_request_id_output_requests'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['reviewer_id'], ['users.id'], name=op.f('fk_output_votes_reviewer_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_output_votes')),
    sa.UniqueConstraint('file_id', 'reviewer_id', name=op.f('uq_output_votes_file_id_reviewer_id'))
    )
    with op.batch_alter_table('output_votes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_output_votes_request_id'), ['request_id'], unique=False)

    for statement in append_only_ddl(op.get_bind().dialect.name):
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute('DROP TRIGGER IF EXISTS audit_events_no_update_or_delete ON audit_events')
        op.execute('DROP TRIGGER IF EXISTS audit_events_no_truncate ON audit_events')
        op.execute('DROP FUNCTION IF EXISTS audit_events_refuse_change()')
    with op.batch_alter_table('output_votes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_output_votes_request_id'))

    op.drop_table('output_votes')
    with op.batch_alter_table('output_checks', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_output_checks_request_id'))
        batch_op.drop_index(batch_op.f('ix_output_checks_file_id'))

    op.drop_table('output_checks')
    with op.batch_alter_table('output_files', schema=None) as batch_op:
        batch_op.drop_index('ix_output_files_request')

    op.drop_table('output_files')
    with op.batch_alter_table('output_comments', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_output_comments_request_id'))

    op.drop_table('output_comments')
    op.drop_table('approved_columns')
    op.drop_table('votes')
    with op.batch_alter_table('review_assignments', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_review_assignments_reviewer_id'))

    op.drop_table('review_assignments')
    op.drop_table('reidentification_approvals')
    with op.batch_alter_table('output_reviews', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_output_reviews_reviewer_id'))
        batch_op.drop_index(batch_op.f('ix_output_reviews_request_id'))

    op.drop_table('output_reviews')
    with op.batch_alter_table('output_releases', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_output_releases_project_id'))

    op.drop_table('output_releases')
    op.drop_table('output_groups')
    with op.batch_alter_table('output_decisions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_output_decisions_request_id'))

    op.drop_table('output_decisions')
    with op.batch_alter_table('decisions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_decisions_project_id'))

    op.drop_table('decisions')
    with op.batch_alter_table('workspace_sessions', schema=None) as batch_op:
        batch_op.drop_index('ix_workspace_sessions_open')

    op.drop_table('workspace_sessions')
    op.drop_table('reidentification_requests')
    op.drop_table('project_release_ledgers')
    with op.batch_alter_table('project_members', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_project_members_user_id'))

    op.drop_table('project_members')
    with op.batch_alter_table('output_requests', schema=None) as batch_op:
        batch_op.drop_index('ix_output_requests_state')
        batch_op.drop_index('ix_output_requests_project')

    op.drop_table('output_requests')
    with op.batch_alter_table('optout_exemptions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_optout_exemptions_project_id'))

    op.drop_table('optout_exemptions')
    with op.batch_alter_table('extracts', schema=None) as batch_op:
        batch_op.drop_index('ix_extracts_project')

    op.drop_table('extracts')
    with op.batch_alter_table('extension_requests', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_extension_requests_project_id'))

    op.drop_table('extension_requests')
    op.drop_table('destruction_records')
    op.drop_table('dataset_requests')
    op.drop_table('application_versions')
    with op.batch_alter_table('agreement_signatures', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_agreement_signatures_user_id'))
        batch_op.drop_index(batch_op.f('ix_agreement_signatures_project_id'))

    op.drop_table('agreement_signatures')
    op.drop_table('user_roles')
    with op.batch_alter_table('training_records', schema=None) as batch_op:
        batch_op.drop_index('ix_training_records_user_course')

    op.drop_table('training_records')
    with op.batch_alter_table('recovery_codes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_recovery_codes_user_id'))

    op.drop_table('recovery_codes')
    with op.batch_alter_table('projects', schema=None) as batch_op:
        batch_op.drop_index('ix_projects_state')

    op.drop_table('projects')
    with op.batch_alter_table('personal_api_tokens', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_personal_api_tokens_user_id'))

    op.drop_table('personal_api_tokens')
    with op.batch_alter_table('password_reset_links', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_password_reset_links_user_id'))

    op.drop_table('password_reset_links')
    with op.batch_alter_table('optout_list_versions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_optout_list_versions_name'))

    op.drop_table('optout_list_versions')
    with op.batch_alter_table('oidc_links', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_oidc_links_user_id'))

    op.drop_table('oidc_links')
    op.drop_table('dataset_columns')
    op.drop_table('wrapped_keys')
    op.drop_table('users')
    op.drop_table('token_uses')
    with op.batch_alter_table('outbox_messages', schema=None) as batch_op:
        batch_op.drop_index('ix_outbox_messages_recipient_time')

    op.drop_table('outbox_messages')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_jobs_state_lease')

    op.drop_table('jobs')
    op.drop_table('datasets')
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.drop_index('ix_audit_events_project_time')
        batch_op.drop_index('ix_audit_events_actor_time')
        batch_op.drop_index('ix_audit_events_action')

    op.drop_table('audit_events')
    op.drop_table('agreement_templates')
