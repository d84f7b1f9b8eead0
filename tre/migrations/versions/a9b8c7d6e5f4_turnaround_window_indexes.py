"""read a window of decisions and finished jobs, not all of them

The turnaround page of the committee reads the applications decided since its window opened
(tre/turnaround.py, ADR 0067): ``ix_decisions_decided_at`` makes that a range of the index instead of
a scan of every decision ever made. The Prometheus scrape's mean run time covers the jobs finished in
the last hour (tre/metrics.py): ``ix_jobs_finished_at`` does the same for the jobs table. The output
checkers' page reads the requests finished (released, rejected, withdrawn, revoked) and decided in its
window: ``ix_output_requests_state_changed`` and ``ix_output_requests_decided_at``.

Revision ID: a9b8c7d6e5f4
Revises: f3a4b5c6d7e8
Create Date: 2026-12-07 05:00:00
"""

from __future__ import annotations

from alembic import op

revision = 'a9b8c7d6e5f4'
down_revision = 'f3a4b5c6d7e8'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('decisions', schema=None) as batch_op:
        batch_op.create_index('ix_decisions_decided_at', ['decided_at'], unique=False)
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.create_index('ix_jobs_finished_at', ['finished_at'], unique=False)
    with op.batch_alter_table('output_requests', schema=None) as batch_op:
        batch_op.create_index('ix_output_requests_state_changed', ['state', 'state_changed_at'], unique=False)
        batch_op.create_index('ix_output_requests_decided_at', ['decided_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('output_requests', schema=None) as batch_op:
        batch_op.drop_index('ix_output_requests_decided_at')
        batch_op.drop_index('ix_output_requests_state_changed')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_jobs_finished_at')
    with op.batch_alter_table('decisions', schema=None) as batch_op:
        batch_op.drop_index('ix_decisions_decided_at')
