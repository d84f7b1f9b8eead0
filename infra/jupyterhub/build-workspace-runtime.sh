#!/usr/bin/env bash
# Build the Python runtime that every workspace runs: a venv made from the system Python (which any unix
# account may execute, unlike a pyenv under /root), owned by root and read-only to everyone else, with the
# project's `disclosure` package and the in-workspace client (`jupyter.client`, `tre-submit`) copied in, and
# the JupyterLab extension of jupyter/labextension built (npm) and installed.
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
# Opening fast (docs/workspaces.md): jsonschema imports rfc3987-syntax whenever it is installed (jupyter-events
# pulls it in, for IRI formats no Jupyter event schema uses), and it builds a Lark grammar at import: 1-4 s
# of every workspace start on this machine. Without it jsonschema simply does not check IRI formats.
if "$prefix/bin/python" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("rfc3987_syntax") is None)'; then
  "$prefix/bin/python" -m pip uninstall --quiet --disable-pip-version-check -y rfc3987-syntax
fi
# Copied straight into site-packages: a package folder there wins over jupyter_core's top-level
# jupyter.py, so `import jupyter.client` finds ours.
# jupyter/labextension is the browser's code (and its node_modules): built below, never copied here.
for package in disclosure jupyter; do
  rm -rf "${site:?}/$package"
  tar -C "$repo" --exclude=jupyter/labextension --exclude=__pycache__ -cf - "$package" | tar -C "$site" -xf -
done
# Workspace accounts cannot write the runtime, so whatever is not compiled here is compiled again, in
# memory, at every server and kernel start. pip compiled what it installed; this covers our packages and
# anything pip left out (files already compiled are only checked).
"$prefix/bin/python" -m compileall -q -j 0 "$site" >/dev/null

# JupyterLab's "Submit for output checking…" entry (jupyter/labextension), built with the npm lock against
# this runtime's own JupyterLab (its staging package.json says which shared packages the page provides)
# and installed where JupyterLab finds prebuilt extensions. Rebuilt only when its sources, its lock or
# JupyterLab change.
labext="$repo/jupyter/labextension"
labext_dest="$prefix/share/jupyter/labextensions/tre-output-submit"
labext_stamp="$prefix/.labextension.sha256"
core="$("$prefix/bin/python" -c 'import jupyterlab, os; print(os.path.join(os.path.dirname(jupyterlab.__file__), "staging"))')"
labext_want="$(cat "$labext/package.json" "$labext/package-lock.json" "$labext/tsconfig.json" "$labext"/src/* \
  "$core/package.json" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$labext_dest/package.json" ] || [ "$(cat "$labext_stamp" 2>/dev/null)" != "$labext_want" ]; then
  command -v npm >/dev/null || { echo "error: npm is needed to build the JupyterLab extension" >&2; exit 1; }
  (
    cd "$labext"
    npm ci --no-audit --no-fund --loglevel=error
    rm -rf lib build
    log="$(mktemp)"
    JUPYTERLAB_CORE="$core" npm run --silent build >"$log" 2>&1 || { tail -n 40 "$log" >&2; rm -f "$log"; exit 1; }
    rm -f "$log"
  )
  rm -rf "$labext_dest"
  mkdir -p "$(dirname "$labext_dest")"
  cp -r "$labext/build/tre-output-submit" "$labext_dest"
  echo "$labext_want" > "$labext_stamp"
fi

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
{
  "ServerApp": {"contents_manager_class": "jupyter.workspace_guard.GuardedContentsManager"},
  "LabApp": {
    "news_url": null,
    "check_for_updates_class": "jupyterlab.handlers.announcements.NeverCheckForUpdate",
    "extension_manager": "readonly"
  }
}
JSON
# Opening fast: no language servers are installed, so jupyter-lsp's search for them at every start is
# wasted work; notebook_shim's server extension only carries the classic notebook server's settings and
# extensions over (there are none here) and imports IPython into the server to do it (ADR 0028). Read
# after the packages' own conf.d files, so this one wins.
cat > "$prefix/etc/jupyter/jupyter_server_config.d/zz-tre-workspace-fast.json" <<'JSON'
{"ServerApp": {"jpserver_extensions": {"jupyter_lsp": false, "notebook_shim": false}}}
JSON
cat > "$prefix/etc/jupyter/labconfig/page_config.json" <<'JSON'
{
  "disabledExtensions": {
    "@jupyterlab/docmanager-extension:download": true,
    "@jupyterlab/filebrowser-extension:download": true
  }
}
JSON

# Every Python kernel gets `%%sql` (jupyter/sql.py): IPython reads the runtime's own config (sys.prefix).
mkdir -p "$prefix/etc/ipython"
cat > "$prefix/etc/ipython/ipython_kernel_config.json" <<'JSON'
{"InteractiveShellApp": {"extensions": ["jupyter.sql"]}}
JSON

# R (ADR 0014): Debian's R, IRkernel and the common analysis packages, seen inside the sandbox through
# its read-only /usr (and /etc/R). Installed only as root and only when one is missing, so a re-run with
# nothing changed costs one dpkg-query. Without them the runtime is still complete for Python and SQL.
r_packages="r-base-core r-cran-irkernel r-cran-reticulate r-cran-data.table r-cran-survival r-cran-ggplot2
  r-cran-dplyr r-cran-tidyr r-cran-readr"
# shellcheck disable=SC2086
r_installed="$(dpkg-query -W -f='${Status}\n' $r_packages 2>/dev/null | grep -c '^install ok installed$' || true)"
if [ "$r_installed" = "$(echo $r_packages | wc -w)" ]; then
  :
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq && apt-get install -y -qq --no-install-recommends $r_packages >/dev/null
else
  echo "note: R not installed (needs root: $r_packages); workspaces offer Python and SQL only" >&2
fi
r_kernel="$prefix/share/jupyter/kernels/ir"
rm -rf "$r_kernel"
if [ -x /usr/lib/R/bin/R ] && [ -d /usr/lib/R/site-library/IRkernel ]; then
  mkdir -p "$r_kernel" "$prefix/share/tre/R"
  cp "$here/R/tre.R" "$prefix/share/tre/R/tre.R"
  cp /usr/lib/R/site-library/IRkernel/kernelspec/logo-* "$r_kernel/"
  cat > "$r_kernel/kernel.json" <<JSON
{
  "argv": ["/usr/lib/R/bin/R", "--no-save", "--no-restore", "--slave", "-e",
           "sys.source('$prefix/share/tre/R/tre.R', envir = attach(NULL, name = 'tre')); IRkernel::main()",
           "--args", "{connection_file}"],
  "display_name": "R",
  "language": "R",
  "env": {"RETICULATE_PYTHON": "$prefix/bin/python"}
}
JSON
fi

# Nobody but root may change what workspaces execute; everybody may read and run it.
chown -R root:root "$prefix" 2>/dev/null || true
chmod -R u+rwX,go+rX,go-w "$prefix"
"$prefix/bin/python" -c 'import jupyterlab, pandas, pyarrow, duckdb, statsmodels, matplotlib, disclosure, jupyter.client, jupyter.sql, jupyter.workspace_guard' \
  && [ -f "$labext_dest/package.json" ] \
  && echo "workspace runtime ready: $prefix"
