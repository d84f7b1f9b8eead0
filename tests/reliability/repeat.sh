#!/usr/bin/env bash
# Run the tests that kill workers, crash the database or race requests N times in a row and print
# one line per run: pass/fail, seconds, pytest's summary. With LOAD=1 both cores are kept busy
# meanwhile (stress-ng --cpu 2 if installed, else two `yes`), to show the tests hold on a loaded
# machine. Usage: tests/reliability/repeat.sh [N]   (or `make test-reliability N=5 LOAD=1`)
set -uo pipefail
cd "$(dirname "$0")/../.."
N="${1:-5}"
export TRE_TEST_POSTGRES_URL="${TRE_TEST_POSTGRES_URL:-postgresql+psycopg://postgres@127.0.0.1:5432/test}"
export TRE_TEST_REDIS_URL="${TRE_TEST_REDIS_URL:-redis://127.0.0.1:6379/15}"
export TRE_TEST_RABBITMQ_URL="${TRE_TEST_RABBITMQ_URL:-amqp://guest:guest@127.0.0.1:5672//}"
TESTS=(
  tests/reliability
  tests/tre/core/test_jobs_worker_killed.py
  tests/disclosure/test_checks_worker_killed.py
  tests/disclosure/rerun/test_rerun_worker_killed.py
  tests/pseudonymisation/test_partitioned_extracts_workers.py
  tests/pseudonymisation/test_person_index_worker_killed.py
  "tests/pseudonymisation/test_pipeline.py::test_an_extract_killed_with_sigkill_resumes_and_is_identical"
)

load_pids=()
stop_load() { for pid in "${load_pids[@]}"; do kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done; }
trap stop_load EXIT
if [ "${LOAD:-0}" = 1 ]; then
  if command -v stress-ng >/dev/null 2>&1; then
    stress-ng --cpu 2 --quiet --timeout 0 & load_pids+=($!)
  else
    yes >/dev/null & load_pids+=($!)
    yes >/dev/null & load_pids+=($!)
  fi
  echo "load: both cores busy (pids ${load_pids[*]})"
fi

failed=0
for i in $(seq 1 "$N"); do
  log="$(mktemp -t tre-reliability-run-XXXX.log)"
  start=$(date +%s)
  .venv/bin/python -m pytest -q -p no:cacheprovider "${TESTS[@]}" >"$log" 2>&1
  rc=$?
  secs=$(( $(date +%s) - start ))
  summary="$(tail -n 1 "$log")"
  if [ "$rc" = 0 ]; then
    echo "run $i/$N: PASS ${secs}s  $summary"
    rm -f "$log"
  else
    failed=$((failed + 1))
    echo "run $i/$N: FAIL ${secs}s  $summary  (log: $log)"
  fi
done
echo "$((N - failed))/$N runs passed"
[ "$failed" = 0 ]
