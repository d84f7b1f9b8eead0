"""The WSGI entry point for gunicorn: ``gunicorn tre.wsgi:app``."""

import importlib

from tre.core.filemodes import restrict_umask

restrict_umask()  # before anything is written: what gunicorn's workers write is the service's alone

from tre.app import compile_templates, create_app  # noqa: E402
from tre.core.queue import prepare_to_send  # noqa: E402

app = create_app()

# Loaded here, in each worker before it serves, rather than by the first request that needs them:
# there the import took seconds on a busy machine, and the worker's other threads waited for it on
# Python's import lock. The broker's transport is needed by the first request that sends a job; the
# disclosure check job and engine (pandas, SciPy: over a second on an idle machine) by the first
# output submission or output queue page.
prepare_to_send(app.extensions["celery"])
for module in ("disclosure.checks", "disclosure.engine"):
    importlib.import_module(module)
# Every page template compiled now, once per worker, not by the first request of each page: under
# the load benchmark those first compilations were 8 % of the web processes' CPU (issue 26) and
# the slowest requests of a fresh worker.
compile_templates(app)
