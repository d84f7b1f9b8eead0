"""The data access committee's pages: the queue with ages, the review page (conflict declaration and
its withdrawal, vote), the chair's assignment and decision pages, and the running projects the chair governs."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, flash, g, redirect, render_template, request, url_for
from sqlalchemy import and_, bindparam, select
from sqlalchemy.orm import lazyload

from projects import rules
from projects.models import ApplicationVersion, ExtensionRequest, Project, ReviewAssignment
from projects.services import approved_columns
from tre import turnaround
from tre.access import requires
from tre.core.db import utcnow
from tre.core.identity import User, UserRole
from tre.core.permissions import ROLE_PERMISSIONS, Permission
from tre.web.confirm import Confirmation, render_confirmation
from tre.web.pictures import turnaround_charts, turnaround_window
from tre.web.projects import _people, attempt, projects_service

bp = Blueprint("dac", __name__, url_prefix="/dac")


def _holders(permission: Permission) -> list[User]:
    """The active accounts whose roles grant ``permission``, by name."""
    roles = [r.value for r, granted in ROLE_PERMISSIONS.items() if permission in granted]
    session = projects_service().session
    ids = select(UserRole.user_id).where(UserRole.role.in_(roles))
    return list(
        session.scalars(select(User).where(User.id.in_(ids), User.is_active.is_(True)).order_by(User.display_name))
    )


def _committee() -> list[User]:
    return _holders(Permission.APPLICATION_REVIEW)


def _chairs() -> list[User]:
    """Who assigns reviewers: named to a member who is not assigned, so they know whom to ask."""
    return _holders(Permission.APPLICATION_ASSIGN)


# The queue's reads, built once. A project's team and dataset requests are not shown here, so they
# are left unloaded; each project's current version comes with it, and the assignments of every
# version and the open extension of every governed project come in one statement each, so the page
# sends the same statements however many applications wait.
_PROJECT_ALONE = (lazyload(Project.members), lazyload(Project.dataset_requests))
_WAITING = (
    select(Project, ApplicationVersion)
    .options(*_PROJECT_ALONE)
    .outerjoin(ApplicationVersion, and_(
        ApplicationVersion.project_id == Project.id, ApplicationVersion.number == Project.current_version
    ))
    .where(Project.state.in_((rules.SUBMITTED, rules.IN_REVIEW)))
    .order_by(Project.state_changed_at)
)
_ASSIGNMENTS = select(ReviewAssignment).where(ReviewAssignment.version_id.in_(bindparam("ids", expanding=True)))
_GOVERNED = (
    select(Project).options(*_PROJECT_ALONE)
    .where(Project.state.in_((rules.APPROVED, rules.ACTIVE, rules.SUSPENDED)))
    .order_by(Project.end_date)
)
_OPEN_EXTENSIONS = (
    select(ExtensionRequest)
    .where(ExtensionRequest.project_id.in_(bindparam("ids", expanding=True)), ExtensionRequest.decided_at.is_(None))
    .order_by(ExtensionRequest.requested_at)
)


@bp.get("/")
@requires(Permission.APPLICATION_REVIEW)
def queue() -> str:
    session = projects_service().session
    now = utcnow()
    waiting = [(project, version) for project, version in session.execute(_WAITING)]
    version_ids = [version.id for _, version in waiting if version is not None]
    by_version: dict[str, list[ReviewAssignment]] = {}
    if version_ids:
        for assignment in session.scalars(_ASSIGNMENTS, {"ids": version_ids}):
            by_version.setdefault(assignment.version_id, []).append(assignment)
    rows = []
    for project, version in waiting:
        assignments = by_version.get(version.id, []) if version is not None else []
        mine = next((a for a in assignments if a.reviewer_id == g.user.id), None)
        rows.append(
            {
                "project": project,
                "version": version,
                "age_days": (now - project.state_changed_at).days,
                "assigned": bool(mine and mine.assigned),
                "conflicted": bool(mine and mine.conflicted),
                # A member's declaration of a conflict before assignment is no reviewer (ADR 0065).
                "reviewers": len([a for a in assignments if a.assigned]),
            }
        )
    governed = list(session.scalars(_GOVERNED)) if g.user.has(Permission.APPLICATION_DECIDE) else []
    open_extensions: dict[str, ExtensionRequest] = {}
    if governed:
        for extension in session.scalars(_OPEN_EXTENSIONS, {"ids": [p.id for p in governed]}):
            open_extensions.setdefault(extension.project_id, extension)
    return render_template(
        "dac/queue.html",
        title="Applications",
        rows=rows,
        labels=rules.STATE_LABELS,
        governed=governed,
        extensions=[(p, open_extensions[p.id]) for p in governed if p.id in open_extensions],
    )


@bp.get("/turnaround")
@requires(Permission.APPLICATION_REVIEW)
def turnaround_page() -> Any:
    """Working days per stage of applications (submission, reviewers, review, decision) as pictures, for
    the versions decided in the chosen window (``?window=30|90|365|all``, the last 90 days by default)
    and every version still waiting for its decision. A window it does not offer gets a 400 that says
    so, over the default window's figures."""
    window, error = turnaround_window(request.args.get("window"))
    now = utcnow()
    since = window.since(now)
    t = turnaround.applications(projects_service().session, since=since, open_until_now=True, now=now)
    body = render_template(
        "dac/turnaround.html",
        title="Application turnaround",
        charts=turnaround_charts(t, id="applications", noun="applications", window=window),
        window=window,
        windows=turnaround.WINDOWS,
        since=since,
        error=error,
    )
    return (body, 400) if error else body


