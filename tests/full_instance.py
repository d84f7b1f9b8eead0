"""A full instance: the demo loader's accounts, datasets, projects, extract and opt-out list, then every
workflow's states on top, so that every table of the service holds rows.

Used by the backup test (tests/tre/core/test_backup_full_instance.py), and by anything else that needs
"a service that has been used". When you add a model, add the workflow that fills it to
``build_full_instance`` below (one small step, through the service that owns the model):
``empty_tables`` names every table the built instance leaves empty, and a test fails while any is.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyarrow.parquet as pq
from click.testing import CliRunner
from sqlalchemy import MetaData, func, select
from sqlalchemy.engine import Connection

from tests.conftest import make_test_app
from tests.disclosure.factories import World as OutputsWorld
from tests.disclosure.factories import active_project, outputs, run_queued_jobs
from tests.tre.helpers import create_user, identity

DEMO_PATIENTS = 300
PASSWORD_USER = "fiona.full@nhs.example"


@dataclass
class FullInstance:
    app: Any
    instance: Path
    database_url: str
    released_request_id: str
    bundle: bytes
    bundle_sha256: str
    team_member_id: str  # on the released request's project: may download the bundle
    sign_in_email: str
    sign_in_secret: str  # TOTP secret of ``sign_in_email`` (password: tests.tre.helpers.PASSWORD)
    notes: dict[str, Any] = field(default_factory=dict)


def environment(instance: Path, database_url: str) -> dict[str, str]:
    """The variables a ``tre`` command needs to act on this instance."""
    return {"TRE_INSTANCE_PATH": str(instance), "TRE_DATABASE_URL": database_url, "TRE_BROKER_URL": "memory://",
            "TRE_ENVIRONMENT": "embedded"}


def tre(args: list[str], instance: Path, database_url: str) -> Any:
    """Run one ``tre`` command on the instance, as an operator would; fails loudly if it does."""
    from tre.cli import main

    result = CliRunner().invoke(main, args, env=environment(instance, database_url), catch_exceptions=False)
    assert result.exit_code == 0, f"tre {' '.join(args)} failed:\n{result.output}"
    return result


def build_full_instance(instance: Path, database_url: str) -> FullInstance:
    """``tre init`` and ``tre demo load`` on an empty database, then every workflow's states."""
    tre(["init"], instance, database_url)
    tre(["demo", "load", "--patients", str(DEMO_PATIENTS)], instance, database_url)
    landing = instance.parent / "full-instance-landing"
    landing.mkdir(parents=True, exist_ok=True)
    app = make_test_app(instance, database_url, landing_dir=landing)
    p = app.extensions["tre.platform"]
    demo = _demo_people(app)

    # --- accounts: password + MFA (recovery codes), an SSO link, a personal token, a reset link ----
    fiona, secret = create_user(app, PASSWORD_USER, ["researcher"])
    ident = identity(app)
    ident.link_oidc(fiona, {"iss": "https://login.nhs.example", "sub": "fiona-0001"})
    ident.create_personal_token(fiona, "analysis scripts", 30)
    ident.issue_reset_link(demo["adam.admin"], demo["sam.scientist"].id)
    # A role that touches data waits for a second administrator (tre/core/roles.py).
    ident.set_roles(demo["adam.admin"], fiona.id, ["researcher", "output_checker"])
    from tre.core.platform import revoke_token

    revoke_token(p.db, "jti-revoked-by-full-instance", dt.datetime.now(dt.UTC) + dt.timedelta(days=1))

    # --- outputs: a request at every state, comments, a release (and its ledger) ----------------------
    w = OutputsWorld(app)
    states: dict[str, str] = {}
    states["draft"] = w.draft().id
    states["submitted"] = w.submitted().id
    reviewed = w.reviewed(votes={"oscar": "changes_requested"})
    w.svc.comment(w.olive, reviewed.id, "Please round the small cells.", "shared")
    w.svc.comment(w.olive, reviewed.id, "Second checker agrees.", "private")
    states["reviewed"] = reviewed.id
    states["approved"] = w.approved().id
    released = w.released()
    states["released"] = released.id
    rejected = w.reviewed()
    w.svc.consolidate(w.olive, rejected.id, "reject", "Disclosive whatever is done to it")
    states["rejected"] = rejected.id
    returned = w.reviewed(votes={"oscar": "changes_requested"})
    w.svc.consolidate(w.olive, returned.id, "return", "Round to 5")
    states["returned"] = returned.id
    revoked = w.released()
    w.svc.revoke(w.olive, revoked.id, "Released by mistake")
    states["revoked"] = revoked.id
    withdrawn = w.draft()
    w.svc.withdraw(w.author, withdrawn.id)
    states["withdrawn"] = withdrawn.id
    bundle, release = outputs(app).download(w.author, released.id)

    # --- a workspace started on the outputs project -------------------------------------------------
    from projects.workspaces import hub_username, server_name
    from tre.workspaces import workspaces_service

    spawn = workspaces_service(p, request_id="full-instance").authorise_spawn(
        hub_username(w.author.id), server_name(w.project.id)
    )
    assert spawn["allowed"], spawn

    # --- projects: an extension asked for and granted, an opt-out exemption, a closed project -------
    from projects.models import Project
    from tests.projects.factories import service as projects_service

    projects = projects_service(app)
    demo_project = p.db.session.scalar(select(Project).where(Project.state == "active", Project.pi_id ==
                                                              demo["rita.researcher"].id))
    assert demo_project is not None and demo_project.end_date is not None
    ext = projects.request_extension(demo["rita.researcher"], demo_project.id,
                                     demo_project.end_date + dt.timedelta(days=90), "Twelve more weeks of follow-up")
    projects.decide_extension(demo["chris.chair"], ext.id, True)
    projects.set_optout_exemption(demo["chris.chair"], demo_project.id, "national",
                                  "Section 251 support, CAG reference 26/CAG/0001")
    # A committee member declares a conflict on the submitted application, then withdraws it as an error.
    waiting = p.db.session.scalar(select(Project).where(Project.state == "submitted"))
    assert waiting is not None
    projects.declare_conflict(demo["della.dac"], waiting.id, "I thought I had supervised the PI")
    projects.withdraw_conflict(demo["della.dac"], waiting.id, "A namesake: I have never worked with the PI")
    finished = active_project(app, w.colleague, title="A finished study")
    projects.close(demo["chris.chair"], finished.id, "Study finished")
    from projects.closure import run_destruction

    with app.app_context():
        run_destruction(p.db.session, p.audit, finished.id)

    # --- re-identification: asked for by the custodian, approved by the chair ----------------------
    from pseudonymisation.tasks import extracts_service

    with app.app_context():
        svc = extracts_service(p)
        extract_dir = p.settings.extracts_path / demo_project.id / "patients" / "data"
        table = pq.read_table(sorted(extract_dir.glob("*.parquet")))
        token = next(t for t in table.column("patient_token").to_pylist() if t)
        req = svc.request_reidentification(demo["cara.custodian"], demo_project.id, [token],
                                           "Recall a patient for urgent clinical care.")
        svc.decide_reidentification(demo["chris.chair"], req.id, "approve", "Clinical need confirmed")
    run_queued_jobs(app)

    _onboarding_and_linkage(app, instance, landing, demo, projects, demo_project.id)
    _rerun_and_privacy_budget(app, w)

    return FullInstance(
        app=app, instance=instance, database_url=database_url, released_request_id=released.id, bundle=bundle,
        bundle_sha256=release.bundle_sha256, team_member_id=w.author.id, sign_in_email=PASSWORD_USER,
        sign_in_secret=secret or "", notes={"output_states": states, "project": demo_project.id},
    )


