"""Output checking pages: researchers follow their requests (files come only from the workspace:
``tre-submit`` or the JupyterLab menu), describe, submit, withdraw, and download released bundles;
output checkers work the queue, review blind, consolidate, release and revoke.

Researcher content is never rendered as HTML: Jinja escapes every value; a CSV is shown as a table
built cell by cell (each cell escaped) and otherwise served as ``text/plain``; images only as
``image/png``; every file response carries ``nosniff`` and a sandboxing CSP.
"""

from __future__ import annotations

import csv
import hmac
import io
import re
from collections.abc import Callable
from typing import Any, TypeVar

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    url_for,
)
from sqlalchemy import select

from disclosure import rules
from disclosure.metrics import PROMETHEUS_WINDOW, collect, lifetime_totals, prometheus_text
from disclosure.models import OutputRequest
from disclosure.permissions import can_check
from disclosure.progress import current_policy
from disclosure.rerun.results import rerun_view
from disclosure.services import (
    IncompleteRequest,
    NotFound,
    OutputError,
    OutputPermissionDenied,
    Outputs,
    automated_status,
)
from projects.models import Project
from tre import turnaround
from tre.access import login_required, public, requires
from tre.authn import platform
from tre.core.db import utcnow
from tre.core.identity import User
from tre.core.permissions import Permission
from tre.web.confirm import Confirmation, render_confirmation
from tre.web.paging import PAGE_SIZE, Page, requested_page
from tre.web.pictures import turnaround_charts, turnaround_window
from tre.web.table_review import ACTION_WORDS, RULE_MARKS, build_review

bp = Blueprint("outputs", __name__, url_prefix="/outputs")
prometheus_bp = Blueprint("outputs_metrics", __name__)

T = TypeVar("T")
MAX_TABLE_ROWS_SHOWN = 500


def service() -> Outputs:
    return Outputs.from_platform(platform(), request_id=g.get("request_id"))


def attempt(fn: Callable[[], T]) -> tuple[T | None, str | list[str] | None]:
    """Run a service call: a missing thing is a 404, a refusal a 403, a rule's message comes back."""
    try:
        return fn(), None
    except NotFound:
        abort(404)
    except OutputPermissionDenied as exc:
        return None, str(exc)
    except IncompleteRequest as exc:
        return None, exc.problems
    except OutputError as exc:
        return None, str(exc)


def _back(request_id: str, error: str | list[str] | None, success: str) -> Any:
    if error:
        for message in [error] if isinstance(error, str) else error:
            flash(message, "error")
    else:
        flash(success, "success")
    return redirect(url_for("outputs.request_page", request_id=request_id))


def _about_to(fn: Callable[[], T], request_id: str) -> T | Any:
    """For a confirmation page: what the action would act on, or a refusal as the action refuses
    (403 when not permitted, 404 when missing, back to the request with the rule's message)."""
    try:
        return fn()
    except NotFound:
        abort(404)
    except OutputPermissionDenied:
        abort(403)
    except OutputError as exc:
        return _back(request_id, str(exc), "")


# --- researchers ----------------------------------------------------------------------------------


@bp.get("/")
@requires(Permission.OUTPUT_SUBMIT)
def index() -> str:
    number = requested_page(request.args)
    requests, total = service().requests_of(g.user, offset=(number - 1) * PAGE_SIZE, limit=PAGE_SIZE)
    return render_template(
        "outputs/index.html",
        title="Output requests",
        requests=requests,
        page=Page(number, PAGE_SIZE, total),
        labels=rules.STATE_LABELS,
    )


@bp.get("/requests/<request_id>")
@login_required
def request_page(request_id: str) -> str:
    svc = service()
    req, role = _visible(svc, request_id)
    picture = svc.review_picture(g.user, req, role)
    checks = svc.checks_of(req)
    status = automated_status(svc.session, req, svc.policy.sha256)
    people = {u.id: u.display_name for u in svc.session.scalars(select(User))} if role == "checker" else {}
    my_review = next((r for r in picture.reviews if r.reviewer_id == g.user.id and r.round == req.round), None)
    my_votes = {v.file_id: v for v in picture.votes if v.reviewer_id == g.user.id}
    eligible = []
    if role == "checker":
        eligible = [
            u
            for u in svc.session.scalars(select(User).where(User.is_active.is_(True)))
            if u.id != g.user.id and can_check(svc.session, u, req)
        ]
    return render_template(
        "outputs/request.html",
        title=req.title or "Output request",
        req=req,
        role=role,
        rerun=rerun_view(svc.session, req, role),
        code=svc.code_for_review(g.user, req) if role == "checker" else None,
        picture=picture,
        checks=checks,
        status=status,
        labels=rules.STATE_LABELS,
        vote_labels=rules.VOTE_LABELS,
        people=people,
        my_review=my_review,
        my_votes=my_votes,
        eligible=eligible,
        rules=rules,
        is_author=req.author_id == g.user.id,
        missing=svc.missing_for_submission(req),
        project=svc.session.get(Project, req.project_id),
        release=_release_of(svc, req),
        content_ok=svc.content_visible(g.user, req),
        privacy=_privacy_of(svc, req, checks),
    )


