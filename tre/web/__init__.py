"""Server-rendered pages (Jinja, NHS.UK frontend). Views parse, authorise and call a service; no more."""

from __future__ import annotations

from flask import Blueprint, render_template

from tre.access import public

bp = Blueprint("web", __name__, template_folder="templates", static_folder=None)


@bp.get("/")
@public
def home() -> str:
    from tre.web.home import render_home

    return render_home()


@bp.get("/about")
@public
def about() -> str:
    return render_template("about.html", title="About the Five Safes")