def _onboarding_and_linkage(
    app: Any, instance: Path, landing: Path, demo: dict[str, Any], projects: Any, project_id: str
) -> None:
    """A refresh of a demo dataset accepted as a version, its rules and a project's pin; a person index
    run over linkable sources, with a linkage officer's decision on a candidate pair."""
    from projects.models import Dataset
    from pseudonymisation.delivery_tasks import deliveries_service
    from pseudonymisation.linkage import LinkageSettings
    from pseudonymisation.linkage_review import LinkageReview
    from pseudonymisation.person_index import PersonIndex
    from tests.projects.factories import make_user
    from tests.pseudonymisation.test_person_index import _register
    from tre.demo import linkage_sources

    p = app.extensions["tre.platform"]
    custodian = demo["cara.custodian"]
    patients = p.db.session.scalar(select(Dataset).where(Dataset.name == "patients"))
    assert patients is not None
    refresh = landing / "refresh" / Path(patients.source_location).name
    refresh.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(patients.source_location, refresh)
    deliveries = deliveries_service(p)
    deliveries.set_rules(custodian, patients.id, {"max_type_failure_fraction": 0.05})
    with app.app_context():
        delivery = deliveries.receive(custodian, patients.id, f"refresh/{refresh.name}")
    run_queued_jobs(app)
    deliveries.pin(custodian, project_id, patients.id, 1)
    assert delivery.id
    # A browser upload of the same refresh, left half sent (so the backup holds an open upload).
    from pseudonymisation.delivery_tasks import uploads_service

    uploads = uploads_service(p)
    data = refresh.read_bytes()
    with app.app_context():
        half = uploads.create(custodian, file_name=refresh.name, size=len(data), dataset_id=patients.id)
        uploads.append(custodian, half.id, 0, data[:100], hashlib.sha256(data[:100]).hexdigest())

    made = linkage_sources.generate(200, seed=11)
    paths = linkage_sources.write(made, instance.parent / "full-instance-linkable")
    _register(app, SimpleNamespace(svc=projects, custodian=custodian), paths)
    with app.app_context():
        index = PersonIndex(p.db.session, p.audit, p.keys, settings=LinkageSettings(threshold=0.999, review_floor=0.2))
        index.request_run(custodian)
    run_queued_jobs(app)
    officer = make_user(app, "lina.linkage", ["linkage_officer"])
    review = LinkageReview(p.db.session, p.audit, p.keys)
    _, pending = review.queue(officer)
    review.decide(officer, pending[0].id, "match", "Same person: a nickname and a new address.")


