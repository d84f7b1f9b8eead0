"""Small factories for projects tests: people, a dataset, and projects brought to any state."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from projects.models import Project
from projects.rules import ProjectPolicy
from projects.services import Projects
from tre.core.db import transaction, utcnow
from tre.core.identity import Identity, User

TODAY = dt.date.today()
AGREEMENT_TEXT = "I will use the data only for the approved purpose, inside the environment."

COLUMNS = [
    {"name": "nhs_number", "role": "direct_identifier", "description": "NHS number", "sensitivity": "high"},
    {"name": "date_of_birth", "role": "quasi_identifier", "description": "Date of birth"},
    {"name": "postcode", "role": "quasi_identifier", "description": "Postcode"},
    {"name": "diagnosis", "role": "attribute", "description": "Primary diagnosis"},
]


def make_user(app: Any, key: str, roles: list[str], *, mfa: bool = True, name: str | None = None) -> User:
    p = app.extensions["tre.platform"]
    ident = Identity(p.db.session, p.keys, p.audit)
    user = ident.create_user(
        None, f"{key}@nhs.example", name or key.replace(".", " ").title(), roles, bootstrap=True
    )
    if mfa:
        with transaction(p.db.session):
            user.mfa_enrolled_at = utcnow()
    return user


def service(app: Any, quorum: int = 2) -> Projects:
    p = app.extensions["tre.platform"]
    return Projects(p.db.session, p.audit, ProjectPolicy(quorum=quorum))


@dataclass
class World:
    app: Any
    svc: Projects
    pi: User
    member: User
    outsider: User
    chair: User
    dana: User
    drew: User
    custodian: User
    admin: User
    dataset_id: str

    @property
    def audit(self) -> Any:
        return self.app.extensions["tre.platform"].audit

    @property
    def session(self) -> Any:
        return self.svc.session


def build_world(app: Any, quorum: int = 2) -> World:
    svc = service(app, quorum)
    custodian = make_user(app, "cara.custodian", ["data_custodian"])
    ds = svc.register_dataset(
        custodian,
        name="admissions",
        title="Hospital admissions",
        description="One row per admission",
        source_kind="parquet",
        source_location="/data/admissions.parquet",
        sensitivity="special_category",
        columns=COLUMNS,
    )
    return World(
        app=app,
        svc=svc,
        pi=make_user(app, "rita.researcher", ["researcher"], name="Rita Patel"),
        member=make_user(app, "sam.scientist", ["researcher"], name="Sam Okafor"),
        outsider=make_user(app, "rob.other", ["researcher"]),
        chair=make_user(app, "chris.chair", ["dac_chair", "dac_member"]),
        dana=make_user(app, "dana.dac", ["dac_member"]),
        drew=make_user(app, "drew.dac", ["dac_member"]),
        custodian=custodian,
        admin=make_user(app, "adam.admin", ["administrator"]),
        dataset_id=ds.id,
    )


def complete_draft(w: World, *, with_member: bool = True) -> Project:
    p = w.svc.create_project(w.pi, "Readmissions after heart failure")
    w.svc.update_application(
        w.pi,
        p.id,
        lay_summary="Why people return to hospital.",
        scientific_purpose="Estimate readmission rates.",
        public_benefit="Better discharge planning.",
        legal_basis="Article 6(1)(e) and 9(2)(j)",
        ethics_reference="IRAS 123456",
        funder="NIHR",
        start_date=TODAY - dt.timedelta(days=1),
        end_date=TODAY + dt.timedelta(days=365),
    )
    w.svc.set_dataset_request(
        w.pi,
        p.id,
        w.dataset_id,
        ["nhs_number", "date_of_birth", "diagnosis"],
        "Link admissions; age; outcome",
    )
    if with_member:
        w.svc.add_member(w.pi, p.id, w.member.email)
    return p


def submitted(w: World) -> Project:
    """A complete application submitted to the committee, no reviewer assigned yet."""
    p = complete_draft(w)
    w.svc.submit(w.pi, p.id)
    return p


def review_rows(w: World, p: Project) -> list[Any]:
    """The current version's assignment rows (conflict declarations made before assignment too), fresh."""
    w.session.expire_all()
    return list(w.svc.assignments(w.svc.current_version(w.session.get(Project, p.id))))


def in_review(w: World) -> Project:
    p = submitted(w)
    w.svc.assign_reviewers(w.chair, p.id, [w.dana.id, w.drew.id])
    return p


def voted(w: World) -> Project:
    p = in_review(w)
    w.svc.cast_vote(w.dana, p.id, "approve", "Sound design, minimal columns.")
    w.svc.cast_vote(w.drew, p.id, "approve_with_conditions", "Fine if outputs are rounded.")
    return p


def approved(w: World, columns: dict[str, list[str]] | None = None) -> Project:
    p = voted(w)
    w.svc.decide(w.chair, p.id, "approved", conditions="Round counts to 5.", approved_columns=columns)
    return p


def publish_agreement(w: World, text: str = AGREEMENT_TEXT) -> Any:
    return w.svc.publish_agreement(w.admin, "Data access agreement", text)


def ready_for_access(w: World) -> Project:
    """Active, agreement signed and training in date for the PI and the member."""
    p = approved(w)
    template = publish_agreement(w)
    w.svc.activate(w.pi, p.id)
    for person in (w.pi, w.member):
        w.svc.sign_agreement(person, p.id, template.content_hash, person.display_name)
        w.svc.record_training(
            w.admin, person.id, TODAY - dt.timedelta(days=10), TODAY + dt.timedelta(days=355)
        )
    return p
