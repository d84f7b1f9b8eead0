"""A new dataset's journey in a real browser, through the real control plane, worker and JupyterHub: a
custodian registers a messy CSV by uploading it (the page's script sends it in chunks with progress),
confirms the proposed roles and the extract schema, builds the extract of a project approved for it,
and the researcher opens the project's workspace and finds the dataset there, NHS numbers tokenised.

The committee's approval of the project (not what this journey is about) is made through the service
layer on the live instance's database, as the demo loader makes its projects."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import LiveService, sign_in
from tests.e2e.test_workspace_journey import RUNTIME, open_lab, run_in_workspace

CARA = "cara.custodian@demo.tre.example"
RITA = "rita.researcher@demo.tre.example"
NAME = "clinic_upload"
PROJECT = "Clinic outcomes from an uploaded registry"

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="NOT ROOT: workspaces need their own unix accounts; skipped"),
    pytest.mark.skipif(not (RUNTIME / "bin" / "jupyter-labhub").exists(),
                       reason="WORKSPACE RUNTIME NOT BUILT (make workspace-runtime); skipped"),
]


GIVEN = ["Amelia", "Oliver", "Priya", "Mohammed", "Grace", "Tomasz", "Aisha", "Liam", "Chloe", "Kwame",
         "Sofia", "Darius", "Hannah", "Rhys", "Mei", "Callum", "Fatima", "Ewan", "Zara", "Joseph"]
FAMILY = ["Smith", "Patel", "Jones", "Khan", "Williams", "Nowak", "Okafor", "Brown", "Taylor", "Evans",
          "Hussain", "Walker", "Wright", "Chen", "Hughes", "Begum", "Clarke", "Murphy", "Ali", "Robinson"]
NOTES = ["Seen in clinic with her daughter, mobility poor", "Reports chest pain on exertion since March",
         "Lives alone; neighbour helps with shopping", "Started on metformin, tolerating well",
         "Missed last two appointments, phoned and rebooked", "Blood pressure improved after dose change"]


def messy_csv(path: Path, rows: int = 400) -> Path:
    """Semicolon-separated, a byte-order mark, quoted names holding the delimiter, padded and missing
    values, a few NHS numbers with spaces: what a clinic's export looks like."""
    from tests.pseudonymisation.conftest import valid_nhs_numbers

    numbers = valid_nhs_numbers(rows, seed=21)
    lines = ["nhs_number;patient_name;date_of_birth;postcode;diagnosis;clinic_notes"]
    for i in range(rows):
        nhs = numbers[i] if i % 7 else f"{numbers[i][:3]} {numbers[i][3:6]} {numbers[i][6:]}"
        dob = "" if i % 53 == 0 else f"{1940 + i % 60}-{1 + i % 12:02d}-{1 + i % 28:02d}"
        given, family = GIVEN[i % len(GIVEN)], FAMILY[(i // len(GIVEN)) % len(FAMILY)]
        name = f'"{family}; {given}"' if i % 3 == 0 else f"{given} {family} "
        note = f'"{NOTES[i % len(NOTES)]}; review in {2 + i % 10} weeks"'
        lines.append(";".join([nhs, name, dob, ["LS1 4AP", "bd7 1dp", " HX1 2RN"][i % 3],
                               ["E11", "I10", "n/a"][i % 3], note]))
    path.write_bytes(b"\xef\xbb\xbf" + ("\r\n".join(lines) + "\r\n").encode("utf-8"))
    return path


def approve_project_for_dataset(service: LiveService) -> str:
    """Rita's project asking for the uploaded dataset, approved, active and signed (service layer)."""
    from sqlalchemy import select

    from projects.models import Dataset
    from projects.rules import ProjectPolicy
    from projects.services import Projects
    from tests.conftest import make_test_app
    from tre.core.identity import User
    from tre.demo.catalogue import _fill

    app = make_test_app(service.instance, f"sqlite:///{service.instance / 'tre.sqlite'}")
    p = app.extensions["tre.platform"]
    svc = Projects(p.db.session, p.audit, ProjectPolicy.from_settings(p.settings))
    people = {u.email.split("@")[0]: u for u in p.db.session.scalars(select(User))}
    ds = p.db.session.scalar(select(Dataset).where(Dataset.name == NAME))
    assert ds is not None
    today = dt.date.today()
    pi = people["rita.researcher"]
    project = svc.create_project(pi, PROJECT)
    _fill(svc, pi, project.id, "Outcomes of the clinic's patients.", "Diagnoses by age band.", today)
    columns = [c.name for c in ds.columns if c.name != "patient_name"]
    svc.set_dataset_request(pi, project.id, ds.id, columns, "Diagnoses by age band and district.")
    svc.submit(pi, project.id)
    svc.assign_reviewers(people["chris.chair"], project.id, [people["dana.dac"].id, people["drew.dac"].id])
    for reviewer in ("dana.dac", "drew.dac"):
        svc.cast_vote(people[reviewer], project.id, "approve", "Fine.")
    svc.decide(people["chris.chair"], project.id, "approved", public_comment="Approved.",
               approved_columns={NAME: columns})
    svc.activate(pi, project.id)
    template = svc.current_agreement()
    assert template is not None
    svc.sign_agreement(pi, project.id, template.content_hash, pi.display_name)
    app.extensions["tre.db"].session.remove()
    app.extensions["tre.db"].dispose()
    return project.id


LIST_EXTRACT = """
import glob, json, os
import pandas as pd
extract = os.environ["TRE_EXTRACT_DIR"]
found = {}
for path in sorted(glob.glob(os.path.join(extract, "**", "*.parquet"), recursive=True)):
    frame = pd.read_parquet(path)
    found[os.path.relpath(path, extract)] = {"columns": list(frame.columns), "rows": len(frame),
                                             "sample": [str(v) for v in frame.head(3).astype(str).values.ravel()]}
print(json.dumps(found))
"""


def test_a_messy_csv_uploaded_in_the_browser_reaches_a_workspace(
    page: Any, live_service: LiveService, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    source = messy_csv(tmp_path / "clinic export.csv")
    numbers = {line.split(";")[0].replace(" ", "") for line in source.read_text("utf-8-sig").splitlines()[1:]}

    # 1. The custodian registers the dataset by uploading the file.
    sign_in(page, live_service, CARA)
    page.goto(live_service.url + "/catalogue/new")
    page.get_by_role("link", name="Register a dataset by uploading the file").click()
    page.wait_for_load_state("load")
    expect(page.locator("#file-hint")).to_contain_text("Any size can be sent")  # the script took over the form
    page.fill("#name", NAME)
    page.fill("#title", "Clinic registry (uploaded)")
    page.set_input_files("#file", str(source))
    page.click("#upload-button")
    page.wait_for_url("**/schema", timeout=60_000)

    # 2. Roles as proposed from the content, then the extract schema, confirmed on the schema page.
    schema = page.inner_text("main")
    assert "nhs_number" in schema and "clinic_notes" in schema
    proposed = {c: (page.locator(f"select[name='role__{c}']").input_value(),
                    page.locator(f"select[name='rule__{c}']").input_value())
                for c in ("nhs_number", "patient_name", "date_of_birth", "postcode", "clinic_notes")}
    assert proposed == {"nhs_number": ("direct_identifier", "nhs_token"), "patient_name": ("direct_identifier", "drop"),
                        "date_of_birth": ("quasi_identifier", "dob_age_band"),
                        "postcode": ("quasi_identifier", "postcode_district"), "clinic_notes": ("free_text", "drop")}
    page.click("button[name=action][value=confirm]")
    page.wait_for_url("**/catalogue/datasets/*", timeout=30_000)
    assert "Extract schema confirmed" in page.inner_text("main")

    # 3. The committee approves a project for it (service layer), and the custodian builds its extract.
    project_id = approve_project_for_dataset(live_service)
    page.goto(live_service.url + "/extracts/")
    page.locator("tr", has_text=PROJECT).get_by_role("button", name="Build extract").click()
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        page.goto(live_service.url + "/extracts/")
        state = page.locator("tr", has_text=PROJECT).inner_text()
        if "succeeded" in state or "failed" in state:
            break
        time.sleep(3)
    assert "succeeded" in state, state

    # 4. The researcher opens the workspace and finds the dataset, with tokens for NHS numbers.
    rita = page.context.browser.new_context().new_page()
    sign_in(rita, live_service, RITA)
    rita.goto(f"{live_service.url}/projects/{project_id}")
    rita.click("#open-workspace")
    base = open_lab(rita)
    found = json.loads(run_in_workspace(rita, base, LIST_EXTRACT)["stdout"].strip().splitlines()[-1])
    ours = {path: facts for path, facts in found.items() if NAME in path}

    assert ours, found
    facts = next(iter(ours.values()))
    assert facts["rows"] > 0 and "patient_name" not in facts["columns"] and "clinic_notes" not in facts["columns"]
    assert not any(value in numbers for value in facts["sample"])  # tokens, never NHS numbers
