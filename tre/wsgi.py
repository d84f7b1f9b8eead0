"""The WSGI entry point for gunicorn: ``gunicorn tre.wsgi:app``."""

from tre.app import create_app

app = create_app()
