#!/usr/bin/env bash
# Write a NEW Alembic revision for a schema change: the difference between the models and a fresh
# SQLite database upgraded to the current head. Usage: bash infra/local/new-migration.sh "add X to Y"
# The revision lands in tre/migrations/versions/; read it, fix what autogenerate cannot see (renames,
# data moves, PostgreSQL-only DDL), and commit it with the model change. Never edit a released one.
set -euo pipefail
if [ $# -ne 1 ] || [ -z "$1" ]; then
  echo "usage: $0 \"what the change does\"" >&2
  exit 2
fi
cd "$(dirname "$0")/../.."
tre_bin=.venv/bin/tre
[ -x "$tre_bin" ] || tre_bin=tre
work=$(mktemp -d /tmp/tre-new-migration.XXXXXX)
trap 'rm -rf "$work"' EXIT
export TRE_INSTANCE_PATH="$work" TRE_DATABASE_URL="sqlite:///$work/tre.sqlite" TRE_BROKER_URL="memory://"
"$tre_bin" db upgrade >/dev/null
before=$(ls tre/migrations/versions/*.py | sort)
"$tre_bin" db revision -m "$1" >/dev/null
new=$(comm -13 <(echo "$before") <(ls tre/migrations/versions/*.py | sort))
if [ -z "$new" ]; then
  echo "no revision written" >&2
  exit 1
fi
if ! grep -q "op\.\(add\|drop\|create\|alter\|batch\)" "$new"; then
  echo "note: the models match the head schema; $new is empty (edit it by hand or delete it)"
fi
echo "new revision: $new"
echo "next: review it, then run tests/tre/test_migrations.py and tests/tre/test_migration_upgrades.py"
