"""Register the synthetic tables in the dataset catalogue and set up demo projects to click through.

Idempotent: a dataset already registered under its name, or a demo project already created under
its title, is left as it is. The demo projects use the demo accounts (``tre.demo.accounts``):

* "Heart failure readmissions" — active: Dr Rita Patel (PI) and Sam Okafor, approved by the
  committee with fewer columns than asked, agreement signed and training in date, so the access
  gate is open for both;
* "Diabetes prescribing in deprived areas" — submitted and waiting in the committee's queue.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from sqlalchemy import select

from projects.models import Dataset, Project
from projects.rules import ProjectPolicy
from projects.services import Projects
from tre.core.identity import User
from tre.demo.accounts import DOMAIN

AGREEMENT_TITLE = "Data access agreement"
AGREEMENT_BODY = """\
1. I will use the data only for the purpose the data access committee approved, and only inside the \
trusted research environment.
2. I will not try to identify any person, or link the data with other data, except as approved.
3. I will not copy data out of the environment. Only outputs approved by two output checkers leave it.
4. I will keep my account to myself and report any incident at once.
5. I accept that my use is recorded, and that breaking this agreement ends my access."""

ACTIVE_TITLE = "Heart failure readmissions"
QUEUED_TITLE = "Diabetes prescribing in deprived areas"


def _person(svc: Projects, key: str) -> User | None:
    return svc.session.scalar(select(User).where(User.email == f"{key}@{DOMAIN}"))


def _register(svc: Projects, custodian: Any, data_dir: Path, table: dict[str, Any]) -> bool:
    if svc.session.scalar(select(Dataset.id).where(Dataset.name == table["name"])) is not None:
        return False
    svc.register_dataset(
        custodian,
        name=table["name"],
        title=table["name"].replace("_", " ").capitalize(),
        description=table.get("description", ""),
        source_kind=table.get("format", "parquet"),
        source_location=str((data_dir / table["file"]).resolve()),
        sensitivity=table.get("sensitivity", "special_category"),
        row_count=table.get("rows"),
        schema_spec=table,
        columns=[
            {
                "name": c["name"],
                "role": c["role"],
                "data_type": c.get("type", "string"),
                "description": c.get("description", ""),
                "sensitivity": c.get("sensitivity"),
            }
            for c in table["columns"]
        ],
    )
    return True


def _dataset_id(svc: Projects, name: str) -> str:
    ds_id = svc.session.scalar(select(Dataset.id).where(Dataset.name == name))
    assert ds_id is not None
    return ds_id


def _fill(svc: Projects, pi: User, project_id: str, summary: str, purpose: str, today: dt.date) -> None:
    svc.update_application(
        pi,
        project_id,
        lay_summary=summary,
        scientific_purpose=purpose,
        public_benefit="Better planning of care, and fewer avoidable admissions.",
        legal_basis="UK GDPR Article 6(1)(e) and Article 9(2)(j); approved research",
        ethics_reference="IRAS 300001 (synthetic demonstration)",
        funder="NIHR (demonstration)",
        start_date=today - dt.timedelta(days=7),
        end_date=today + dt.timedelta(days=365),
    )


def _active_project(svc: Projects, people: dict[str, User], today: dt.date) -> None:
    pi, sam, chris = people["rita.researcher"], people["sam.scientist"], people["chris.chair"]
    project = svc.create_project(pi, ACTIVE_TITLE)
    _fill(
        svc,
        pi,
        project.id,
        "We want to understand why some people go back into hospital soon after they leave.",
        "Estimate 30-day readmission after a heart failure admission by deprivation.",
        today,
    )
    svc.set_dataset_request(
        pi,
        project.id,
        _dataset_id(svc, "admissions"),
        ["nhs_number", "admission_date", "discharge_date", "primary_diagnosis", "method", "provider"],
        "Spells define the readmissions; the NHS number (as a project token) links them to patients.",
    )
    svc.set_dataset_request(
        pi,
        project.id,
        _dataset_id(svc, "patients"),
        ["nhs_number", "date_of_birth", "sex", "postcode", "deprivation_decile"],
        "Age, sex and deprivation are the exposures; postcode to check the deprivation decile.",
    )
    svc.add_member(pi, project.id, sam.email)
    svc.submit(pi, project.id)
    svc.assign_reviewers(chris, project.id, [people["dana.dac"].id, people["drew.dac"].id])
    svc.cast_vote(
        people["dana.dac"], project.id, "approve", "Clear purpose; the columns match the analysis plan."
    )
    svc.cast_vote(
        people["drew.dac"],
        project.id,
        "approve_with_conditions",
        "Postcode is not needed when the deprivation decile is supplied; drop it.",
    )
    svc.decide(
        chris,
        project.id,
        "approved",
        conditions="Counts in outputs rounded to the nearest 5. "
        "No postcode: the deprivation decile is enough.",
        public_comment="Approved without the postcode and the provider columns.",
        approved_columns={
            "admissions": ["nhs_number", "admission_date", "discharge_date", "primary_diagnosis", "method"],
            "patients": ["nhs_number", "date_of_birth", "sex", "deprivation_decile"],
        },
    )
    svc.activate(pi, project.id)
    template = svc.current_agreement()
    assert template is not None
    for person in (pi, sam):
        svc.sign_agreement(person, project.id, template.content_hash, person.display_name)


def _queued_project(svc: Projects, people: dict[str, User], today: dt.date) -> None:
    pi = people["rita.researcher"]
    project = svc.create_project(pi, QUEUED_TITLE)
    _fill(
        svc,
        pi,
        project.id,
        "We want to know whether newer diabetes medicines reach people in poorer areas as often as others.",
        "Compare metformin and SGLT2 inhibitor prescribing across deprivation deciles.",
        today,
    )
    svc.set_dataset_request(
        pi,
        project.id,
        _dataset_id(svc, "prescriptions"),
        ["nhs_number", "issue_date", "bnf_code", "quantity"],
        "Which drugs were issued, when, and how much.",
    )
    svc.set_dataset_request(
        pi,
        project.id,
        _dataset_id(svc, "patients"),
        ["nhs_number", "deprivation_decile"],
        "Deprivation is the exposure.",
    )
    svc.submit(pi, project.id)


def register_demo_datasets(app: Any, data_dir: Path) -> int:
    """Register the tables of ``data_dir/datasets.json`` and create the demo projects.

    Returns the number of datasets added.
    """
    path = Path(data_dir) / "datasets.json"
    if not path.exists():
        return 0
    description = json.loads(path.read_text(encoding="utf-8"))
    p = app.extensions["tre.platform"]
    svc = Projects(p.db.session, p.audit, ProjectPolicy.from_settings(p.settings))
    keys = (
        "cara.custodian",
        "rita.researcher",
        "sam.scientist",
        "chris.chair",
        "dana.dac",
        "drew.dac",
        "adam.admin",
    )
    people = {k: u for k in keys if (u := _person(svc, k)) is not None}
    if "cara.custodian" not in people:
        return 0
    added = sum(_register(svc, people["cara.custodian"], Path(data_dir), t) for t in description["tables"])
    if len(people) < len(keys):
        return added
    today = dt.date.today()
    if svc.current_agreement() is None:
        svc.publish_agreement(people["adam.admin"], AGREEMENT_TITLE, AGREEMENT_BODY)
    for key in ("rita.researcher", "sam.scientist"):
        expiry = svc.training_expiry(people[key].id)
        if expiry is None or expiry < today:
            svc.record_training(
                people["adam.admin"],
                people[key].id,
                today - dt.timedelta(days=60),
                today + dt.timedelta(days=305),
                reference="Safe researcher training (demo)",
            )
    existing = set(svc.session.scalars(select(Project.title)))
    if ACTIVE_TITLE not in existing:
        _active_project(svc, people, today)
    if QUEUED_TITLE not in existing:
        _queued_project(svc, people, today)
    return added
