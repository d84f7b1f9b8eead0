"""The Celery entry point: ``celery -A tre.worker worker``. Tasks run inside the Flask app context."""

from tre.app import create_app

flask_app = create_app()
celery = flask_app.extensions["celery"]
app = celery