def _project(project_id: str) -> Project:
    project, _ = attempt(lambda: projects_service().get_project(g.user, project_id))
    assert project is not None
    return project


@bp.get("/<project_id>")
@requires(Permission.APPLICATION_REVIEW)
def review(project_id: str) -> str:
    return _render_review(project_id)


def _render_review(project_id: str, error: str | list[str] | None = None) -> Any:
    svc = projects_service()
    project = _project(project_id)
    version = svc.current_version(project)
    if version is None:
        abort(404)
    review = svc.review_of(g.user, version)  # the assignments and votes, read once each
    assignment, votes, assignments, my_vote = review.assignment, review.votes, review.assignments, review.own_vote
    is_chair = g.user.has(Permission.APPLICATION_DECIDE)
    assigned = assignment is not None and assignment.assigned
    under_review = project.state in rules.UNDER_REVIEW_STATES
    # A member the chair has not assigned (nor recused) is told who assigns reviewers: one read, for them only.
    unassigned = under_review and not is_chair and assignment is None
    chairs = _chairs() if unassigned else []
    # The chair sees every declaration, those withdrawn as made in error too (ADR 0065): one read, for them only.
    withdrawn = svc.withdrawn_conflicts(version) if is_chair and under_review else []
    people = _people(
        [a.reviewer_id for a in assignments]
        + [w.reviewer_id for w in withdrawn]
        + [project.pi_id]
        + [m.user_id for m in project.active_members]
    )
    html = render_template(
        "dac/review.html",
        title=f"Review: {project.title}",
        project=project,
        version=version,
        content=version.content,
        assignment=assignment,
        assigned=assigned,
        under_review=under_review,
        chairs=chairs,
        assignments=assignments,
        withdrawn=withdrawn,
        votes=votes,
        my_vote=my_vote,
        is_chair=is_chair,
        committee=_committee() if is_chair else [],
        people=people,
        labels=rules.STATE_LABELS,
        vote_labels=rules.VOTE_LABELS,
        error=error,
        quorum=svc.policy.quorum,
        counted=len(
            [v for v in (votes or []) if v.reviewer_id not in {a.reviewer_id for a in assignments if a.conflicted}]
        ),
        decisions=svc.decisions(project),
    )
    return (html, 400) if error else html


@bp.post("/<project_id>/assign")
@requires(Permission.APPLICATION_ASSIGN)
def assign(project_id: str) -> Any:
    added, error = attempt(
        lambda: projects_service().assign_reviewers(g.user, project_id, request.form.getlist("reviewers"))
    )
    if error:
        return _render_review(project_id, error)
    flash(f"{len(added or [])} reviewer(s) assigned", "success")
    return redirect(url_for("dac.review", project_id=project_id))


@bp.post("/<project_id>/conflict")
@requires(Permission.APPLICATION_REVIEW)
def conflict(project_id: str) -> Any:
    _, error = attempt(lambda: projects_service().declare_conflict(g.user, project_id, request.form.get("reason", "")))
    if error:
        return _render_review(project_id, error)
    flash("Conflict of interest recorded. You will not review or vote on this application.", "success")
    return redirect(url_for("dac.review", project_id=project_id))


@bp.post("/<project_id>/conflict/withdraw")
@requires(Permission.APPLICATION_REVIEW)
def withdraw_conflict(project_id: str) -> Any:
    """The member withdraws their own declaration (the form names nobody: the service reads the signed-in
    member's declaration alone)."""
    _, error = attempt(
        lambda: projects_service().withdraw_conflict(g.user, project_id, request.form.get("reason", ""))
    )
    if error:
        return _render_review(project_id, error)
    flash(
        "Declaration of a conflict of interest withdrawn. The chair can see that you withdrew it and why.",
        "success",
    )
    return redirect(url_for("dac.review", project_id=project_id))


