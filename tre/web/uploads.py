"""Uploading a delivery from the browser (``pseudonymisation/uploads.py``).

Two pages, each a plain form that works without JavaScript (one request carrying a small file), and
that ``static/upload.js`` turns into a resumable upload in chunks with a progress bar and text:

- ``/catalogue/datasets/<id>/upload``: a refresh of a dataset (its custodian);
- ``/catalogue/new/upload``: a new dataset registered from the file it arrives with (dataset.manage).

The script speaks the small protocol below, on the same session and CSRF token as the page:
``POST /catalogue/uploads`` (JSON: the file's name and size, the dataset or the new dataset's
description) answers the upload's address; ``PATCH`` there with ``Upload-Offset`` and
``Upload-Checksum: sha256 <hex>`` adds a chunk; ``GET``/``HEAD`` answers the offset reached (to resume
after a lost connection or a reload); ``POST .../finish`` makes it a delivery.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from flask import Blueprint, flash, g, jsonify, redirect, render_template, request, url_for

from projects import rules
from projects.kernel import NotFound, ProjectPermissionDenied
from projects.rules import RuleViolation
from pseudonymisation.delivery_tasks import uploads_service
from pseudonymisation.uploads import OffsetMismatch, UploadRefused, Uploads
from tre.access import requires
from tre.authn import platform
from tre.core.permissions import Permission
from tre.web.projects import attempt, projects_service

bp = Blueprint("uploads", __name__, url_prefix="/catalogue")
T = TypeVar("T")
_REGISTER_FIELDS = ("name", "title", "description", "sensitivity")


def _svc() -> Uploads:
    return uploads_service(platform(), request_id=g.get("request_id"))


def _protocol(upload: Any) -> dict[str, Any]:
    return {"id": upload.id, "offset": upload.upload_offset, "size": upload.size, "state": upload.state,
            "url": url_for("uploads.upload", upload_id=upload.id),
            "finish_url": url_for("uploads.finish", upload_id=upload.id)}


def _answer(fn: Callable[[], T]) -> tuple[T | None, Any]:
    """Run a protocol call; a refusal becomes a JSON answer with its status and, for a chunk at the
    wrong offset, the offset the upload stands at (so the client carries on from there)."""
    try:
        return fn(), None
    except NotFound:
        return None, (jsonify(error="No such upload"), 404)
    except ProjectPermissionDenied:
        return None, (jsonify(error="You may not change this upload"), 403)
    except OffsetMismatch as exc:
        return None, (jsonify(error=str(exc), offset=exc.offset), 409, {"Upload-Offset": str(exc.offset)})
    except UploadRefused as exc:
        return None, (jsonify(error=str(exc)), exc.status)
    except RuleViolation as exc:
        return None, (jsonify(error=str(exc)), 422)


def _whole_file(svc: Uploads, *, dataset_id: str | None, register: dict[str, str] | None) -> Any:
    """The page without JavaScript: one request with the whole (small) file, sent through the same
    protocol in chunks on the server's side, so it is checked the same way."""
    import hashlib

    sent = request.files.get("file")
    if sent is None or not sent.filename:
        raise RuleViolation("Choose a file to upload")
    data = sent.read()
    upload = svc.create(g.user, file_name=sent.filename, size=len(data), dataset_id=dataset_id, register=register,
                        sha256=hashlib.sha256(data).hexdigest() if data else None,
                        dialect=_dialect_from(request.form))
    for start in range(0, len(data), svc.chunk_bytes):
        chunk = data[start:start + svc.chunk_bytes]
        svc.append(g.user, upload.id, start, chunk, hashlib.sha256(chunk).hexdigest())
    return svc.finish(g.user, upload.id)


def _dialect_from(form: Any) -> dict[str, str] | None:
    delimiter = (form.get("delimiter") or "").replace("\\t", "\t")
    return {"delimiter": delimiter} if delimiter else None


