"""The access matrix: every route of the app × every role × own project / other project / no project.

The routes come from the app's own route table (``app.url_map``), so a route added without an entry
in ``EXPECT`` below fails ``test_every_route_has_an_entry_in_the_access_matrix`` with the exact key
to add. Each cell fills the route's URL parameters with real ids from a world built by
``tests/projects/factories.build_world`` (two active projects, each with an output request, a file,
an extension request, a job, a re-identification request and personal API tokens), sends the request
as that role and classifies the answer:

- **allow**: 2xx, a redirect anywhere but the sign-in page, or (for a request with a body) 400/409/422,
  which means the route let the person in and then refused the empty input;
- **deny**: 401, 403, 404 (a thing one may not see is not found) or a redirect to the sign-in page;
- **error**: any 5xx, which fails every cell whatever the expectation; so does an answer that shows
  the database's internals (its driver's name, SQL, a traceback) whatever its status.

Contexts: ``own`` fills ids from project A (the researcher is its PI; the DAC member reviewed it) and,
for ``user_id``/``token_id``, the acting person's own account and token; ``other`` fills ids from
project B (another researcher's project) and another person's account and token; ``none`` fills ids
that name nothing. Routes without ids have one context, ``-``.

The matrix runs on SQLite and, when reachable, on PostgreSQL, each in a database of its own built once
(``tests/security/backends.py``). Every state change a cell makes is undone before the next cell (the
database is put back from a snapshot), so each cell sees the same world. CSRF is switched off here
because it is tested on its own (tests/tre/web/test_auth.py); this matrix is about who may reach what.

Run with ``TRE_ACCESS_MATRIX_SHOW=1`` and ``-s`` to print the observed outcome of every cell.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import pytest
from sqlalchemy import select, update

from pseudonymisation.models import ReidentificationRequest
from tests.disclosure.factories import SAFE_CSV, active_project, run_queued_jobs
from tests.disclosure.factories import outputs as outputs_service
from tests.projects.factories import build_world, make_user, ready_for_access
from tests.security.backends import BACKENDS, DatabaseSnapshot, app_on, database_internals
from tests.security.figures import record
from tre.access import declared_access
from tre.core import jobs
from tre.core.db import transaction, utcnow
from tre.core.identity import Identity, User

ROLES = (
    "researcher",
    "dac_member",
    "dac_chair",
    "output_checker",
    "data_custodian",
    "administrator",
    "auditor",
    "linkage_officer",
    "anonymous",
    "no_mfa",
)
SIGNED_IN = ROLES[:8]
CONTEXTS = ("own", "other", "none")
# Parameters that name no entity of a project get one fixed value in every context.
# (No single sign-on link exists in this world: ``link_id`` names none, so the route refuses or 404s.)
PLAIN_PARAMS = {
    "filename": "nhsuk/nhsuk-frontend.min.css",
    "list_name": "national",
    "name": "national",
    "link_id": "0" * 32,
    "grant_id": "0" * 32,  # no role waits for approval in this world
    "delivery_id": "0" * 32,  # no dataset has had a delivery in this world
    "run_id": "0" * 32,  # no linkage run in this world (tests/pseudonymisation/test_linkage_review.py has them)
    "candidate_id": "0" * 32,  # no candidate pair either
    "upload_id": "0" * 32,  # no upload is under way in this world (tests/pseudonymisation/test_uploads.py)
}
ID_PARAMS = {"project_id", "request_id", "file_id", "user_id", "dataset_id", "extension_id", "token_id", "job_id"}

# The expectation table. Key: "METHOD rule" exactly as in app.url_map. Value: who is let in, as
# space-separated entries; a role not named is refused everywhere.
#   "*"            everyone, signed in or not, in every context
#   "signed_in"    the seven signed-in roles (with MFA), in every context with a real id
#   "role"         that role, in every context with a real id (own and other), never for an id naming nothing
#   "role:o"       only in its own project's context; "role:ot" own and other; "role:otn" also with no id
# Anonymous and signed-in-without-MFA people are refused everything that is not public: a session
# that has passed the password but not the second factor is not signed in.
EXPECT: dict[str, str] = {
    "DELETE /api/v1/projects/<string:project_id>/optout-exemptions/<string:list_name>": "",  # no exemption exists: 404
    "GET /": "*",
    "GET /about": "*",
    "GET /account/": "signed_in",
    "GET /account/password": "signed_in",
    "GET /admin/users": "administrator",
    "GET /admin/users/<user_id>": "administrator",
    "GET /admin/users/new": "administrator",
    "GET /api/docs": "*",
    "GET /api/openapi.json": "*",
    "GET /api/v1/agreement": "signed_in",
    "GET /api/v1/datasets": "researcher dac_member dac_chair data_custodian",
    "GET /api/v1/jobs/<string:job_id>": "data_custodian administrator",
    "GET /api/v1/jwks.json": "*",
    "GET /api/v1/me": "signed_in",
    "GET /api/v1/optout-lists": "data_custodian",
    "GET /api/v1/optout-lists/<string:name>": "",  # no list uploaded in this world: 404
    "GET /api/v1/outputs/files/<string:file_id>": "",  # as GET /outputs/files/<file_id>
    "GET /api/v1/outputs/queue": "output_checker",
    "GET /api/v1/outputs/requests/<string:request_id>/bundle": "",  # nothing is released in this world
    "GET /api/v1/outputs/requests/<string:request_id>/code": "",  # no request here was sent with code: 404
    "GET /api/v1/outputs/requests/<string:request_id>": "researcher:o",
    "GET /api/v1/outputs/requests/<string:request_id>/checker-view": "output_checker",
    "GET /api/v1/projects": "researcher",
    "GET /api/v1/projects/<string:project_id>": "researcher:o dac_member dac_chair",
    "GET /api/v1/projects/<string:project_id>/access": "signed_in:otn",  # answers about the caller's own access
    "GET /api/v1/projects/<string:project_id>/approved-columns": "researcher:o dac_member dac_chair",
    "GET /api/v1/projects/<string:project_id>/extracts/latest": "",  # no extract built in this world: 404 for everyone
    "GET /api/v1/projects/<string:project_id>/optout-exemptions": "researcher:o dac_member dac_chair",
    "GET /api/v1/projects/<string:project_id>/votes": "dac_member:o dac_chair:o",
    "GET /api/v1/review-queue": "dac_member dac_chair",
    "GET /api/v1/users": "administrator",
    "GET /api/v1/role-grants": "administrator",
    "POST /api/v1/role-grants/<string:grant_id>/decision": "administrator",  # let in; the empty body is 422
    "POST /admin/role-grants/<grant_id>/decision": "",  # no such grant: sent back with the error
    "GET /api/v1/version": "*",
    "GET /audit/": "auditor",
    "GET /audit/export.csv": "auditor",
    "GET /auth/login": "*",
    "GET /auth/mfa": "",  # a pending sign-in without MFA is sent to sign in again
    "GET /auth/mfa/enrol": "no_mfa",
    "GET /auth/reset": "*",
    "GET /auth/sso/callback": "",  # single sign-on is not configured here: 404
    "GET /catalogue/": "researcher dac_member dac_chair data_custodian",
    "GET /catalogue/datasets/<dataset_id>": "researcher dac_member dac_chair data_custodian",
    "GET /catalogue/new": "data_custodian",
    "GET /catalogue/datasets/<dataset_id>/schema": "data_custodian",  # its registrant; the source is missing
    "GET /api/v1/datasets/<string:dataset_id>/schema-proposal": "data_custodian",  # 409: the source is missing
    # Deliveries: the dataset's registrant (data_custodian here); no delivery exists, so its page is 404.
    "GET /catalogue/datasets/<dataset_id>/deliveries": "data_custodian",
    "POST /catalogue/datasets/<dataset_id>/deliveries": "data_custodian",  # the empty form is refused (422)
    "GET /catalogue/deliveries/<delivery_id>": "",
    # Uploads: the page and its no-script form (the empty form is refused, 422), the protocol's create
    # (400 without a body) and, for an upload id naming nothing, 404; a PATCH without its offset is 400.
    "GET /catalogue/datasets/<dataset_id>/upload": "data_custodian",
    "POST /catalogue/datasets/<dataset_id>/upload": "data_custodian",
    "GET /catalogue/new/upload": "data_custodian",
    "GET /catalogue/omop": "data_custodian",
    "POST /catalogue/omop": "data_custodian",  # the empty form is refused (422)
    "POST /catalogue/new/upload": "data_custodian",
    "POST /catalogue/uploads": "data_custodian",
    "GET /catalogue/uploads/<upload_id>": "",
    "PATCH /catalogue/uploads/<upload_id>": "data_custodian",
    "POST /catalogue/uploads/<upload_id>/finish": "",
    "GET /api/v1/datasets/<string:dataset_id>/deliveries": "data_custodian",
    "GET /api/v1/datasets/<string:dataset_id>/versions": "data_custodian",
    "GET /api/v1/datasets/<string:dataset_id>/delivery-rules": "data_custodian",
    "GET /api/v1/deliveries/<string:delivery_id>": "",
    "GET /api/v1/datasets/<string:dataset_id>/metadata": "researcher dac_member dac_chair data_custodian",
    "POST /api/v1/datasets/omop": "data_custodian",  # the empty body is refused (422) once let in
    # The empty body is refused (422) before the dataset is looked up, so also for an id naming nothing.
    "POST /api/v1/datasets/<string:dataset_id>/deliveries": "data_custodian:otn",
    "PUT /api/v1/datasets/<string:dataset_id>/delivery-rules": "data_custodian:otn",
    "PUT /api/v1/projects/<string:project_id>/dataset-versions/<string:dataset_id>": "data_custodian:otn",
    "GET /dac/": "dac_member dac_chair",
    "GET /dac/<project_id>": "dac_member:o dac_chair:o",
    "GET /dac/<project_id>/decide": "dac_chair:o",
    "GET /dac/turnaround": "dac_member dac_chair",
    "GET /extracts/": "data_custodian",
    "GET /extracts/<project_id>/manifest": "data_custodian",
    "GET /extracts/optouts": "data_custodian",
    "GET /extracts/optouts/<name>": "",  # no list uploaded in this world: 404
    "GET /healthz": "*",
    "GET /linkage/": "data_custodian",
    "GET /linkage/review": "linkage_officer",
    "GET /linkage/review/<candidate_id>": "",  # no candidate pair in this world: 404
    "GET /linkage/runs/<run_id>": "",  # no linkage run in this world: 404
    "GET /linkage/runs/<run_id>/quality.json": "",  # no linkage run in this world: 404
    "POST /linkage/review/<candidate_id>": "",  # the officer is sent back with a message: no such pair
    "POST /linkage/runs": "",  # the custodian is sent back with a message: no dataset names linkage columns
    "GET /metrics": "*",
    "GET /metrics/outputs": "*",
    "GET /outputs/": "researcher",
    # An output's content: its checkers while they hold a review place, the team once released
    # (disclosure/visibility.py). Here both requests await review and nobody holds a place, so nobody
    # sees content; tests/security/test_output_content.py walks every actor x state x route.
    "GET /outputs/files/<file_id>": "",
    "GET /outputs/metrics": "output_checker",
    "GET /outputs/queue": "output_checker",
    "GET /outputs/requests/<request_id>": "researcher:o output_checker",
    "GET /outputs/requests/<request_id>/bundle": "",  # nothing is released in this world
    "GET /projects/": "researcher",
    "GET /projects/<project_id>": "researcher:o dac_member dac_chair",
    "GET /projects/<project_id>/agreement": "researcher:o dac_member dac_chair",
    "GET /projects/<project_id>/edit": "",
    "GET /projects/admin/agreements": "administrator",
    "GET /projects/admin/training": "administrator",
    "GET /projects/messages": "signed_in",
    "GET /projects/new": "researcher",
    "GET /readyz": "*",
    "GET /static/<path:filename>": "*",
    "PATCH /api/v1/projects/<string:project_id>": "researcher:o",
    "POST /account/password": "signed_in",  # the empty form is refused with 400 once let in
    "POST /account/tokens": "",
    "POST /account/tokens/<token_id>/revoke": "signed_in:o",  # only one's own token
    "POST /admin/users/<user_id>/active": "administrator:t",
    "POST /admin/users/<user_id>/reset-link": "administrator",
    "POST /admin/users/<user_id>/roles": "administrator:t",
    "POST /admin/users/<user_id>/sso/<link_id>/remove": "",
    "POST /admin/users/new": "administrator",
    "POST /api/v1/agreement": "administrator",
    "POST /api/v1/datasets": "data_custodian",
    "POST /api/v1/extensions/<string:extension_id>/decision": "dac_chair:otn",
    "POST /api/v1/hub/authorise-spawn": "",  # JupyterHub's service secret only
    "POST /api/v1/hub/redeem": "",  # JupyterHub's service secret only
    "POST /api/v1/optout-lists": "data_custodian",
    "POST /api/v1/outputs/requests": "",  # workspace tokens only (scoped to one project)
    "POST /api/v1/outputs/requests/<string:request_id>/resubmission": "",  # workspace tokens only
    "POST /api/v1/outputs/requests/<string:request_id>/assign": "output_checker:otn",
    "POST /api/v1/outputs/requests/<string:request_id>/claim": "output_checker",
    "POST /api/v1/outputs/requests/<string:request_id>/comments": "output_checker:otn",
    "POST /api/v1/outputs/requests/<string:request_id>/decision": "output_checker:otn",
    "POST /api/v1/outputs/requests/<string:request_id>/release": "output_checker",
    "POST /api/v1/outputs/requests/<string:request_id>/review": "output_checker",
    "POST /api/v1/outputs/requests/<string:request_id>/revoke": "output_checker:otn",
    "POST /api/v1/outputs/requests/<string:request_id>/votes": "output_checker:otn",
    "POST /api/v1/projects": "researcher",
    "POST /api/v1/projects/<string:project_id>/activate": "researcher:o dac_chair",
    "POST /api/v1/projects/<string:project_id>/close": "dac_chair:otn",
    "POST /api/v1/projects/<string:project_id>/conflict": "dac_member:otn dac_chair:otn",
    "POST /api/v1/projects/<string:project_id>/conflict/withdraw": "dac_member:otn dac_chair:otn",
    "POST /api/v1/projects/<string:project_id>/decision": "dac_chair:otn",
    "POST /api/v1/projects/<string:project_id>/extensions": "signed_in:otn",
    "POST /api/v1/projects/<string:project_id>/extracts": "data_custodian:otn",
    "POST /api/v1/projects/<string:project_id>/members": "researcher:otn",
    "POST /api/v1/projects/<string:project_id>/optout-exemptions": "dac_chair:otn",
    "POST /api/v1/projects/<string:project_id>/reinstate": "dac_chair",
    "POST /api/v1/projects/<string:project_id>/reviewers": "dac_chair:otn",
    "POST /api/v1/projects/<string:project_id>/signatures": "signed_in:otn",
    "POST /api/v1/projects/<string:project_id>/submit": "researcher:o",
    "POST /api/v1/projects/<string:project_id>/suspend": "dac_chair:otn",
    "POST /api/v1/projects/<string:project_id>/votes": "dac_member:otn dac_chair:otn",
    "POST /api/v1/reidentifications": "data_custodian",
    "POST /api/v1/reidentifications/<string:request_id>/decision": "dac_chair:otn data_custodian:otn",
    "POST /api/v1/reidentifications/<string:request_id>/identifiers": "data_custodian:otn",
    "POST /api/v1/training": "administrator",
    "POST /api/v1/users": "administrator",
    "POST /auth/login": "*",
    "POST /auth/logout": "signed_in",
    "POST /auth/mfa": "",
    "POST /auth/mfa/enrol": "no_mfa",
    "POST /auth/reset": "*",
    "POST /auth/sso/link": "",  # single sign-on is not configured here
    "POST /auth/sso/start": "",  # single sign-on is not configured here: 404
    "POST /catalogue/new": "data_custodian",
    "POST /catalogue/datasets/<dataset_id>/schema": "data_custodian",
    # The empty body is refused (422) before the dataset is looked up, so also for an id naming nothing.
    "POST /api/v1/datasets/<string:dataset_id>/schema-preview": "data_custodian:otn",
    "PUT /api/v1/datasets/<string:dataset_id>/schema": "data_custodian:otn",
    "POST /dac/<project_id>/assign": "dac_chair:o",
    "POST /dac/<project_id>/close": "",
    "POST /dac/<project_id>/conflict": "dac_member:o dac_chair:o",
    "POST /dac/<project_id>/conflict/withdraw": "dac_member:o dac_chair:o",  # only one's own; none here: 400
    "POST /dac/<project_id>/decide": "dac_chair:o",
    "POST /dac/<project_id>/optout-exemptions": "",
    "POST /dac/<project_id>/optout-exemptions/<list_name>/revoke": "",  # no exemption exists: 404
    "POST /dac/<project_id>/privacy-budget": "",  # the chair's empty form is refused; others are denied
    "POST /dac/<project_id>/reinstate": "",
    "POST /dac/<project_id>/suspend": "",
    "POST /dac/<project_id>/vote": "dac_member:o dac_chair:o",
    "POST /dac/extensions/<extension_id>": "dac_chair",
    "POST /extracts/<project_id>": "",
    "POST /extracts/optouts": "data_custodian",
    "POST /outputs/requests/<request_id>/assign": "",
    "POST /outputs/requests/<request_id>/checks-failed": "",
    "POST /outputs/requests/<request_id>/claim": "output_checker",
    "POST /outputs/requests/<request_id>/comments": "",
    "POST /outputs/requests/<request_id>/decision": "",
    "POST /outputs/requests/<request_id>/files/<file_id>/remove": "",
    "POST /outputs/requests/<request_id>/groups": "",
    "POST /outputs/requests/<request_id>/release": "",
    "POST /outputs/requests/<request_id>/review": "",
    "POST /outputs/requests/<request_id>/revoke": "",
    "POST /outputs/requests/<request_id>/submit": "",
    "POST /outputs/requests/<request_id>/votes": "",
    "POST /outputs/requests/<request_id>/withdraw": "researcher:o",
    "POST /projects/<project_id>/activate": "",
    "POST /projects/<project_id>/agreement": "researcher:o",
    "POST /projects/<project_id>/datasets/<dataset_id>": "",
    "POST /projects/<project_id>/edit": "",
    "POST /projects/<project_id>/extension": "",
    "POST /projects/<project_id>/members": "",
    "POST /projects/<project_id>/members/<user_id>/remove": "",
    "POST /projects/<project_id>/submit": "researcher:o",
    "POST /projects/<project_id>/workspace": "researcher:o",  # the access gate: only the active, signed, trained team
    "POST /projects/admin/agreements": "administrator",
    "POST /projects/admin/training": "administrator",
    "POST /projects/admin/training/import": "",
    "POST /projects/new": "researcher",
    "PUT /api/v1/projects/<string:project_id>/datasets/<string:dataset_id>": "researcher:otn",
    "PUT /api/v1/users/<string:user_id>/roles": "administrator:otn",
    # Confirmation pages of destructive actions (tre/web/confirm.py): refused as their action is.
    "GET /outputs/requests/<request_id>/withdraw": "researcher:o",
    "GET /outputs/requests/<request_id>/files/<file_id>/remove": "",  # awaiting review: not editable
    "GET /outputs/requests/<request_id>/revoke": "",  # nothing is released in this world
    "GET /projects/<project_id>/members/<user_id>/remove": "",  # the PI cannot be removed; others not on the team
    "GET /dac/<project_id>/suspend": "dac_chair",
    "GET /dac/<project_id>/optout-exemptions/<list_name>/revoke": "",  # no exemption exists: 404
    "GET /account/tokens/<token_id>/revoke": "signed_in:o",  # only one's own token
    "GET /admin/users/<user_id>/active": "administrator:t",  # not one's own account
    "GET /admin/users/<user_id>/sso/<link_id>/remove": "",  # no single sign-on link in this world
}


def allowed(spec: str, role: str, context: str) -> bool:
    for entry in spec.split():
        name, _, contexts = entry.partition(":")
        if name == "*":
            return True
        roles = SIGNED_IN if name == "signed_in" else (name,)
        if role not in roles:
            continue
        if context == "-":
            return True
        return {"own": "o", "other": "t", "none": "n"}[context] in (contexts or "ot")
    return False


@dataclass
class MatrixWorld:
    app: Any
    backend: str
    snapshot: DatabaseSnapshot
    users: dict[str, Any] = field(default_factory=dict)
    api_tokens: dict[str, str] = field(default_factory=dict)
    own_tokens: dict[str, str] = field(default_factory=dict)
    ids: dict[str, dict[str, str]] = field(default_factory=dict)
    reid: dict[str, str] = field(default_factory=dict)

    def restore(self) -> None:
        self.snapshot.restore()


def _build(app: Any, backend: str) -> MatrixWorld:
    jobs.set_dispatcher(None)  # checks and extracts stay queued: no thread writes while a cell runs
    w = build_world(app)
    a = ready_for_access(w)  # PI rita, member sam, reviewed by dana and drew, decided by chris
    b = active_project(app, w.outsider, title="Another team's project")
    checker = make_user(app, "olive.checker", ["output_checker"])
    auditor = make_user(app, "audrey.auditor", ["auditor"])
    officer = make_user(app, "lina.linkage", ["linkage_officer"])
    no_mfa = make_user(app, "nora.nomfa", ["researcher", "dac_member", "dac_chair", "output_checker",
                                             "data_custodian", "administrator", "auditor"])
    svc = outputs_service(app)
    requests, files = {}, {}
    for key, author, project in (("own", w.pi, a), ("other", w.outsider, b)):
        req, _ = svc.create_request(author, project.id, "Admissions by region")
        svc.set_group(author, req.id, "tables", "Admissions by region and sex, adults 2020", "Rounded to 5")
        f = svc.add_file(author, req.id, "table.csv", SAFE_CSV, group="tables")
        svc.submit(author, req.id)
        requests[key], files[key] = req.id, f.id
    job_ids = list(app.extensions["tre.db"].session.scalars(select(jobs.Job.id).order_by(jobs.Job.created_at)))
    run_queued_jobs(app)
    later = dt.date.today() + dt.timedelta(days=500)
    ext_a = w.svc.request_extension(w.pi, a.id, later, "More follow-up time is needed for the outcome.")
    ext_b = w.svc.request_extension(w.outsider, b.id, later, "More follow-up time is needed for the outcome.")
    second = w.svc.register_dataset(
        w.custodian, name="prescriptions", title="Prescriptions", description="One row per prescription",
        source_kind="parquet", source_location="/data/prescriptions.parquet", sensitivity="special_category",
        columns=[{"name": "drug", "role": "attribute", "description": "Drug"}],
    )
    session = app.extensions["tre.db"].session
    reid = {}
    with transaction(session) as s:
        for key, project in (("own", a), ("other", b)):
            row = ReidentificationRequest(project_id=project.id, requested_by=w.custodian.id,
                                          purpose="Recall a patient for urgent clinical care.", tokens=["t1"])
            s.add(row)
            s.flush()
            reid[key] = row.id

    users = {
        "researcher": w.pi, "dac_member": w.dana, "dac_chair": w.chair, "output_checker": checker,
        "data_custodian": w.custodian, "administrator": w.admin, "auditor": auditor,
        "linkage_officer": officer, "no_mfa": no_mfa,
    }
    p = app.extensions["tre.platform"]
    ident = Identity(p.db.session, p.keys, p.audit)
    world = MatrixWorld(app=app, backend=backend, snapshot=DatabaseSnapshot(app), users=users, reid=reid)
    for role, user in users.items():
        row, plaintext = ident.create_personal_token(user, "matrix", 30)
        world.api_tokens[role], world.own_tokens[role] = plaintext, row.id
    other_token, _ = ident.create_personal_token(w.outsider, "someone else's", 30)
    with transaction(session) as s:  # its token was made while it had MFA; without MFA it must stop working
        s.execute(update(User).where(User.id == no_mfa.id).values(mfa_enrolled_at=None))
    world.ids = {
        "own": {"project_id": a.id, "request_id": requests["own"], "file_id": files["own"],
                "dataset_id": w.dataset_id, "extension_id": ext_a.id, "job_id": job_ids[0]},
        "other": {"project_id": b.id, "request_id": requests["other"], "file_id": files["other"],
                  "dataset_id": second.id, "extension_id": ext_b.id, "job_id": job_ids[1],
                  "user_id": w.outsider.id, "token_id": other_token.id},
    }
    world.snapshot.take()
    return world


@pytest.fixture(scope="module", params=BACKENDS)
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MatrixWorld]:
    with app_on(request.param, tmp_path_factory.mktemp(f"matrix-{request.param}")) as app:
        app.config["WTF_CSRF_ENABLED"] = False
        yield _build(app, request.param)


def routes(app: Any) -> list[tuple[str, str, str, str]]:
    """(key, rule, method, endpoint) for every route the app serves."""
    found = []
    for rule in app.url_map.iter_rules():
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            found.append((f"{method} {rule.rule}", rule.rule, method, rule.endpoint))
    return sorted(found)


def params(rule: str) -> list[str]:
    return [m.group(1) for m in re.finditer(r"<(?:[a-z]+:)?([a-z_]+)>", rule)]


def contexts(rule: str) -> tuple[str, ...]:
    return CONTEXTS if set(params(rule)) & ID_PARAMS else ("-",)


def fill(world: MatrixWorld, rule: str, role: str, context: str) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in PLAIN_PARAMS:
            return PLAIN_PARAMS[name]
        if context == "none":
            return uuid.uuid4().hex
        if name == "request_id" and rule.startswith("/api/v1/reidentifications/"):
            return world.reid[context]
        if context == "own" and name == "user_id":
            return world.users.get(role, world.users["researcher"]).id
        if context == "own" and name == "token_id":
            return world.own_tokens.get(role, world.own_tokens["researcher"])
        if name not in world.ids.get(context, {}):
            raise AssertionError(
                f"{rule}: no value for the URL parameter <{name}>; give it one in PLAIN_PARAMS or, if it names "
                "a thing that belongs to a project, in ID_PARAMS and MatrixWorld.ids"
            )
        return world.ids[context][name]

    return re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", value, rule)


def call(world: MatrixWorld, role: str, method: str, url: str) -> Any:
    client = world.app.test_client()
    api = url.startswith("/api/")
    headers = {}
    if role != "anonymous":
        if api:
            headers["Authorization"] = f"Bearer {world.api_tokens[role]}"
        else:
            user = world.users[role]
            with client.session_transaction() as sess:
                now = int(utcnow().timestamp())
                if role == "no_mfa":  # the password was right; the second factor is still to come
                    sess.update({"pending_uid": user.id, "pending_at": now, "next": "/"})
                else:
                    sess.update({"uid": user.id, "epoch": user.session_epoch, "seen": now, "signed_in": now})
    kwargs: dict[str, Any] = {"headers": headers}
    if method in ("POST", "PUT", "PATCH"):
        kwargs["json" if api else "data"] = {}
    response = client.open(url, method=method, **kwargs)
    if 300 <= response.status_code < 400 and not api:
        with client.session_transaction() as sess:
            response.refused_with = [m for category, m in sess.get("_flashes", []) if category == "error"]
    return response


def classify(method: str, response: Any) -> str:
    status = response.status_code
    if status >= 500:
        return "error"
    if status in (401, 403, 404):
        return "deny"
    if 300 <= status < 400:
        if urlparse(response.headers.get("Location", "")).path == "/auth/login":
            return "deny"
        # Sent back with an error message (the access gate said no, or the empty form was refused).
        return "refused" if getattr(response, "refused_with", None) else "allow"
    if status < 300:
        return "allow"
    if status == 409 or (status in (400, 422) and method in ("POST", "PUT", "PATCH", "DELETE")):
        return "allow"  # let in, then refused for the thing's state (409) or the empty input (400, 422)
    return f"unexpected {status}"


def test_every_route_has_an_entry_in_the_access_matrix(sqlite_app: Any) -> None:
    missing = [
        f'    "{key}": "...",  # declared {declared_access(sqlite_app, endpoint)!s}; endpoint {endpoint}'
        for key, _, _, endpoint in routes(sqlite_app)
        if key not in EXPECT
    ]
    assert not missing, (
        "These routes have no entry in EXPECT in tests/security/test_access_matrix.py. Add each line, "
        "naming the roles (and contexts) that must be let in:\n" + "\n".join(missing)
    )


def test_the_access_matrix_names_no_route_that_is_gone(sqlite_app: Any) -> None:
    served = {key for key, *_ in routes(sqlite_app)}
    assert sorted(set(EXPECT) - served) == []


def test_the_access_matrix_names_only_known_roles_and_contexts() -> None:
    for key, spec in EXPECT.items():
        for entry in spec.split():
            name, _, ctx = entry.partition(":")
            assert name in (*ROLES, "*", "signed_in"), f"{key}: unknown role {name}"
            assert set(ctx) <= set("otn"), f"{key}: unknown context {ctx}"


def test_every_route_answers_every_role_as_the_matrix_says(world: MatrixWorld) -> None:
    show = os.environ.get("TRE_ACCESS_MATRIX_SHOW") == "1"
    failures: list[str] = []
    cells = refused = 0
    for key, rule, method, _ in routes(world.app):
        spec = EXPECT.get(key)
        if spec is None:
            if not show:
                continue  # reported by test_every_route_has_an_entry_in_the_access_matrix
            spec = ""
        for role in ROLES:
            for context in contexts(rule):
                url = fill(world, rule, role, context)
                response = call(world, role, method, url)
                got = classify(method, response)
                leaked = database_internals(response.get_data(as_text=True))
                response.close()
                want = "allow" if allowed(spec, role, context) else "deny"
                cells += 1
                if show:
                    print(f"CELL {key} | {role} | {context} | {response.status_code} {got}")
                refused += got == "refused"
                # Someone the table lets in must be served; anyone else may be refused either way.
                if got != want and not (want == "deny" and got == "refused"):
                    failures.append(
                        f"{role:<15} {context:<5} {method} {url} -> {response.status_code} {got}, expected {want}"
                    )
                if leaked:
                    failures.append(f"{role:<15} {context:<5} {method} {url} -> its answer shows {leaked}")
                if method != "GET" and got != "deny":
                    world.restore()  # skipped when the cell wrote nothing
    on = f"on {world.backend}"
    record(f"access matrix cells (route × role × context) {on}", cells)
    record(f"access matrix routes {on}", len(routes(world.app)))
    record(f"access matrix cells refused with a message after the route let the person in {on}", refused)
    print(f"access matrix {on}: {cells} cells checked ({refused} refused with a message), "
          f"{world.snapshot.restores} restores")
    assert not failures, f"{len(failures)} of {cells} cells differ:\n" + "\n".join(failures)
