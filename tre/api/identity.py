"""People and credentials over the API: who am I, manage accounts (administrators), signing keys."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from flask import g
from flask_smorest import Blueprint, abort
from sqlalchemy import select

from tre.access import login_required, public, requires
from tre.api import refuse
from tre.authn import identity_service, platform
from tre.core.identity import IdentityError, User, describe
from tre.core.permissions import Permission, Role
from tre.core.roles import NO_SUCH_GRANT, describe_grant

blp = Blueprint("identity", __name__, description="People, roles and credentials")
BEARER = [{"bearer": []}]


class UserSchema(ma.Schema):
    id = ma.fields.String(dump_only=True)
    email = ma.fields.Email(required=True)
    display_name = ma.fields.String(required=True, validate=ma.validate.Length(min=1, max=200))
    roles = ma.fields.List(ma.fields.String(validate=ma.validate.OneOf([r.value for r in Role])), required=True)
    is_active = ma.fields.Boolean(dump_only=True)
    mfa_enrolled = ma.fields.Boolean(dump_only=True)
    locked = ma.fields.Boolean(dump_only=True)


class UserWithGrantsSchema(UserSchema):
    # Roles that touch data asked for in this call, waiting for a second administrator (ADR 0010).
    awaiting_second_administrator = ma.fields.List(ma.fields.String(), dump_only=True)


class RoleGrantSchema(ma.Schema):
    id = ma.fields.String()
    user_id = ma.fields.String()
    role = ma.fields.String()
    requested_by = ma.fields.String()
    requested_at = ma.fields.String()
    state = ma.fields.String()


class GrantDecisionSchema(ma.Schema):
    approve = ma.fields.Boolean(required=True)


class RolesSchema(ma.Schema):
    roles = ma.fields.List(ma.fields.String(validate=ma.validate.OneOf([r.value for r in Role])), required=True)


class JwkSchema(ma.Schema):
    kty = ma.fields.String()
    crv = ma.fields.String()
    x = ma.fields.String()
    kid = ma.fields.String()
    use = ma.fields.String()
    alg = ma.fields.String()


class JwksSchema(ma.Schema):
    keys = ma.fields.List(ma.fields.Nested(JwkSchema))


@blp.route("/me")
@blp.response(200, UserSchema)
@blp.doc(security=BEARER)
@login_required
def me() -> dict[str, Any]:
    """The account the token belongs to."""
    return describe(g.user)


@blp.route("/users")
@blp.response(200, UserSchema(many=True))
@blp.doc(security=BEARER)
@requires(Permission.USER_MANAGE)
def list_users() -> list[dict[str, Any]]:
    """Every account (administrators)."""
    return [describe(u) for u in platform().db.session.scalars(select(User).order_by(User.email))]


@blp.route("/users", methods=["POST"])
@blp.arguments(UserSchema)
@blp.response(201, UserWithGrantsSchema)
@blp.doc(security=BEARER)
@requires(Permission.USER_MANAGE)
def create_user(body: dict[str, Any]) -> dict[str, Any]:
    """Create an account; the person sets a password through a reset link."""
    try:
        service = identity_service()
        user = service.create_user(g.user, body["email"], body["display_name"], body["roles"])
    except IdentityError as exc:
        refuse(exc)
    return _with_grants(service, user)


def _with_grants(service: Any, user: User) -> dict[str, Any]:
    pending = service.pending_role_grants(g.user, user.id)
    return {**describe(user), "awaiting_second_administrator": sorted(grant.role for grant in pending)}


@blp.route("/users/<string:user_id>/roles", methods=["PUT"])
@blp.arguments(RolesSchema)
@blp.response(200, UserWithGrantsSchema)
@blp.doc(security=BEARER)
@requires(Permission.USER_MANAGE)
def set_roles(body: dict[str, Any], user_id: str) -> dict[str, Any]:
    """Replace an account's roles; a role that touches data is only requested, for a second
    administrator to approve (listed in ``awaiting_second_administrator``)."""
    service = identity_service()
    try:
        user, awaiting = service.change_roles(g.user, user_id, body["roles"])
    except IdentityError as exc:
        if str(exc) == "No such account":
            abort(404)
        refuse(exc)
    # What the change's transaction saw and wrote: no second read of the pending grants.
    return {**describe(user), "awaiting_second_administrator": awaiting}


@blp.route("/role-grants")
@blp.response(200, RoleGrantSchema(many=True))
@blp.doc(security=BEARER)
@requires(Permission.USER_MANAGE)
def list_role_grants() -> list[dict[str, Any]]:
    """Roles that touch data waiting for a second administrator's approval."""
    return [describe_grant(grant) for grant in identity_service().pending_role_grants(g.user)]


@blp.route("/role-grants/<string:grant_id>/decision", methods=["POST"])
@blp.arguments(GrantDecisionSchema)
@blp.response(200, RoleGrantSchema)
@blp.doc(security=BEARER)
@requires(Permission.USER_MANAGE)
def decide_role_grant(body: dict[str, Any], grant_id: str) -> dict[str, Any]:
    """Approve (a second administrator: not the one who asked, not the person receiving it) or refuse."""
    try:
        grant = identity_service().decide_role_grant(g.user, grant_id, approve=body["approve"])
    except IdentityError as exc:
        if str(exc) == NO_SUCH_GRANT:
            abort(404, message=str(exc))
        refuse(exc)
    return describe_grant(grant)


@blp.route("/jwks.json")
@blp.response(200, JwksSchema)
@public
def jwks() -> dict[str, Any]:
    """The public keys that verify this service's tokens (JupyterHub and workspaces use them)."""
    return platform().tokens.jwks()
