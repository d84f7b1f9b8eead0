"""find a person of the person index by their pseudonym, for governed re-identification

A token of a person without an NHS number is re-identified by looking their person pseudonym up in
the index (pseudonymisation/services.py, ADR 0021): ``ix_person_index_entries_pseudonym`` makes that
one index probe instead of a scan of every run's entries.

Revision ID: f3a4b5c6d7e8
Revises: e1f2a3b4c5d6
Create Date: 2026-12-06 04:10:00
"""

from __future__ import annotations

from alembic import op

revision = 'f3a4b5c6d7e8'
down_revision = 'e1f2a3b4c5d6'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('person_index_entries', schema=None) as batch_op:
        batch_op.create_index('ix_person_index_entries_pseudonym', ['person_pseudonym'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('person_index_entries', schema=None) as batch_op:
        batch_op.drop_index('ix_person_index_entries_pseudonym')
