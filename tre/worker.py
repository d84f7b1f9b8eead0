"""The Celery entry point: ``celery -A tre.worker worker``. Tasks run inside the Flask app context."""

from tre.core.filemodes import restrict_umask

restrict_umask()  # before anything is written: what the worker writes is the service's alone

from tre.app import create_app  # noqa: E402

flask_app = create_app()
celery = flask_app.extensions["celery"]
app = celery