def _rerun_and_privacy_budget(app: Any, w: Any) -> None:
    """A request sent with the notebook that made it (its re-run row), and a DP table released against
    the project's privacy budget (the budget and its spend)."""
    from disclosure.budget import PrivacyBudgets
    from tests.disclosure.test_budget import dac, dp_output

    notebook = b'{"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": []}'
    w.svc.submit_from_workspace(
        w.author, w.project.id, "Made by a notebook", client_key=None,
        groups=[("outputs", "Counts by region", "Counts under 10 suppressed")],
        files=[("notes.txt", b"Counts by region, see the table.\n", "outputs", None)],
        code=("analysis.ipynb", notebook, None),
    )
    run_queued_jobs(app)
    with app.app_context():
        PrivacyBudgets.from_platform(app.extensions["tre.platform"]).set_total(
            dac(w), w.project.id, 5.0, "Pilot study: a small budget"
        )
        content, spec = dp_output(0.5)
        dp_request = w.approved(content=content, spec=spec)
        w.svc.release(w.olive, dp_request.id)


def _demo_people(app: Any) -> dict[str, Any]:
    from tre.core.identity import User
    from tre.demo.accounts import DOMAIN

    session = app.extensions["tre.db"].session
    people = {u.email.split("@")[0]: u for u in session.scalars(select(User).where(User.email.like(f"%@{DOMAIN}")))}
    return people


def row_counts(conn: Connection, metadata: MetaData) -> dict[str, int]:
    return {t.name: conn.execute(select(func.count()).select_from(t)).scalar_one() for t in metadata.sorted_tables}


def empty_tables(conn: Connection, metadata: MetaData) -> list[str]:
    """Every table of the service with no row: a model the full instance does not yet fill."""
    return sorted(name for name, count in row_counts(conn, metadata).items() if count == 0)


def all_rows(conn: Connection, metadata: MetaData) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table, in primary-key order, as the models read them."""
    return {
        t.name: [dict(r._mapping) for r in conn.execute(select(t).order_by(*t.primary_key.columns))]
        for t in metadata.sorted_tables
    }