@bp.post("/<project_id>/vote")
@requires(Permission.APPLICATION_REVIEW)
def vote(project_id: str) -> Any:
    _, error = attempt(
        lambda: projects_service().cast_vote(
            g.user, project_id, request.form.get("choice", ""), request.form.get("rationale", "")
        )
    )
    if error:
        return _render_review(project_id, error)
    flash("Vote recorded", "success")
    return redirect(url_for("dac.review", project_id=project_id))


@bp.route("/<project_id>/decide", methods=["GET", "POST"])
@requires(Permission.APPLICATION_DECIDE)
def decide(project_id: str) -> Any:
    svc = projects_service()
    project = _project(project_id)
    version = svc.current_version(project)
    if version is None:
        abort(404)
    error = None
    form: Any = request.form
    if request.method == "POST":
        outcome = form.get("outcome", "")
        columns = None
        if outcome == rules.APPROVED:
            columns = {d["name"]: form.getlist(f"columns-{d['name']}") for d in version.content["datasets"]}
        decision, error = attempt(
            lambda: svc.decide(
                g.user,
                project.id,
                outcome,
                conditions=form.get("conditions", ""),
                public_comment=form.get("public_comment", ""),
                approved_columns=columns,
            )
        )
        if decision is not None:
            flash(f"Decision recorded: {rules.STATE_LABELS[decision.outcome].lower()}", "success")
            return redirect(url_for("dac.review", project_id=project.id))
    review = svc.review_of(g.user, version)
    votes, counted = review.votes, len(review.counted)
    return render_template(
        "dac/decide.html",
        counted=counted,
        quorum=svc.policy.quorum,
        decidable=project.state == rules.IN_REVIEW and counted >= svc.policy.quorum,
        title=f"Decide: {project.title}",
        project=project,
        version=version,
        content=version.content,
        error=error,
        form=form if request.method == "POST" else None,
        votes=votes,
        vote_labels=rules.VOTE_LABELS,
        people=_people([v.reviewer_id for v in votes or []]),
        datasets={d.name: d for d in svc.list_datasets()},
    ), (400 if error else 200)


@bp.get("/<project_id>/suspend")
@requires(Permission.APPLICATION_DECIDE)
def confirm_suspend(project_id: str) -> Any:
    project, error = attempt(lambda: projects_service().project_to_suspend(g.user, project_id))
    if project is None:
        flash(str(error), "error")
        return redirect(url_for("projects.show", project_id=project_id))
    members = len(project.active_members)
    team = f"{members} team member{'s' if members != 1 else ''}"
    return render_confirmation(
        Confirmation(
            caption=project.title,
            question=f"Are you sure you want to suspend {project.title}?",
            consequences=[
                f"Access to the data stops at once for the project's {team}, and their running workspaces are stopped",
                "The team is told that the project is suspended until the committee reinstates it",
                "Nothing is destroyed: reinstating the project gives its team access again",
            ],
            reason_label="Reason for suspending",
            reason_hint="Recorded in the audit log and shown on the project page.",
            action=url_for("dac.suspend", project_id=project.id),
            button="Yes, suspend the project",
            cancel=url_for("projects.show", project_id=project.id),
            cancel_text="No, keep the project active",
        ),
        title=f"Suspend {project.title}",
    )


@bp.post("/<project_id>/suspend")
@requires(Permission.APPLICATION_DECIDE)
def suspend(project_id: str) -> Any:
    _, error = attempt(lambda: projects_service().suspend(g.user, project_id, request.form.get("reason", "")))
    flash(str(error) if error else "Project suspended: access has stopped", "error" if error else "success")
    return redirect(url_for("projects.show", project_id=project_id))


@bp.post("/<project_id>/reinstate")
@requires(Permission.APPLICATION_DECIDE)
def reinstate(project_id: str) -> Any:
    _, error = attempt(lambda: projects_service().reinstate(g.user, project_id))
    flash(str(error) if error else "Project reinstated", "error" if error else "success")
    return redirect(url_for("projects.show", project_id=project_id))


@bp.post("/<project_id>/privacy-budget")
@requires(Permission.APPLICATION_DECIDE)
def privacy_budget(project_id: str) -> Any:
    """The chair sets the total epsilon the project may spend on differentially private releases."""
    from disclosure.budget import PrivacyBudgets
    from disclosure.kernel import OutputError, OutputPermissionDenied
    from tre.authn import platform

    f = request.form
    try:
        state = PrivacyBudgets.from_platform(platform()).set_total(
            g.user, project_id, f.get("total_epsilon", ""), f.get("reason", "")
        )
    except OutputPermissionDenied:
        abort(403)
    except OutputError as exc:
        flash(str(exc), "error")
    else:
        flash(f"Privacy budget set: epsilon {state.total:g}, {state.remaining:g} left", "success")
    return redirect(url_for("projects.show", project_id=project_id))


