"""People and credentials over the API: who am I, manage accounts (administrators), signing keys."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from flask import g
from flask_smorest import Blueprint, abort
from sqlalchemy import select

from tre.access import login_required, public, requires
from tre.authn import identity_service, platform
from tre.core.identity import IdentityError, PermissionDenied, User, describe
from tre.core.permissions import Permission, Role

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


def _refuse(exc: IdentityError) -> Any:
    abort(403 if isinstance(exc, PermissionDenied) else 422, message=str(exc))


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
@blp.response(201, UserSchema)
@blp.doc(security=BEARER)
@requires(Permission.USER_MANAGE)
def create_user(body: dict[str, Any]) -> dict[str, Any]:
    """Create an account; the person sets a password through a reset link."""
    try:
        user = identity_service().create_user(g.user, body["email"], body["display_name"], body["roles"])
    except IdentityError as exc:
        _refuse(exc)
    return describe(user)


@blp.route("/users/<string:user_id>/roles", methods=["PUT"])
@blp.arguments(RolesSchema)
@blp.response(200, UserSchema)
@blp.doc(security=BEARER)
@requires(Permission.USER_MANAGE)
def set_roles(body: dict[str, Any], user_id: str) -> dict[str, Any]:
    """Replace an account's roles."""
    try:
        user = identity_service().set_roles(g.user, user_id, body["roles"])
    except IdentityError as exc:
        if str(exc) == "No such account":
            abort(404)
        _refuse(exc)
    return describe(user)


@blp.route("/jwks.json")
@blp.response(200, JwksSchema)
@public
def jwks() -> dict[str, Any]:
    """The public keys that verify this service's tokens (JupyterHub and workspaces use them)."""
    return platform().tokens.jwks()