@bp.route("/datasets/<dataset_id>/upload", methods=["GET", "POST"])
@requires(Permission.DATASET_MANAGE)
def deliver(dataset_id: str) -> Any:
    ds, _ = attempt(lambda: projects_service().get_dataset(dataset_id))
    assert ds is not None
    error = None
    if request.method == "POST":
        made, error = attempt(lambda: _whole_file(_svc(), dataset_id=ds.id, register=None))
        if made is not None:
            flash("File received; its check is running", "success")
            return redirect(url_for("deliveries.delivery", delivery_id=made.id))
    return render_template("uploads/upload.html", title=f"Upload a delivery of {ds.title}", dataset=ds,
                           error=error, form=request.form, chunk_bytes=_svc().chunk_bytes,
                           levels=rules.SENSITIVITY_LEVELS), (422 if error else 200)


@bp.route("/new/upload", methods=["GET", "POST"])
@requires(Permission.DATASET_MANAGE)
def register() -> Any:
    error = None
    if request.method == "POST":
        described = {k: request.form.get(k, "") for k in _REGISTER_FIELDS}
        made, error = attempt(lambda: _whole_file(_svc(), dataset_id=None, register=described))
        if made is not None:
            flash("Dataset registered; confirm its schema while its first delivery is checked", "success")
            return redirect(url_for("catalogue.schema", dataset_id=made.dataset_id))
    return render_template("uploads/upload.html", title="Register a dataset from a file", dataset=None,
                           error=error, form=request.form, chunk_bytes=_svc().chunk_bytes,
                           levels=rules.SENSITIVITY_LEVELS), (422 if error else 200)


@bp.post("/uploads")
@requires(Permission.DATASET_MANAGE)
def create() -> Any:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return jsonify(error="Send the upload's description as a JSON object"), 400
    described = body.get("register")
    size = body.get("size")
    made, refused = _answer(lambda: _svc().create(
        g.user, file_name=str(body.get("file_name") or ""), size=size if isinstance(size, int) else -1,
        dataset_id=str(body.get("dataset_id") or "") or None,
        register={k: str(described.get(k) or "") for k in _REGISTER_FIELDS} if isinstance(described, dict) else None,
        dialect=body.get("dialect") if isinstance(body.get("dialect"), dict) else None,
    ))
    if made is None:
        return refused
    svc = _svc()
    return jsonify(_protocol(made) | {"chunk_bytes": svc.chunk_bytes}), 201, {"Location": _protocol(made)["url"]}


@bp.route("/uploads/<upload_id>", methods=["GET", "PATCH"])
@requires(Permission.DATASET_MANAGE)
def upload(upload_id: str) -> Any:
    svc = _svc()
    if request.method in ("GET", "HEAD"):  # Flask sends HEAD here and drops the body
        found, refused = _answer(lambda: svc.status(g.user, upload_id))
        if found is None:
            return refused
        return jsonify(_protocol(found)), 200, {"Upload-Offset": str(found.upload_offset),
                                                 "Upload-Length": str(found.size)}
    try:
        offset = int(request.headers.get("Upload-Offset", ""))
    except ValueError:
        return jsonify(error="Say where the chunk starts (Upload-Offset)"), 400
    algorithm, _, digest = (request.headers.get("Upload-Checksum") or "").partition(" ")
    # At most TRE_MAX_UPLOAD_BYTES (Flask refuses more); a chunk above the limit is refused, and
    # audited, by the service.
    chunk = request.get_data(cache=False)
    reached, refused = _answer(lambda: svc.append(
        g.user, upload_id, offset, chunk, digest if algorithm.lower() == "sha256" else None))
    if reached is None:
        return refused
    return "", 204, {"Upload-Offset": str(reached)}


@bp.post("/uploads/<upload_id>/finish")
@requires(Permission.DATASET_MANAGE)
def finish(upload_id: str) -> Any:
    made, refused = _answer(lambda: _svc().finish(g.user, upload_id))
    if made is None:
        return refused
    following = (url_for("catalogue.schema", dataset_id=made.dataset_id) if request.args.get("new")
                 else url_for("deliveries.delivery", delivery_id=made.id))
    return jsonify(delivery=made.id, dataset=made.dataset_id, next=following), 200


__all__ = ["bp"]