def _privacy_of(svc: Any, req: Any, checks: dict[str, Any]) -> dict[str, Any] | None:
    """The project's privacy budget and what this request's DP files would spend at release (None when
    it has none)."""
    from disclosure.budget import budget_state
    from disclosure.engine.dpcheck import is_dp_spec

    dp_files = [f for f in req.current_files if is_dp_spec(f.table_spec)]
    if not dp_files:
        return None
    epsilons = [((checks.get(f.id) and checks[f.id].verdict or {}).get("dp") or {}).get("epsilon") for f in dp_files]
    known = [e for e in epsilons if isinstance(e, int | float)]
    return {
        "budget": budget_state(svc.session, req.project_id),
        "needed": sum(known) if len(known) == len(epsilons) else None,
        "files": len(dp_files),
    }


def _release_of(svc: Outputs, req: OutputRequest) -> Any:
    from disclosure.models import OutputRelease

    return svc.session.scalar(select(OutputRelease).where(OutputRelease.request_id == req.id))


def _visible(svc: Outputs, request_id: str) -> tuple[OutputRequest, str]:
    try:
        return svc.get_for(g.user, request_id)
    except NotFound:
        abort(404)
    except OutputPermissionDenied:
        abort(403)


@bp.post("/requests/<request_id>/groups")
@requires(Permission.OUTPUT_SUBMIT)
def set_group(request_id: str) -> Any:
    f = request.form
    _, error = attempt(
        lambda: service().set_group(g.user, request_id, f.get("name", ""), f.get("context", ""), f.get("controls", ""))
    )
    return _back(request_id, error, "Group saved")


@bp.get("/requests/<request_id>/files/<file_id>/remove")
@requires(Permission.OUTPUT_SUBMIT)
def confirm_remove_file(request_id: str, file_id: str) -> Any:
    found = _about_to(lambda: service().file_to_remove(g.user, request_id, file_id), request_id)
    if not isinstance(found, tuple):
        return found
    req, f = found
    back = url_for("outputs.request_page", request_id=req.id)
    return render_confirmation(
        Confirmation(
            caption=req.title,
            question=f"Are you sure you want to remove {f.name} from this request?",
            consequences=[
                "The file is taken out of the request and is not checked or released with it",
                "To add it again, send it from the project's workspace",
            ],
            action=url_for("outputs.remove_file", request_id=req.id, file_id=f.id),
            button=f"Yes, remove {f.name}",
            cancel=back,
            cancel_text="No, keep the file",
        ),
        title=f"Remove {f.name}",
    )


@bp.post("/requests/<request_id>/files/<file_id>/remove")
@requires(Permission.OUTPUT_SUBMIT)
def remove_file(request_id: str, file_id: str) -> Any:
    _, error = attempt(lambda: service().remove_file(g.user, request_id, file_id))
    return _back(request_id, error, "File removed")


@bp.post("/requests/<request_id>/submit")
@requires(Permission.OUTPUT_SUBMIT)
def submit(request_id: str) -> Any:
    _, error = attempt(lambda: service().submit(g.user, request_id))
    return _back(request_id, error, "Submitted: the automated checks are running")


@bp.get("/requests/<request_id>/withdraw")
@requires(Permission.OUTPUT_SUBMIT)
def confirm_withdraw(request_id: str) -> Any:
    req = _about_to(lambda: service().request_to_withdraw(g.user, request_id), request_id)
    if not isinstance(req, OutputRequest):
        return req
    consequences = ["The request stops here: it cannot be submitted, checked or released again"]
    if req.submitted_at is not None:
        consequences.append("The output checkers are told that you withdrew it and stop reviewing it")
    consequences.append("To release these outputs later, send them again as a new request")
    return render_confirmation(
        Confirmation(
            caption=req.title,
            question="Are you sure you want to withdraw this output request?",
            consequences=consequences,
            warning="A withdrawn request cannot be reopened",
            action=url_for("outputs.withdraw", request_id=req.id),
            button="Yes, withdraw this request",
            cancel=url_for("outputs.request_page", request_id=req.id),
            cancel_text="No, keep the request",
        ),
        title=f"Withdraw {req.title}",
    )


