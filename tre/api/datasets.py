"""A dataset's schema over the API (its custodian): the proposal read from the source, a preview of a
few transformed rows, and the confirmation of every column's role and extract rule."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from flask import g
from flask_smorest import Blueprint

from projects.rules import RuleViolation
from pseudonymisation.dataset_schemas import DatasetSchemas, SourceUnreadable
from tre.access import requires
from tre.api import refuse
from tre.authn import platform
from tre.core.permissions import Permission

blp = Blueprint("datasets-api", __name__, description="A dataset's proposed schema, roles and extract rules")
BEARER = [{"bearer": []}]


class ColumnCountsSchema(ma.Schema):
    name = ma.fields.String()
    data_type = ma.fields.String()
    role = ma.fields.String()
    rule = ma.fields.String()
    reason = ma.fields.String()
    counts = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.Integer())


class ProposalSchema(ma.Schema):
    format = ma.fields.String()
    row_count = ma.fields.Integer()
    nhs_number_column = ma.fields.String(allow_none=True)
    dialect = ma.fields.Dict(allow_none=True)
    columns = ma.fields.List(ma.fields.Nested(ColumnCountsSchema))
    warnings = ma.fields.List(ma.fields.String())


class ChoiceSchema(ma.Schema):
    role = ma.fields.String(required=True, validate=ma.validate.Length(max=30))
    rule = ma.fields.String(required=True, validate=ma.validate.Length(max=30))


class ConfirmationSchema(ma.Schema):
    columns = ma.fields.Dict(
        keys=ma.fields.String(validate=ma.validate.Length(min=1, max=100)),
        values=ma.fields.Nested(ChoiceSchema),
        required=True,
        validate=ma.validate.Length(min=1, max=2000),
    )
    nhs_number_column = ma.fields.String(load_default=None, allow_none=True, validate=ma.validate.Length(max=100))
    row_count = ma.fields.Integer(load_default=None, allow_none=True, validate=ma.validate.Range(min=0))


class PreviewSchema(ma.Schema):
    columns = ma.fields.List(ma.fields.String())
    rows = ma.fields.List(ma.fields.List(ma.fields.String(allow_none=True)))
    read = ma.fields.Integer(metadata={"description": "source rows looked at to find the rows shown"})
    left_out = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.Integer(),
                              metadata={"description": "rows read that extracts leave out, by reason"})


class ConfirmedSchema(ma.Schema):
    id = ma.fields.String()
    name = ma.fields.String()
    row_count = ma.fields.Integer(allow_none=True)
    schema_spec = ma.fields.Dict()


def _svc() -> DatasetSchemas:
    p = platform()
    return DatasetSchemas(p.db.session, p.audit, request_id=g.get("request_id"), keys=p.keys)


def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except SourceUnreadable as exc:
        refuse(exc, 409)  # the source's state, not the request, is at fault
    except RuleViolation as exc:
        refuse(exc)


@blp.route("/datasets/<string:dataset_id>/schema-proposal")
@blp.response(200, ProposalSchema)
@blp.doc(security=BEARER)
@requires(Permission.DATASET_MANAGE)
def proposal(dataset_id: str) -> Any:
    """Read the source and propose each column's type, role and extract rule (counts, never values)."""
    return _call(_svc().propose, g.user, dataset_id).to_dict()


@blp.route("/datasets/<string:dataset_id>/schema-preview", methods=["POST"])
@blp.arguments(ConfirmationSchema)
@blp.response(200, PreviewSchema)
@blp.doc(security=BEARER)
@requires(Permission.DATASET_MANAGE)
def preview(body: dict[str, Any], dataset_id: str) -> Any:
    """A few rows as these choices would extract them, under throwaway keys (never identifiers)."""
    return _call(_svc().preview, g.user, dataset_id, body["columns"], body["nhs_number_column"])


@blp.route("/datasets/<string:dataset_id>/schema", methods=["PUT"])
@blp.arguments(ConfirmationSchema)
@blp.response(200, ConfirmedSchema)
@blp.doc(security=BEARER)
@requires(Permission.DATASET_MANAGE)
def confirm(body: dict[str, Any], dataset_id: str) -> Any:
    """Confirm every column's role and extract rule: the dataset's extract schema (all or nothing)."""
    return _call(
        _svc().confirm, g.user, dataset_id, body["columns"], body["nhs_number_column"], row_count=body["row_count"]
    )
