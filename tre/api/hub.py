"""The two calls JupyterHub makes (with its service secret): redeem a login token, and ask whether
a workspace server may start. Their JSON shapes are the contract in ``jupyter/controlplane.py``."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from flask import current_app, g
from flask_smorest import Blueprint, abort

from tre.access import hub_service
from tre.workspaces import workspaces_service

blp = Blueprint("hub", __name__, description="Calls made by JupyterHub (service secret required)")
SERVICE = [{"bearer": []}]


class RedeemSchema(ma.Schema):
    token = ma.fields.String(required=True, validate=ma.validate.Length(min=20, max=8192))


class RedemptionSchema(ma.Schema):
    username = ma.fields.String(required=True)
    user_id = ma.fields.String(required=True)
    project_id = ma.fields.String(required=True)
    server_name = ma.fields.String(required=True)


class SpawnQuestionSchema(ma.Schema):
    username = ma.fields.String(required=True, validate=ma.validate.Length(min=1, max=64))
    server_name = ma.fields.String(required=True, validate=ma.validate.Length(min=1, max=64))


class SpawnAnswerSchema(ma.Schema):
    allowed = ma.fields.Boolean(required=True)
    reason = ma.fields.String()
    project_id = ma.fields.String()
    extract_path = ma.fields.String()
    outputs_path = ma.fields.String()
    unix_user = ma.fields.String()
    env = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.String())


@blp.route("/hub/redeem", methods=["POST"])
@blp.arguments(RedeemSchema)
@blp.response(200, RedemptionSchema)
@blp.doc(security=SERVICE)
@hub_service
def redeem(body: dict[str, Any]) -> dict[str, str]:
    """Exchange a single-use workspace login token for the person and project it was issued for."""
    from projects.workspaces import WorkspaceError

    try:
        return workspaces_service().redeem(body["token"])
    except WorkspaceError as exc:
        abort(403, message=str(exc))


@blp.route("/hub/authorise-spawn", methods=["POST"])
@blp.arguments(SpawnQuestionSchema)
@blp.response(200, SpawnAnswerSchema)
@blp.doc(security=SERVICE)
@hub_service
def authorise_spawn(body: dict[str, Any]) -> dict[str, Any]:
    """May this workspace server start now? Asked before every start; refusals carry a reason."""
    current_app.logger.info("spawn asked for a workspace (request %s)", g.get("request_id"))
    return workspaces_service().authorise_spawn(body["username"], body["server_name"])