@bp.post("/requests/<request_id>/withdraw")
@requires(Permission.OUTPUT_SUBMIT)
def withdraw(request_id: str) -> Any:
    _, error = attempt(lambda: service().withdraw(g.user, request_id))
    return _back(request_id, error, "Request withdrawn")


@bp.post("/requests/<request_id>/comments")
@login_required
def comment(request_id: str) -> Any:
    f = request.form
    _, error = attempt(
        lambda: service().comment(g.user, request_id, f.get("body", ""), f.get("visibility", rules.SHARED))
    )
    return _back(request_id, error, "Comment added")


@bp.get("/requests/<request_id>/bundle")
@login_required
def download(request_id: str) -> Any:
    """The released bundle, for the project's team while the access gate lets them in."""
    result, error = attempt(lambda: service().download(g.user, request_id))
    if error or result is None:
        abort(403)
    data, release = result
    response = Response(data, mimetype="application/zip")
    response.headers["Content-Disposition"] = f'attachment; filename="outputs-{request_id}.zip"'
    response.headers["X-Bundle-SHA256"] = release.bundle_sha256
    return response


_SAFE_FILENAME = re.compile(r"[^A-Za-z0-9._-]")


def _raw(data: bytes, mimetype: str, name: str) -> Response:
    response = Response(data, mimetype=mimetype)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = "default-src 'none'; img-src 'self'; sandbox"
    safe = _SAFE_FILENAME.sub("_", name)[:100] or "file"
    response.headers["Content-Disposition"] = f'inline; filename="{safe}"'
    return response


@bp.get("/files/<file_id>")
@login_required
def view_file(file_id: str) -> Any:
    """A file's content, only as ``disclosure.visibility`` allows (its checkers during review, the team
    once released): a CSV as an escaped table, otherwise raw and inert."""
    result, error = attempt(lambda: service().view_file(g.user, file_id))
    if error or result is None:
        abort(403)
    f, data = result
    if f.kind == "image":
        return _raw(data, "image/png", f.name)
    if f.kind == "table" and request.args.get("raw") != "1":
        svc = service()
        req = svc.session.get(OutputRequest, f.request_id)
        check = svc.checks_of(req).get(f.id) if req is not None else None
        review = build_review(
            data,
            f.table_spec,
            check.verdict if check else None,
            check.differencing if check else None,
            policy=current_policy(),
        )
        rows = list(csv.reader(io.StringIO(data.decode("utf-8", errors="replace")))) if review.unreadable else []
        return render_template(
            "outputs/file.html",
            title=f.name,
            file=f,
            check=check,
            review=review,
            marks=RULE_MARKS,
            action_words=ACTION_WORDS,
            rows=rows[: MAX_TABLE_ROWS_SHOWN + 1],
            truncated=len(rows) > MAX_TABLE_ROWS_SHOWN + 1,
        )
    return _raw(data, "text/plain", f.name)


# --- checkers -------------------------------------------------------------------------------------


@bp.get("/queue")
@requires(Permission.OUTPUT_REVIEW)
def queue() -> str:
    number = requested_page(request.args)
    svc = service()
    s = svc.session
    checkable = svc.checkable(g.user)
    page = Page(number, PAGE_SIZE, len(checkable))
    entries = svc.entries(checkable[page.offset : page.offset + PAGE_SIZE])
    workload = svc.workload()
    people = {
        u.id: u.display_name
        for u in s.scalars(
            select(User).where(User.id.in_(set(workload) | {r.reviewer_id for e in entries for r in e.reviews}))
        )
    }
    return render_template(
        "outputs/queue.html",
        title="Output checking",
        entries=entries,
        page=page,
        workload=workload,
        people=people,
        labels=rules.STATE_LABELS,
        now=utcnow(),
    )


@bp.post("/requests/<request_id>/claim")
@requires(Permission.OUTPUT_REVIEW)
def claim(request_id: str) -> Any:
    _, error = attempt(lambda: service().claim(g.user, request_id))
    return _back(request_id, error, "You hold a review place on this request")


@bp.post("/requests/<request_id>/assign")
@requires(Permission.OUTPUT_REVIEW)
def assign(request_id: str) -> Any:
    _, error = attempt(lambda: service().assign(g.user, request_id, request.form.get("reviewer_id", "")))
    return _back(request_id, error, "Review place assigned")


