"""Signing in (password, then a TOTP code), enrolling MFA, signing out, and reset links."""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import urlsplit

import qrcode
import qrcode.image.svg
from flask import Blueprint, redirect, render_template, request, session, url_for
from werkzeug.wrappers import Response

from tre.access import login_required, public
from tre.authn import identity_service, platform, start_session
from tre.core.db import utcnow
from tre.core.identity import IdentityError, User

bp = Blueprint("auth", __name__, url_prefix="/auth")

PENDING_LIFETIME_SECONDS = 300


def safe_next(target: str | None) -> str:
    """Only ever redirect to a path on this site (no open redirects)."""
    if not target:
        return url_for("web.home")
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return url_for("web.home")
    return target


def begin_second_factor(user: User, next_url: str) -> Response:
    """The first factor (password or single sign-on) is done: a fresh session that holds only that
    fact, for five minutes, and the way to the TOTP code (or to enrolling it)."""
    session.clear()
    session["pending_uid"] = user.id
    session["pending_at"] = int(utcnow().timestamp())
    session["next"] = next_url
    return redirect(url_for("auth.second_factor" if user.mfa_enrolled else "auth.enrol"))


def _pending_user() -> User | None:
    uid = session.get("pending_uid")
    started = session.get("pending_at", 0)
    if not uid or int(utcnow().timestamp()) - int(started) > PENDING_LIFETIME_SECONDS:
        return None
    user = platform().db.session.get(User, uid)
    return user if user is not None and user.is_active else None


@bp.route("/login", methods=["GET", "POST"])
@public
def login() -> Any:
    error = None
    email = ""
    if request.method == "POST":
        email = request.form.get("email", "")
        try:
            user = identity_service().authenticate(email, request.form.get("password", ""))
        except IdentityError as exc:
            error = str(exc)
        else:
            return begin_second_factor(user, safe_next(request.form.get("next")))
    from tre.web.sso import sso_display_name

    status = 400 if error else 200
    return render_template(
        "auth/login.html", title="Sign in", error=error, email=email,
        next=request.args.get("next", ""), sso_name=sso_display_name(),
    ), status


@bp.route("/mfa", methods=["GET", "POST"])
@public
def second_factor() -> Any:
    user = _pending_user()
    if user is None or not user.mfa_enrolled:
        return redirect(url_for("auth.login"))
    error = None
    if request.method == "POST":
        try:
            user = identity_service().verify_second_factor(user.id, request.form.get("code", ""))
        except IdentityError as exc:
            error = str(exc)
        else:
            next_url = session.get("next")
            start_session(user)
            return redirect(safe_next(next_url))
    return render_template("auth/mfa.html", title="Enter your security code", error=error), (400 if error else 200)


def _seal_enrolment(uid: str, secret: str) -> str:
    return base64.b64encode(platform().keys.seal(secret.encode(), f"totp-enrol:{uid}")).decode()


def _unseal_enrolment(uid: str, sealed: str) -> str:
    return platform().keys.unseal(base64.b64decode(sealed), f"totp-enrol:{uid}").decode()


@bp.route("/mfa/enrol", methods=["GET", "POST"])
@public
def enrol() -> Any:
    user = _pending_user()
    if user is None:
        return redirect(url_for("auth.login"))
    if user.mfa_enrolled:
        return redirect(url_for("auth.second_factor"))
    service = identity_service()
    error = None
    sealed = session.get("enrol_secret")
    if request.method == "POST" and sealed:
        secret = _unseal_enrolment(user.id, sealed)
        try:
            codes = service.finish_mfa_enrolment(user.id, secret, request.form.get("code", ""))
        except IdentityError as exc:
            error = str(exc)
        else:
            next_url = session.get("next")
            start_session(platform().db.session.get(User, user.id))
            return render_template(
                "auth/recovery_codes.html", title="Save your recovery codes", codes=codes,
                next=safe_next(next_url),
            )
    elif sealed:
        # Reloading the page keeps the secret the person may already have scanned.
        secret = _unseal_enrolment(user.id, sealed)
    else:
        secret = service.start_mfa_enrolment(user)
        session["enrol_secret"] = _seal_enrolment(user.id, secret)
    uri = service.provisioning_uri(user, secret)
    image = qrcode.make(uri, image_factory=qrcode.image.svg.SvgPathImage, box_size=8)
    svg = image.to_string(encoding="unicode")
    return render_template(
        "auth/enrol.html", title="Set up multi-factor authentication", qr_svg=svg, secret=secret, error=error,
    ), (400 if error else 200)


@bp.post("/logout")
@login_required
def logout() -> Response:
    identity_service().sign_out(session["uid"])
    session.clear()
    return redirect(url_for("web.home"))


@bp.route("/reset", methods=["GET", "POST"])
@public
def reset() -> Any:
    """Set a new password with an administrator's single-use link.

    The link carries its token after ``#``, which browsers never send to the server, so it cannot
    end up in access logs; a small script moves it into the form.
    """
    error = None
    if request.method == "POST":
        try:
            identity_service().reset_password(request.form.get("token", ""), request.form.get("password", ""))
        except IdentityError as exc:
            error = str(exc)
        else:
            session.clear()
            return render_template("auth/reset_done.html", title="Password changed")
    return render_template("auth/reset.html", title="Choose a new password", error=error), (400 if error else 200)
