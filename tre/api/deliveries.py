"""Deliveries and versions of a dataset over the API (its custodian): deliver a file named in the
landing folder, read each delivery's verdict and quality report (counts, never values), the
versions, the thresholds that fail a delivery, and pin a project to a version."""

from __future__ import annotations

import json
from typing import Any

import marshmallow as ma
from flask import current_app, g
from flask_smorest import Blueprint

from projects.rules import RuleViolation
from pseudonymisation.catalogue_metadata import NoSuchDataset, export_dataset_metadata
from pseudonymisation.deliveries import Deliveries
from pseudonymisation.delivery_checks import public_report
from pseudonymisation.delivery_tasks import deliveries_service
from pseudonymisation.omop_folders import OmopFolders
from tre.access import requires
from tre.api import refuse
from tre.authn import platform
from tre.core.permissions import Permission

blp = Blueprint("deliveries-api", __name__, description="Deliveries, quality reports and versions of a dataset")
BEARER = [{"bearer": []}]


class DialectSchema(ma.Schema):
    delimiter = ma.fields.String(validate=ma.validate.Length(equal=1))
    quote_char = ma.fields.String(validate=ma.validate.Length(equal=1))
    encoding = ma.fields.String(validate=ma.validate.Length(min=1, max=40))


class DeliverySchema(ma.Schema):
    """A file of the landing folder (``source_name``), or a table of a named database source."""

    source_name = ma.fields.String(load_default=None, validate=ma.validate.Length(min=1, max=500))
    dialect = ma.fields.Nested(DialectSchema, load_default=None, allow_none=True)
    database_source = ma.fields.String(load_default=None, validate=ma.validate.Length(min=1, max=40))
    table = ma.fields.String(load_default=None, validate=ma.validate.Length(min=1, max=130))

    @ma.validates_schema
    def _one_source(self, data: dict[str, Any], **_: Any) -> None:
        if (data.get("source_name") is None) == (data.get("database_source") is None or data.get("table") is None):
            raise ma.ValidationError("Give source_name, or database_source and table")


class DeliveryOutSchema(ma.Schema):
    id = ma.fields.String()
    dataset_id = ma.fields.String()
    state = ma.fields.String()
    source_name = ma.fields.String()
    source_sha256 = ma.fields.String(allow_none=True)
    size_bytes = ma.fields.Integer(allow_none=True)
    rows = ma.fields.Integer(allow_none=True)
    version = ma.fields.Integer(allow_none=True)
    reason = ma.fields.String(allow_none=True)
    problems = ma.fields.List(ma.fields.Dict())
    report = ma.fields.Method("_report")
    job_id = ma.fields.String(allow_none=True)
    received_at = ma.fields.DateTime()
    finished_at = ma.fields.DateTime(allow_none=True)

    def _report(self, delivery: Any) -> Any:
        return public_report(delivery.report) if delivery.report else None


class VersionOutSchema(ma.Schema):
    version = ma.fields.Integer()
    delivery_id = ma.fields.String()
    source_sha256 = ma.fields.String()
    rows = ma.fields.Integer()
    created_at = ma.fields.DateTime()


class RulesSchema(ma.Schema):
    rules = ma.fields.Dict(keys=ma.fields.String(), required=True)


class PinSchema(ma.Schema):
    version = ma.fields.Integer(required=True, allow_none=True, validate=ma.validate.Range(min=1))


class PinOutSchema(ma.Schema):
    following = ma.fields.String()
    version = ma.fields.Integer(allow_none=True)


def _svc() -> Deliveries:
    return deliveries_service(platform(), request_id=g.get("request_id"))


def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except RuleViolation as exc:
        refuse(exc)


@blp.route("/datasets/<string:dataset_id>/deliveries")
@blp.response(200, DeliveryOutSchema(many=True))
@blp.doc(security=BEARER)
@requires(Permission.DATASET_MANAGE)
def list_deliveries(dataset_id: str) -> Any:
    """Every delivery of the dataset, newest first, with its state and problems."""
    return _call(_svc().list_deliveries, g.user, dataset_id)


@blp.route("/datasets/<string:dataset_id>/deliveries", methods=["POST"])
@blp.arguments(DeliverySchema)
@blp.response(202, DeliveryOutSchema)
@blp.doc(security=BEARER)
@requires(Permission.DATASET_MANAGE)
def deliver(body: dict[str, Any], dataset_id: str) -> Any:
    """Deliver a file named by its path in the landing folder, or a table of a database source the
    administrator configured (by its name); its check runs as a job."""
    if body["source_name"] is None:
        return _call(_svc().receive_table, g.user, dataset_id, body["database_source"], body["table"])
    return _call(_svc().receive, g.user, dataset_id, body["source_name"], dialect=body["dialect"])