@bp.post("/requests/<request_id>/votes")
@requires(Permission.OUTPUT_REVIEW)
def vote(request_id: str) -> Any:
    f = request.form
    _, error = attempt(
        lambda: service().vote(g.user, request_id, f.get("file_id", ""), f.get("vote", ""), f.get("comment", ""))
    )
    return _back(request_id, error, "Vote saved")


@bp.post("/requests/<request_id>/review")
@requires(Permission.OUTPUT_REVIEW)
def submit_review(request_id: str) -> Any:
    _, error = attempt(lambda: service().submit_review(g.user, request_id))
    return _back(request_id, error, "Review submitted")


@bp.post("/requests/<request_id>/decision")
@requires(Permission.OUTPUT_REVIEW)
def decide(request_id: str) -> Any:
    f = request.form
    _, error = attempt(lambda: service().consolidate(g.user, request_id, f.get("outcome", ""), f.get("comment", "")))
    return _back(request_id, error, "Decision recorded")


@bp.post("/requests/<request_id>/release")
@requires(Permission.OUTPUT_REVIEW)
def release(request_id: str) -> Any:
    _, error = attempt(lambda: service().release(g.user, request_id))
    return _back(request_id, error, "Released: the project's team can download the bundle")


@bp.get("/requests/<request_id>/revoke")
@requires(Permission.OUTPUT_REVIEW)
def confirm_revoke(request_id: str) -> Any:
    req = _about_to(lambda: service().release_to_revoke(g.user, request_id), request_id)
    if not isinstance(req, OutputRequest):
        return req
    return render_confirmation(
        Confirmation(
            caption=req.title,
            question="Are you sure you want to revoke this release?",
            consequences=[
                "The project's team can no longer download the released outputs from the TRE",
                "The team is told that the release was revoked, and why",
                "Copies already downloaded are not recalled: follow up with the team outside the TRE",
            ],
            warning="A revoked release cannot be restored",
            reason_label="Reason for revoking",
            reason_hint="The team sees this reason.",
            action=url_for("outputs.revoke", request_id=req.id),
            button="Yes, revoke the release",
            cancel=url_for("outputs.request_page", request_id=req.id),
            cancel_text="No, keep it released",
        ),
        title=f"Revoke the release of {req.title}",
    )


@bp.post("/requests/<request_id>/revoke")
@requires(Permission.OUTPUT_REVIEW)
def revoke(request_id: str) -> Any:
    _, error = attempt(lambda: service().revoke(g.user, request_id, request.form.get("reason", "")))
    return _back(request_id, error, "Release revoked")


@bp.post("/requests/<request_id>/checks-failed")
@requires(Permission.OUTPUT_REVIEW)
def resolve_failed_checks(request_id: str) -> Any:
    _, error = attempt(lambda: service().resolve_failed_checks(g.user, request_id))
    return _back(request_id, error, "Moved on to human review without the failed automated checks")


@bp.get("/metrics")
@requires(Permission.OUTPUT_REVIEW)
def metrics_page() -> Any:
    """The queue's figures, then working days per stage of the output requests finished in the chosen
    window (``?window=30|90|365|all``, the last 90 days by default) and of every request still open. A
    window it does not offer gets a 400 that says so, over the default window's figures."""
    window, error = turnaround_window(request.args.get("window"))
    session = platform().db.session
    now = utcnow()
    since = window.since(now)
    t = turnaround.output_requests(session, since=since, open_until_now=True, now=now)
    body = render_template(
        "outputs/metrics.html",
        title="Output checking metrics",
        m=collect(session, now=now, since=since),
        labels=rules.STATE_LABELS,
        charts=turnaround_charts(t, id="outputs", noun="output requests", window=window),
        window=window,
        windows=turnaround.WINDOWS,
        since=since,
        error=error,
    )
    return (body, 400) if error else body


@prometheus_bp.get("/metrics/outputs")
@public
def prometheus() -> Response:
    """Scraped by Prometheus, guarded as ``/metrics`` is: its bearer token, or this machine only."""
    token = getattr(current_app.extensions["tre.settings"], "metrics_token", "")
    if token:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), token.encode()):
            abort(401)
    elif request.remote_addr not in {"127.0.0.1", "::1"}:
        abort(403)
    session = platform().db.session
    now = utcnow()
    figures = collect(session, now=now, since=now - PROMETHEUS_WINDOW)
    return Response(prometheus_text(figures, lifetime_totals(session)), mimetype="text/plain; version=0.0.4")
