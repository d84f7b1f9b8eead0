#!/usr/bin/env bash
# Build the Python runtime that every workspace runs: a venv made from the system Python (which any unix
# account may execute, unlike a pyenv under /root), owned by root and read-only to everyone else, with the
# project's `disclosure` package and the in-workspace client (`jupyter.client`, `tre-submit`) copied in.
#
#   infra/jupyterhub/build-workspace-runtime.sh [PREFIX]     (default PREFIX: $TRE_WORKSPACE_RUNTIME or /opt/tre-workspace)
#
# Re-running is cheap: packages are reinstalled only when the requirements change; the project code is
# always recopied so a workspace sees the current checker rules.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
prefix="${1:-${TRE_WORKSPACE_RUNTIME:-/opt/tre-workspace}}"
base_python="${TRE_WORKSPACE_BASE_PYTHON:-/usr/bin/python3}"
requirements="$here/workspace-requirements.txt"

if ! "$base_python" -c 'import ensurepip, venv' 2>/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get install -y -qq python3-venv >/dev/null
  else
    echo "error: $base_python has no venv/ensurepip (install Debian's python3-venv)" >&2
    exit 1
  fi
fi

stamp="$prefix/.requirements.sha256"
want="$(sha256sum "$requirements" | cut -d' ' -f1)"
if [ ! -x "$prefix/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "$base_python" -m venv "$prefix"
  "$prefix/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
  "$prefix/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
  echo "$want" > "$stamp"
fi

site="$("$prefix/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
# Copied straight into site-packages: a package folder there wins over jupyter_core's top-level
# jupyter.py, so `import jupyter.client` finds ours.
for package in disclosure jupyter; do
  rm -rf "${site:?}/$package"
  cp -r "$repo/$package" "$site/$package"
  find "$site/$package" -name '__pycache__' -prune -exec rm -rf {} +
done

cat > "$prefix/bin/tre-submit" <<PY
#!$prefix/bin/python
"""Submit files from this workspace to the output-checking queue."""
import sys

from jupyter.client import main

sys.exit(main())
PY
chmod 0755 "$prefix/bin/tre-submit"

# The browser may view the work but not download files: see jupyter/workspace_guard.py. These files sit
# in the runtime's own config path (sys.prefix), which a workspace account cannot write.
mkdir -p "$prefix/etc/jupyter/jupyter_server_config.d" "$prefix/etc/jupyter/labconfig"
cat > "$prefix/etc/jupyter/jupyter_server_config.d/tre-workspace-guard.json" <<'JSON'
{"ServerApp": {"jpserver_extensions": {"jupyter.workspace_guard": true}}}
JSON
# The conf.d files only enable extensions; other settings belong in the main config file.
cat > "$prefix/etc/jupyter/jupyter_server_config.json" <<'JSON'
{"ServerApp": {"contents_manager_class": "jupyter.workspace_guard.GuardedContentsManager"}}
JSON
cat > "$prefix/etc/jupyter/labconfig/page_config.json" <<'JSON'
{
  "disabledExtensions": {
    "@jupyterlab/docmanager-extension:download": true,
    "@jupyterlab/filebrowser-extension:download": true
  }
}
JSON

# Nobody but root may change what workspaces execute; everybody may read and run it.
chown -R root:root "$prefix" 2>/dev/null || true
chmod -R u+rwX,go+rX,go-w "$prefix"
"$prefix/bin/python" -c 'import jupyterlab, pandas, pyarrow, statsmodels, matplotlib, disclosure, jupyter.client, jupyter.workspace_guard' \
  && echo "workspace runtime ready: $prefix"