@blp.route("/deliveries/<string:delivery_id>")
@blp.response(200, DeliveryOutSchema)
@blp.doc(security=BEARER)
@requires(Permission.DATASET_MANAGE)
def delivery(delivery_id: str) -> Any:
    """One delivery: its verdict, the problems that quarantined it, its quality report (counts only)."""
    return _call(_svc().get_delivery, g.user, delivery_id)


@blp.route("/datasets/<string:dataset_id>/versions")
@blp.response(200, VersionOutSchema(many=True))
@blp.doc(security=BEARER)
@requires(Permission.DATASET_MANAGE)
def versions(dataset_id: str) -> Any:
    """The dataset's versions, newest first."""
    return _call(_svc().versions, g.user, dataset_id)


@blp.route("/datasets/<string:dataset_id>/delivery-rules")
@blp.response(200, RulesSchema)
@blp.doc(security=BEARER)
@requires(Permission.DATASET_MANAGE)
def get_rules(dataset_id: str) -> Any:
    """The thresholds that fail a delivery of this dataset."""
    return {"rules": _call(_svc().get_rules, g.user, dataset_id).to_dict()}


@blp.route("/datasets/<string:dataset_id>/delivery-rules", methods=["PUT"])
@blp.arguments(RulesSchema)
@blp.response(200, RulesSchema)
@blp.doc(security=BEARER)
@requires(Permission.DATASET_MANAGE)
def set_rules(body: dict[str, Any], dataset_id: str) -> Any:
    """Set the thresholds (all at once); a rule naming an unknown column or a bad fraction is refused."""
    return {"rules": _call(_svc().set_rules, g.user, dataset_id, body["rules"]).to_dict()}


@blp.route("/projects/<string:project_id>/dataset-versions/<string:dataset_id>", methods=["PUT"])
@blp.arguments(PinSchema)
@blp.response(200, PinOutSchema)
@blp.doc(security=BEARER)
@requires(Permission.DATASET_MANAGE)
def pin(body: dict[str, Any], project_id: str, dataset_id: str) -> Any:
    """Hold the project at one version of the dataset, or (version null) follow the latest."""
    used = _call(_svc().pin, g.user, project_id, dataset_id, body["version"])
    return {"following": "pinned" if body["version"] else "latest", "version": used.version if used else None}


@blp.route("/datasets/<string:dataset_id>/metadata")
@blp.doc(security=BEARER)
@requires(Permission.CATALOGUE_BROWSE)
def metadata(dataset_id: str) -> Any:
    """The dataset's catalogue entry as DCAT 3 JSON-LD: columns and roles, versions, restrictions
    and the opt-out lists in force (docs/pseudonymisation/onboarding.md says why DCAT)."""
    settings = platform().settings
    try:
        body = export_dataset_metadata(platform().db.session, dataset_id, base_url=settings.public_url,
                                       publisher=settings.metadata_publisher)
    except NoSuchDataset as exc:
        refuse(exc, 404)
    return current_app.response_class(json.dumps(body, indent=2), mimetype="application/ld+json")


class OmopFolderSchema(ma.Schema):
    folder = ma.fields.String(required=True, validate=ma.validate.Length(min=1, max=500))
    prefix = ma.fields.String(required=True, validate=ma.validate.Length(min=1, max=40))


class RegisteredSchema(ma.Schema):
    id = ma.fields.String()
    name = ma.fields.String()


@blp.route("/datasets/omop", methods=["POST"])
@blp.arguments(OmopFolderSchema)
@blp.response(201, RegisteredSchema(many=True))
@blp.doc(security=BEARER)
@requires(Permission.DATASET_MANAGE)
def register_omop(body: dict[str, Any]) -> Any:
    """Register an OMOP CDM v5.4 folder of the landing folder: a dataset per table, with roles,
    extract rules, keys and links preset, each table delivered as its first version."""
    settings = platform().settings
    svc = OmopFolders(platform().db.session, platform().audit, request_id=g.get("request_id"),
                      landing_dir=settings.landing_dir, identifiable_path=settings.identifiable_path)
    return _call(svc.register_folder, g.user, body["folder"], body["prefix"])