# What each registered destruction hook destroys, in words for the confirmation page.
DESTROYED_BY_HOOK = {
    "extracts-and-project-key": "the project's pseudonymised extracts and the key that made its tokens",
    "output-files": "output files not yet released",
}
CONFIRM_CLOSE = "yes"


def _render_close_confirmation(project_id: str, reason: str, error: list[tuple[str, str]] | None) -> tuple[str, int]:
    """The confirmation step before closing: what stops, what is destroyed, and that it cannot be undone."""
    from projects.closure import registered_hooks

    svc = projects_service()
    project = _project(project_id)
    return render_template(
        "dac/close.html",
        title=f"Close {project.title}",
        project=project,
        reason=reason,
        error=error,
        approved=approved_columns(svc.session, project.id),
        destroyed=[DESTROYED_BY_HOOK.get(name, name) for name in registered_hooks()],
        members=len(project.active_members),
        labels=rules.STATE_LABELS,
    ), (400 if error else 200)


@bp.post("/<project_id>/close")
@requires(Permission.APPLICATION_DECIDE)
def close(project_id: str) -> Any:
    """Closing destroys data: without the confirmation box ticked on the confirmation page it only
    shows that page (what will be destroyed) and changes nothing."""
    reason = request.form.get("reason", "")
    if not reason.strip():  # the project page's form asks for the reason first
        flash("Give the reason for closing the project", "error")
        return redirect(url_for("projects.show", project_id=project_id))
    if request.form.get("confirm") != CONFIRM_CLOSE:
        asked = request.form.get("step") == "confirm"  # the confirmation page was sent without the tick
        unticked = [("#confirm", "Confirm that the project's data is to be destroyed")] if asked else None
        return _render_close_confirmation(project_id, reason, unticked)
    _, error = attempt(lambda: projects_service().close(g.user, project_id, reason))
    flash(
        str(error) if error else "Project closed: access has stopped and data destruction is queued",
        "error" if error else "success",
    )
    return redirect(url_for("projects.show", project_id=project_id))


@bp.post("/<project_id>/optout-exemptions")
@requires(Permission.OPTOUT_EXEMPT)
def exempt_from_optout(project_id: str) -> Any:
    """The chair records that the project's legal basis exempts it from a named opt-out list."""
    f = request.form
    _, error = attempt(
        lambda: projects_service().set_optout_exemption(g.user, project_id, f.get("list_name", ""), f.get("basis", ""))
    )
    flash(
        str(error) if error else "Exemption recorded: extracts requested from now on keep that list's patients",
        "error" if error else "success",
    )
    return redirect(url_for("projects.show", project_id=project_id))


@bp.get("/<project_id>/optout-exemptions/<list_name>/revoke")
@requires(Permission.OPTOUT_EXEMPT)
def confirm_revoke_optout_exemption(project_id: str, list_name: str) -> Any:
    found, error = attempt(lambda: projects_service().exemption_to_revoke(g.user, project_id, list_name))
    if found is None:
        flash(str(error), "error")
        return redirect(url_for("projects.show", project_id=project_id))
    project, exemption = found
    return render_confirmation(
        Confirmation(
            caption=project.title,
            question=f"Are you sure you want to withdraw the exemption from the {exemption.list_name} opt-out list?",
            consequences=[
                f"Extracts built from now on remove the patients on the {exemption.list_name} list again",
                "Extracts already built keep them until they are rebuilt",
                f"The recorded basis (\u201c{exemption.basis}\u201d) is removed; the audit log keeps the decision",
            ],
            action=url_for("dac.revoke_optout_exemption", project_id=project.id, list_name=exemption.list_name),
            button="Yes, withdraw the exemption",
            cancel=url_for("projects.show", project_id=project.id),
            cancel_text="No, keep the exemption",
        ),
        title=f"Withdraw the opt-out exemption of {project.title}",
    )


@bp.post("/<project_id>/optout-exemptions/<list_name>/revoke")
@requires(Permission.OPTOUT_EXEMPT)
def revoke_optout_exemption(project_id: str, list_name: str) -> Any:
    _, error = attempt(lambda: projects_service().revoke_optout_exemption(g.user, project_id, list_name))
    flash(str(error) if error else "Exemption withdrawn", "error" if error else "success")
    return redirect(url_for("projects.show", project_id=project_id))


@bp.post("/extensions/<extension_id>")
@requires(Permission.APPLICATION_DECIDE)
def decide_extension(extension_id: str) -> Any:
    ext, error = attempt(
        lambda: projects_service().decide_extension(g.user, extension_id, request.form.get("grant") == "1")
    )
    flash(str(error) if error else f"Extension {ext.outcome if ext else ''}", "error" if error else "success")
    return redirect(url_for("dac.queue"))
