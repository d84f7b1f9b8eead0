"""Small factories for output-queue tests: people, an active project whose team passes the access
gate, and requests at a given point of their life."""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

from sqlalchemy import select

from disclosure.services import Outputs
from projects.models import AgreementSignature, AgreementTemplate, Project, ProjectMember, TrainingRecord
from tests.tre.helpers import create_user, identity
from tre.core import jobs
from tre.core.db import transaction, utcnow
from tre.core.identity import User, UserRole

SMALL_CELL_CSV = b"region,female,male\nNorth,25,3\nSouth,40,52\n"
SAFE_CSV = b"region,female,male\nNorth,25,30\nSouth,40,50\n"


def platform(app: Any) -> Any:
    return app.extensions["tre.platform"]


def no_broker() -> None:
    """Jobs stay queued until ``run_queued_jobs`` runs them (as a worker would, one by one)."""
    jobs.set_dispatcher(None)


def run_queued_jobs(app: Any) -> list[str]:
    """Run every queued job in this process, inside an app context, the way a worker does."""
    from sqlalchemy import select as _select

    db = platform(app).db
    db.session.commit()  # end the test's own read transaction: on SQLite it holds the write lock
    outcomes = []
    with app.app_context():
        while True:
            with db.session_factory() as s:
                ids = list(
                    s.scalars(_select(jobs.Job.id).where(jobs.Job.state == jobs.QUEUED).order_by(jobs.Job.created_at))
                )
            if not ids:
                return outcomes
            for job_id in ids:
                outcomes.append(jobs.run_job(db, job_id, lease_seconds=60))


def outputs(app: Any, **kwargs: Any) -> Outputs:
    service = Outputs.from_platform(platform(app))
    for key, value in kwargs.items():
        setattr(service, key, value)
    return service


def person(app: Any, key: str, roles: list[str], *, can_sign_in: bool = False) -> User:
    """An account with MFA enrolled; without a password unless it must sign in (hashing is slow)."""
    if can_sign_in:
        user, _ = create_user(app, f"{key}@nhs.example", roles)
        return user
    ident = identity(app)
    user = ident.create_user(None, f"{key}@nhs.example", key.title(), roles, bootstrap=True)
    with transaction(ident.session):
        user.mfa_enrolled_at = utcnow()
    return user


def active_project(app: Any, pi: User, members: list[User] = (), *, title: str = "Asthma outcomes") -> Project:  # type: ignore[assignment]
    """A project in its active period whose PI and members have signed and trained (the gate allows them)."""
    s = platform(app).db.session
    today = utcnow().date()
    with transaction(s):
        template = s.scalar(select(AgreementTemplate).order_by(AgreementTemplate.version.desc()).limit(1))
        if template is None:
            body = "Use the data only for the approved purpose."
            template = AgreementTemplate(
                version=1,
                title="Data access agreement",
                body=body,
                content_hash=hashlib.sha256(body.encode()).hexdigest(),
            )
            s.add(template)
        project = Project(
            title=title,
            state="active",
            pi_id=pi.id,
            start_date=today - dt.timedelta(days=30),
            end_date=today + dt.timedelta(days=300),
        )
        s.add(project)
        s.flush()
        for user, role in [(pi, "principal_investigator"), *[(m, "researcher") for m in members]]:
            s.add(ProjectMember(project_id=project.id, user_id=user.id, role=role, added_by=pi.id))
            s.add(
                AgreementSignature(
                    template_id=template.id,
                    project_id=project.id,
                    user_id=user.id,
                    content_hash=template.content_hash,
                    signed_name=user.display_name,
                )
            )
            if s.scalar(select(TrainingRecord.id).where(TrainingRecord.user_id == user.id)) is None:
                s.add(
                    TrainingRecord(
                        user_id=user.id,
                        course="safe_researcher",
                        completed_on=today,
                        expires_on=today + dt.timedelta(days=365),
                    )
                )
    return project


class World:
    """An author on an active project, a colleague, three eligible checkers and a service."""

    def __init__(self, app: Any) -> None:
        no_broker()
        self.app = app
        self.author = person(app, "rita", ["researcher"])
        self.colleague = person(app, "sam", ["researcher"])
        self.outsider = person(app, "rob", ["researcher"])
        self.olive = person(app, "olive", ["output_checker"])
        self.oscar = person(app, "oscar", ["output_checker"])
        self.otto = person(app, "otto", ["output_checker"])
        self.project = active_project(app, self.author, [self.colleague])
        self.svc = outputs(app)

    @property
    def session(self) -> Any:
        return platform(self.app).db.session

    def draft(
        self,
        content: bytes = SMALL_CELL_CSV,
        *,
        name: str = "table.csv",
        spec: Any = None,
        context: str = "Admissions by region and sex, adults 2020",
        controls: str = "None yet",
    ) -> Any:
        req, _ = self.svc.create_request(self.author, self.project.id, "Admissions by region")
        self.svc.set_group(self.author, req.id, "tables", context, controls)
        self.svc.add_file(self.author, req.id, name, content, group="tables", table_spec=spec)
        return req

    def submitted(self, **kwargs: Any) -> Any:
        """Submitted and automatically checked."""
        req = self.draft(**kwargs)
        self.svc.submit(self.author, req.id)
        run_queued_jobs(self.app)
        return self.refresh(req)

    def refresh(self, req: Any) -> Any:
        self.session.expire_all()
        return self.session.get(type(req), req.id)

    def reviewed(self, votes: dict[str, str] | None = None, **kwargs: Any) -> Any:
        """Both checkers claimed and submitted reviews; ``votes`` per checker key ('olive', 'oscar')."""
        req = self.submitted(**kwargs)
        votes = votes or {}
        for checker, key in ((self.olive, "olive"), (self.oscar, "oscar")):
            self.svc.claim(checker, req.id)
            vote = votes.get(key, "approve")
            for f in self.refresh(req).current_files:
                self.svc.vote(checker, req.id, f.id, vote, "Round the counts" if vote == "changes_requested" else "")
            self.svc.submit_review(checker, req.id)
        return self.refresh(req)

    def approved(self, **kwargs: Any) -> Any:
        req = self.reviewed(**kwargs)
        self.svc.consolidate(self.olive, req.id, "approve")
        return self.refresh(req)

    def released(self, **kwargs: Any) -> Any:
        req = self.approved(**kwargs)
        self.svc.release(self.oscar, req.id)
        return self.refresh(req)


def checkers_of_every_kind(world: World) -> tuple[User, User]:
    """An inactive checker, a checker on the project's team, a checker holding two reviewing roles;
    returns the inactive one and the one with two roles."""
    asleep = person(world.app, "ivy", ["output_checker"])
    twice = person(world.app, "tess", ["output_checker"])
    with transaction(world.session) as s:
        s.get(User, asleep.id).is_active = False
        s.add(UserRole(user_id=world.colleague.id, role="output_checker", granted_by=None))
        s.add(UserRole(user_id=twice.id, role="auditor", granted_by=None))
    return asleep, twice
