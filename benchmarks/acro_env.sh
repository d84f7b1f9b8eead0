#!/usr/bin/env bash
# Build a separate virtual environment holding ACRO 1.0.2 for the differential test and the benchmark.
#
# Why a separate venv: acro 1.0.2 pins pandas<=2.3.3, while the project runs pandas 3.x, so installing it
# into .venv would downgrade pandas. The tests and the benchmark talk to this venv through a subprocess.
# The venv (.venv-acro/) is a local build artefact and is never committed.
#
# Usage: benchmarks/acro_env.sh [PYTHON]   (defaults to the interpreter of .venv, else python3)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="${ACRO_VENV:-$here/.venv-acro}"
python="${1:-}"
if [ -z "$python" ]; then
    if [ -x "$here/.venv/bin/python" ]; then
        python="$("$here/.venv/bin/python" -c 'import sys; print(sys._base_executable)')"
    else
        python=python3
    fi
fi
if [ ! -x "$target/bin/python" ]; then
    "$python" -m venv "$target"
fi
"$target/bin/python" -m pip install --quiet --upgrade pip
"$target/bin/python" -m pip install --quiet "acro==1.0.2"
"$target/bin/python" -c 'import acro, pandas; print("acro ready; pandas", pandas.__version__)'
