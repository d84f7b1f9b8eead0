"""A person's own account: changing their password, and personal API tokens for scripts (shown once,
stored hashed, revocable)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, flash, g, redirect, render_template, request, session, url_for

from tre.access import login_required
from tre.authn import identity_service, start_session
from tre.core.identity import IdentityError
from tre.web.confirm import Confirmation, render_confirmation

bp = Blueprint("account", __name__, url_prefix="/account")


def _sso_context() -> dict[str, Any]:
    from tre.web.sso import sso_display_name

    # The links are shown only when single sign-on is on: with it off they are not read.
    name = sso_display_name()
    return {"sso_name": name, "sso_links": identity_service().oidc_links(g.user.id) if name else []}


@bp.get("/")
@login_required
def index() -> str:
    return render_template(
        "account/index.html", title="Your account", tokens=identity_service().personal_tokens(g.user), new_token=None,
        **_sso_context(),
    )


@bp.route("/password", methods=["GET", "POST"])
@login_required
def change_password() -> Any:
    error = None
    if request.method == "POST":
        new_password = request.form.get("password", "")
        if new_password != request.form.get("password_again", ""):
            error = "The two new passwords are not the same"
        else:
            try:
                user = identity_service().change_password(
                    g.user.id, request.form.get("current_password", ""), request.form.get("code", ""), new_password
                )
            except IdentityError as exc:
                error = str(exc)
            else:
                # Every session of the account has ended; this browser gets a fresh one that keeps
                # the original sign-in time, so the absolute session limit is not extended.
                start_session(user, signed_in_at=session.get("signed_in"))
                flash("Your password has been changed. You have been signed out everywhere else", "success")
                return redirect(url_for("account.index"))
    return render_template(
        "account/password.html", title="Change your password", error=error
    ), (400 if error else 200)


@bp.post("/tokens")
@login_required
def create_token() -> Any:
    service = identity_service()
    try:
        days = int(request.form.get("days", "30"))
        _, plaintext = service.create_personal_token(g.user, request.form.get("name", ""), days)
    except (IdentityError, ValueError) as exc:
        flash(str(exc) if isinstance(exc, IdentityError) else "Enter the number of days as a number", "error")
        return redirect(url_for("account.index"))
    return render_template(
        "account/index.html", title="Your account", tokens=service.personal_tokens(g.user), new_token=plaintext,
        **_sso_context(),
    )


@bp.get("/tokens/<token_id>/revoke")
@login_required
def confirm_revoke_token(token_id: str) -> Any:
    token = identity_service().personal_token(g.user, token_id)
    if token is None:  # someone else's token is not found, as the revocation says
        abort(404)
    if token.revoked_at is not None:
        flash("That token is already revoked", "error")
        return redirect(url_for("account.index"))
    return render_confirmation(
        Confirmation(
            caption="Your account",
            question=f"Are you sure you want to revoke the token \u201c{token.name}\u201d?",
            consequences=[
                "Scripts and programs using it are refused from now on",
                "To carry on, create a new token and give it to them",
            ],
            warning="A revoked token cannot be used again",
            action=url_for("account.revoke_token", token_id=token.id),
            button="Yes, revoke the token",
            cancel=url_for("account.index"),
            cancel_text="No, keep the token",
        ),
        title="Revoke a token",
    )


@bp.post("/tokens/<token_id>/revoke")
@login_required
def revoke_token(token_id: str) -> Any:
    try:
        identity_service().revoke_personal_token(g.user, token_id)
    except IdentityError as exc:
        flash(str(exc), "error")
    else:
        flash("Token revoked", "success")
    return redirect(url_for("account.index"))
