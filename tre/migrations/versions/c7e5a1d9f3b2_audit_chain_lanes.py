"""audit events carry their lane and their place in it (ADR 0016)

Every event written before this revision was chained one after another, so the existing chain
becomes lane 0 with ``lane_seq = seq``; its hashes do not change (neither column is hashed). On
PostgreSQL new events take their ``seq`` from the column's own sequence, which until now was never
used (every insert gave ``seq``): it is moved past the last event.

The append-only triggers refuse the one ``UPDATE`` that fills ``lane_seq``, so it runs with them
out of the way, inside this migration's transaction.

Revision ID: c7e5a1d9f3b2
Revises: c4d5e6f7a8b9
Create Date: 2026-12-06 00:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from tre.core.audit import append_only_ddl

revision = 'c7e5a1d9f3b2'
down_revision = 'c4d5e6f7a8b9'
branch_labels = None
depends_on = None

_SQLITE_TRIGGERS = ('audit_events_no_update', 'audit_events_no_delete')


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('lane', sa.SmallInteger(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('lane_seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'),
                                      nullable=True))
    if dialect == 'postgresql':
        op.execute('ALTER TABLE audit_events DISABLE TRIGGER audit_events_no_update_or_delete')
        op.execute('UPDATE audit_events SET lane_seq = seq')
        op.execute('ALTER TABLE audit_events ENABLE TRIGGER audit_events_no_update_or_delete')
        op.execute("SELECT setval(pg_get_serial_sequence('audit_events', 'seq'), "
                   "COALESCE((SELECT max(seq) FROM audit_events), 0) + 1, false)")
    else:
        for name in _SQLITE_TRIGGERS:
            op.execute(f'DROP TRIGGER IF EXISTS {name}')
        op.execute('UPDATE audit_events SET lane_seq = seq')
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.alter_column('lane_seq', existing_type=sa.BigInteger().with_variant(sa.Integer(), 'sqlite'),
                              nullable=False)
        batch_op.create_unique_constraint(batch_op.f('uq_audit_events_lane_lane_seq'), ['lane', 'lane_seq'])
    if dialect == 'sqlite':
        # Batch mode rebuilt the table, and a rebuilt table has no triggers: put them back.
        for statement in append_only_ddl('sqlite'):
            op.execute(statement)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('uq_audit_events_lane_lane_seq'), type_='unique')
        batch_op.drop_column('lane_seq')
        batch_op.drop_column('lane')
    if dialect == 'sqlite':
        for statement in append_only_ddl('sqlite'):
            op.execute(statement)
