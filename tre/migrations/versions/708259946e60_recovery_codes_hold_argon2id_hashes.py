"""recovery codes hold argon2id hashes

A salted, stretched hash is longer than the SHA-256 hex digest the column was sized for. Codes
already stored as SHA-256 stay as they are (the plaintext is gone, so they cannot be rehashed) and
are still accepted until used or replaced by a new enrolment.

Revision ID: 708259946e60
Revises: 0001
Create Date: 2026-11-24 00:39:17.140749
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '708259946e60'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('recovery_codes', schema=None) as batch_op:
        batch_op.alter_column('code_hash',
               existing_type=sa.VARCHAR(length=64),
               type_=sa.String(length=255),
               existing_nullable=False)


def downgrade() -> None:
    # Codes hashed with argon2id do not fit the narrower column and the old code cannot check them:
    # they are removed (their owners still sign in with their TOTP code).
    op.execute("DELETE FROM recovery_codes WHERE code_hash LIKE '$argon2%'")
    with op.batch_alter_table('recovery_codes', schema=None) as batch_op:
        batch_op.alter_column('code_hash',
               existing_type=sa.String(length=255),
               type_=sa.VARCHAR(length=64),
               existing_nullable=False)
