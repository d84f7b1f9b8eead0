"""Administrators manage people: accounts, roles, activation and single-use reset links."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, flash, g, redirect, render_template, request, url_for
from sqlalchemy import select

from tre.access import requires
from tre.authn import identity_service, platform
from tre.core.identity import IdentityError, User
from tre.core.permissions import ROLE_LABELS, Permission, Role
from tre.web.confirm import Confirmation, render_confirmation

bp = Blueprint("admin", __name__, url_prefix="/admin")


@bp.get("/users")
@requires(Permission.USER_MANAGE)
def users() -> str:
    people = platform().db.session.scalars(select(User).order_by(User.display_name)).all()
    return render_template("admin/users.html", title="People", people=people, role_labels=ROLE_LABELS)


@bp.route("/users/new", methods=["GET", "POST"])
@requires(Permission.USER_MANAGE)
def new_user() -> Any:
    error = None
    form = request.form
    if request.method == "POST":
        try:
            user = identity_service().create_user(
                g.user, form.get("email", ""), form.get("display_name", ""), form.getlist("roles")
            )
        except IdentityError as exc:
            error = str(exc)
        else:
            flash(f"Account created for {user.display_name}. Issue a reset link so they can set a password.", "success")
            return redirect(url_for("admin.user", user_id=user.id))
    return render_template(
        "admin/new_user.html", title="Add a person", error=error, form=form, roles=list(Role), role_labels=ROLE_LABELS
    ), (400 if error else 200)


def _get_user(user_id: str) -> User:
    user = platform().db.session.get(User, user_id)
    if user is None:
        abort(404)
    return user


@bp.get("/users/<user_id>")
@requires(Permission.USER_MANAGE)
def user(user_id: str) -> str:
    return render_template(
        "admin/user.html", title="Manage account", person=_get_user(user_id), roles=list(Role),
        role_labels=ROLE_LABELS, reset_link=None, sso_links=identity_service().oidc_links(user_id),
        grants=identity_service().pending_role_grants(g.user, user_id),
    )


@bp.post("/users/<user_id>/roles")
@requires(Permission.USER_MANAGE)
def set_roles(user_id: str) -> Any:
    service = identity_service()
    try:
        service.set_roles(g.user, _get_user(user_id).id, request.form.getlist("roles"))
    except IdentityError as exc:
        flash(str(exc), "error")
    else:
        waiting = service.pending_role_grants(g.user, user_id)
        flash("Roles saved" + (
            f"; {', '.join(ROLE_LABELS[Role(w.role)] for w in waiting)} need a second administrator's approval"
            if waiting else ""
        ), "success")
    return redirect(url_for("admin.user", user_id=user_id))


@bp.post("/role-grants/<grant_id>/decision")
@requires(Permission.USER_MANAGE)
def decide_role_grant(grant_id: str) -> Any:
    """A second administrator approves a role that touches data, or any administrator refuses it."""
    approve = request.form.get("approve") == "1"
    try:
        grant = identity_service().decide_role_grant(g.user, grant_id, approve=approve)
    except IdentityError as exc:
        flash(str(exc), "error")
        return redirect(url_for("admin.users"))
    flash("Role approved" if approve else "Role refused", "success")
    return redirect(url_for("admin.user", user_id=grant.user_id))


@bp.get("/users/<user_id>/active")
@requires(Permission.USER_MANAGE)
def confirm_deactivate(user_id: str) -> Any:
    """Deactivating ends every session and token of the person: confirmed first. (Reactivating needs
    no confirmation and posts straight from the person's page.)"""
    person = _get_user(user_id)
    back = url_for("admin.user", user_id=person.id)
    if not person.is_active:
        flash("That account is already inactive", "error")
        return redirect(back)
    if person.id == g.user.id:
        flash("You cannot deactivate your own account", "error")
        return redirect(back)
    return render_confirmation(
        Confirmation(
            caption=person.email,
            question=f"Are you sure you want to deactivate {person.display_name}'s account?",
            consequences=[
                f"{person.display_name} is signed out everywhere and cannot sign in",
                "Every API token of theirs stops working for good",
                "Their projects, roles and history are kept; reactivating the account lets them sign in again",
            ],
            action=url_for("admin.set_active", user_id=person.id),
            hidden=(("active", "0"),),
            button="Yes, deactivate the account",
            cancel=back,
            cancel_text="No, keep the account active",
        ),
        title=f"Deactivate {person.display_name}",
    )


@bp.post("/users/<user_id>/active")
@requires(Permission.USER_MANAGE)
def set_active(user_id: str) -> Any:
    active = request.form.get("active") == "1"
    try:
        identity_service().set_active(g.user, _get_user(user_id).id, active)
    except IdentityError as exc:
        flash(str(exc), "error")
    else:
        flash("Account reactivated" if active else "Account deactivated and signed out everywhere", "success")
    return redirect(url_for("admin.user", user_id=user_id))


@bp.post("/users/<user_id>/reset-link")
@requires(Permission.USER_MANAGE)
def reset_link(user_id: str) -> str:
    person = _get_user(user_id)
    token = identity_service().issue_reset_link(g.user, person.id)
    # Shown once, to the administrator, to pass on by a trusted channel; stored only as a hash.
    link = url_for("auth.reset", _external=True) + "#token=" + token
    return render_template(
        "admin/user.html", title="Manage account", person=person, roles=list(Role),
        role_labels=ROLE_LABELS, reset_link=link, sso_links=identity_service().oidc_links(person.id),
        grants=identity_service().pending_role_grants(g.user, person.id),
    )


@bp.get("/users/<user_id>/sso/<link_id>/remove")
@requires(Permission.USER_MANAGE)
def confirm_remove_sso_link(user_id: str, link_id: str) -> Any:
    person = _get_user(user_id)
    link = next((x for x in identity_service().oidc_links(person.id) if x.id == link_id), None)
    if link is None:
        abort(404)
    return render_confirmation(
        Confirmation(
            caption=person.email,
            question=f"Are you sure you want to remove {person.display_name}'s single sign-on link?",
            consequences=[
                f"{person.display_name} can no longer sign in through {link.issuer}",
                "They sign in with their password and second factor instead",
                "They can link single sign-on again from their own account page",
            ],
            action=url_for("admin.remove_sso_link", user_id=person.id, link_id=link.id),
            button="Yes, remove the link",
            cancel=url_for("admin.user", user_id=person.id),
            cancel_text="No, keep the link",
        ),
        title="Remove a single sign-on link",
    )


@bp.post("/users/<user_id>/sso/<link_id>/remove")
@requires(Permission.USER_MANAGE)
def remove_sso_link(user_id: str, link_id: str) -> Any:
    try:
        identity_service().remove_oidc_link(g.user, _get_user(user_id).id, link_id)
    except IdentityError as exc:
        flash(str(exc), "error")
    else:
        flash("Single sign-on link removed: the person now signs in with their password", "success")
    return redirect(url_for("admin.user", user_id=user_id))
