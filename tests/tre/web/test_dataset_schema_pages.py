"""The custodian's schema page and API: see the proposal, preview, confirm; others are refused."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from projects.models import Dataset
from tests.projects.factories import World, build_world, make_user
from tests.pseudonymisation.conftest import valid_nhs_numbers
from tre.authn import API_AUDIENCE
from tre.core.db import utcnow

COLUMNS = ["nhs_number", "surname", "dob", "postcode", "diagnosis"]
SURNAMES = ["Abbott", "Baker", "Carter", "Dixon", "Evans", "Fisher", "Grant", "Hughes", "Irwin", "Jones"]


@pytest.fixture
def w(sqlite_app: Any) -> World:
    return build_world(sqlite_app)


def _dataset(w: World, tmp_path: Path) -> Dataset:
    numbers = valid_nhs_numbers(30, seed=4)
    lines = [";".join(COLUMNS)]
    for i in range(30):
        lines.append(";".join([numbers[i], SURNAMES[i % 10] + "e" * (i // 10), f"19{40 + i}-03-0{1 + i % 9}",
                               ["LS1 4AP", "M1 1AE"][i % 2], ["E11", "I10"][i % 2]]))
    source = tmp_path / "registry.csv"
    source.write_text("\n".join(lines) + "\n")
    return w.svc.register_dataset(
        w.custodian, name="clinic_registry", title="Clinic registry", description="", source_kind="csv",
        source_location=str(source), sensitivity="special_category",
        columns=[{"name": c, "role": "attribute"} for c in COLUMNS],
    )


def login(client: Any, user: Any) -> Any:
    with client.session_transaction() as sess:
        sess["uid"] = user.id
        sess["epoch"] = user.session_epoch
        sess["seen"] = sess["signed_in"] = int(utcnow().timestamp())
    return client


def _csrf(page: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match
    return match.group(1)


def _form(page: str, **changes: str) -> dict[str, str]:
    """The form as the page filled it in (the selected option of every select), with changes."""
    data = {"csrf_token": _csrf(page)}
    for name, body in re.findall(r'<select[^>]*name="([^"]+)">(.*?)</select>', page, re.S):
        chosen = re.search(r'<option value="([^"]*)" selected>', body)
        data[name] = chosen.group(1) if chosen else ""
    return data | changes


def test_custodian_sees_the_proposal_previews_and_confirms(w: World, tmp_path: Path) -> None:
    ds = _dataset(w, tmp_path)
    client = login(w.app.test_client(), w.custodian)

    page = client.get(f"/catalogue/datasets/{ds.id}/schema").get_data(as_text=True)
    assert "30 rows" in page and "No extract schema yet" in page
    assert "valid" in page  # counts of valid NHS numbers
    form = _form(page)
    assert form["rule__nhs_number"] == "nhs_token" and form["nhs_number_column"] == "nhs_number"
    assert form["rule__dob"] == "dob_age_band" and form["rule__surname"] == "drop"

    shown = client.post(f"/catalogue/datasets/{ds.id}/schema", data=form | {"action": "preview"})
    body = shown.get_data(as_text=True)
    assert shown.status_code == 200 and 'id="preview"' in body
    assert "LS1" in body and "LS1 4AP</td>" not in body
    for secret in ("Abbott", "1940-03-01", valid_nhs_numbers(30, seed=4)[0]):
        assert secret not in body

    done = client.post(f"/catalogue/datasets/{ds.id}/schema", data=form | {"action": "confirm"})
    assert done.status_code == 302
    with w.app.extensions["tre.db"].session_factory() as s:
        stored = s.get(Dataset, ds.id)
        assert stored.schema_spec["nhs_number_column"] == "nhs_number"
        assert stored.row_count == 30
    assert "Change the schema" in client.get(f"/catalogue/datasets/{ds.id}").get_data(as_text=True)


def test_preview_leaves_out_rows_without_a_valid_nhs_number_as_extracts_do(w: World, tmp_path: Path) -> None:
    # A messy clinic export: the second row's number is missing, the third's mistyped, the fourth's
    # check digit wrong. The page says such rows are left out of extracts; so is the preview.
    numbers = valid_nhs_numbers(30, seed=5)
    wrong_check = numbers[3][:9] + str((int(numbers[3][9]) + 1) % 10)
    written = [numbers[0], "", "943 476 591", wrong_check] + numbers[4:]
    lines = [",".join(COLUMNS)] + [
        ",".join([n, SURNAMES[i % 10], f"0{1 + i % 9}/03/19{40 + i}", ["LS1 4AP", "M1 1AE"][i % 2], "E11"])
        for i, n in enumerate(written)]
    source = tmp_path / "clinic.csv"
    source.write_text("\r\n".join(lines) + "\r\n")
    ds = w.svc.register_dataset(
        w.custodian, name="clinic_export", title="Clinic export", description="", source_kind="csv",
        source_location=str(source), sensitivity="special_category",
        columns=[{"name": c, "role": "attribute"} for c in COLUMNS],
    )
    client = login(w.app.test_client(), w.custodian)
    page = client.get(f"/catalogue/datasets/{ds.id}/schema").get_data(as_text=True)
    assert "rows without a valid number are left out" in page

    shown = client.post(f"/catalogue/datasets/{ds.id}/schema", data=_form(page) | {"action": "preview"})

    body = shown.get_data(as_text=True)
    assert shown.status_code == 200
    assert ("Of the first 8 rows read, 3 rows left out, as extracts leave them out: NHS number missing: 1; "
            "NHS number invalid (not ten digits): 1; NHS number invalid (check digit): 1.") in body
    preview = body.split('id="preview"', 1)[1]
    assert preview.count('<tr class="nhsuk-table__row">') == 5
    assert "INVALID-" not in preview
    for raw in ("943 476 591", wrong_check, numbers[0]):
        assert raw not in body


def test_page_refuses_a_bad_rule_with_its_reason_and_changes_nothing(w: World, tmp_path: Path) -> None:
    ds = _dataset(w, tmp_path)
    client = login(w.app.test_client(), w.custodian)
    page = client.get(f"/catalogue/datasets/{ds.id}/schema").get_data(as_text=True)

    bad = client.post(f"/catalogue/datasets/{ds.id}/schema",
                      data=_form(page, rule__surname="keep", role__surname="direct_identifier", action="confirm"))

    assert bad.status_code == 422
    assert "cannot take the keep" in bad.get_data(as_text=True)
    with w.app.extensions["tre.db"].session_factory() as s:
        assert s.get(Dataset, ds.id).schema_spec == {}


def test_another_custodian_and_a_researcher_are_refused_the_page(w: World, tmp_path: Path) -> None:
    ds = _dataset(w, tmp_path)
    other = make_user(w.app, "otto.custodian", ["data_custodian"])

    assert login(w.app.test_client(), other).get(f"/catalogue/datasets/{ds.id}/schema").status_code == 403
    assert login(w.app.test_client(), w.pi).get(f"/catalogue/datasets/{ ds.id }/schema").status_code == 403
    page = login(w.app.test_client(), w.pi).get(f"/catalogue/datasets/{ds.id}").get_data(as_text=True)
    assert 'id="set-schema"' not in page


def _api(app: Any, user: Any) -> tuple[Any, dict[str, str]]:
    token = app.extensions["tre.platform"].tokens.issue(user.id, API_AUDIENCE, "api", dt.timedelta(minutes=10))
    return app.test_client(), {"Authorization": f"Bearer {token}"}


def test_api_proposes_previews_and_confirms(w: World, tmp_path: Path) -> None:
    ds = _dataset(w, tmp_path)
    client, headers = _api(w.app, w.custodian)

    proposal = client.get(f"/api/v1/datasets/{ds.id}/schema-proposal", headers=headers).get_json()
    assert proposal["row_count"] == 30 and proposal["dialect"]["delimiter"] == ";"
    body = {"columns": {c["name"]: {"role": c["role"], "rule": c["rule"]} for c in proposal["columns"]},
            "nhs_number_column": proposal["nhs_number_column"], "row_count": proposal["row_count"]}

    preview = client.post(f"/api/v1/datasets/{ds.id}/schema-preview", json=body, headers=headers)
    assert preview.status_code == 200
    assert preview.get_json()["columns"] == ["patient_token", "dob", "postcode", "diagnosis"]

    unknown = client.put(f"/api/v1/datasets/{ds.id}/schema", headers=headers,
                         json=body | {"columns": body["columns"] | {"ward": {"role": "attribute", "rule": "keep"}}})
    assert unknown.status_code == 422 and "ward" in unknown.get_json()["detail"]

    done = client.put(f"/api/v1/datasets/{ds.id}/schema", json=body, headers=headers)
    assert done.status_code == 200
    assert done.get_json()["schema_spec"]["nhs_number_column"] == "nhs_number"


def test_api_refuses_another_custodian(w: World, tmp_path: Path) -> None:
    ds = _dataset(w, tmp_path)
    client, headers = _api(w.app, make_user(w.app, "otto.custodian", ["data_custodian"]))

    assert client.get(f"/api/v1/datasets/{ds.id}/schema-proposal", headers=headers).status_code == 403
    assert client.get("/api/v1/datasets/nope/schema-proposal", headers=headers).status_code == 404


def test_api_says_when_the_source_cannot_be_read(w: World) -> None:
    client, headers = _api(w.app, w.custodian)  # build_world's dataset names a file that does not exist

    answer = client.get(f"/api/v1/datasets/{w.dataset_id}/schema-proposal", headers=headers)

    assert answer.status_code == 409
    assert answer.get_json()["detail"] == "The source file does not exist"


def test_new_users_journey_register_confirm_and_build_through_the_pages(w: World, tmp_path: Path) -> None:
    """The reported failure: a CSV registered through the form had no extract schema and the build
    was refused; now the custodian confirms one on the schema page and the build succeeds."""
    from pseudonymisation.models import Extract
    from tests.pseudonymisation.test_dataset_schemas import _approved_project, _messy_csv

    source = _messy_csv(tmp_path / "clinic.csv")
    client = login(w.app.test_client(), w.custodian)
    form_page = client.get("/catalogue/new").get_data(as_text=True)
    lines = "\n".join(f"{c} | attribute | as typed" for c in
                      ["nhs_number", "forename", "date_of_birth", "postcode", "diagnosis", "notes"])
    made = client.post("/catalogue/new", data={
        "csrf_token": _csrf(form_page), "name": "clinic_registry", "title": "Clinic registry", "description": "",
        "source_kind": "csv", "source_location": str(source), "sensitivity": "special_category", "columns": lines,
    })
    ds_id = made.headers["Location"].rsplit("/", 1)[1]
    p = _approved_project(w.app, w, ds_id, ["nhs_number", "date_of_birth", "postcode", "diagnosis"])
    extracts_page = client.get("/extracts/").get_data(as_text=True)

    refused = client.post(f"/extracts/{p.id}", data={"csrf_token": _csrf(extracts_page)}, follow_redirects=True)
    assert "no extract schema" in refused.get_data(as_text=True)

    page = client.get(f"/catalogue/datasets/{ds_id}/schema").get_data(as_text=True)
    assert client.post(f"/catalogue/datasets/{ds_id}/schema", data=_form(page, action="confirm")).status_code == 302
    client.post(f"/extracts/{p.id}", data={"csrf_token": _csrf(extracts_page)})

    with w.app.extensions["tre.db"].session_factory() as s:
        extract = s.query(Extract).filter_by(project_id=p.id).one()
        assert extract.state == "succeeded", extract.error
    data = w.app.extensions["tre.settings"].extracts_path / p.id / "clinic_registry" / "data"
    table = pq.read_table(sorted(data.glob("*.parquet")))
    assert sorted(table.column_names) == ["date_of_birth", "diagnosis", "patient_token", "postcode"]


# --- the NHS number never leaves raw, whatever is chosen or was stored (ADR 0068) -----------------


@pytest.fixture
def both(app: Any) -> World:
    return build_world(app)


def test_the_page_refuses_to_keep_the_nhs_number_column_raw_and_changes_nothing(both: World, tmp_path: Path) -> None:
    from tre.core.audit import SUCCESS, AuditEvent

    w = both
    ds = _dataset(w, tmp_path)
    client = login(w.app.test_client(), w.custodian)
    page = client.get(f"/catalogue/datasets/{ds.id}/schema").get_data(as_text=True)
    assert client.post(f"/catalogue/datasets/{ds.id}/schema", data=_form(page, action="confirm")).status_code == 302
    db = w.app.extensions["tre.db"]
    with db.session_factory() as s:
        before = s.get(Dataset, ds.id)
        spec, roles = before.schema_spec, {c.name: c.role for c in before.columns}
        confirmed = s.query(AuditEvent).filter_by(action="dataset.schema_confirm", outcome=SUCCESS).count()
    page = client.get(f"/catalogue/datasets/{ds.id}/schema").get_data(as_text=True)

    # One wrong click: the NHS number column as a plain attribute, kept.
    bad = client.post(f"/catalogue/datasets/{ds.id}/schema",
                      data=_form(page, role__nhs_number="attribute", rule__nhs_number="keep", action="confirm"))

    body = bad.get_data(as_text=True)
    assert bad.status_code == 422
    assert "column &#39;nhs_number&#39; holds the NHS number: it must be a direct identifier" in body
    with db.session_factory() as s:
        after = s.get(Dataset, ds.id)
        assert after.schema_spec == spec and {c.name: c.role for c in after.columns} == roles
        assert s.query(AuditEvent).filter_by(action="dataset.schema_confirm", outcome=SUCCESS).count() == confirmed


def _store_broken_schema(w: World, ds: Dataset) -> None:
    """What a schema confirmed before ADR 0068 may hold: the NHS number column kept as an attribute."""
    with w.app.extensions["tre.db"].session_factory() as s:
        stored = s.get(Dataset, ds.id)
        stored.schema_spec = {
            "name": stored.name, "nhs_number_column": "nhs_number", "invalid_nhs_policy": "reject",
            "columns": [{"name": c, "role": "attribute", "transform": {"kind": "keep", "params": {}}}
                        for c in COLUMNS],
        }
        s.commit()


def test_a_stored_schema_keeping_the_nhs_number_raw_is_shown_as_to_be_corrected(both: World, tmp_path: Path) -> None:
    w = both
    ds = _dataset(w, tmp_path)
    _store_broken_schema(w, ds)
    client = login(w.app.test_client(), w.custodian)

    entry = client.get(f"/catalogue/datasets/{ds.id}")
    page = client.get(f"/catalogue/datasets/{ds.id}/schema")

    assert entry.status_code == 200 and page.status_code == 200
    for body in (entry.get_data(as_text=True), page.get_data(as_text=True)):
        assert 'id="schema-problem"' in body and "The extract schema must be corrected" in body
        assert "Extracts of this dataset are refused" in body
    assert "Extract schema confirmed" not in page.get_data(as_text=True)
    researcher = login(w.app.test_client(), w.pi).get(f"/catalogue/datasets/{ds.id}").get_data(as_text=True)
    assert 'id="schema-problem"' in researcher

    # The custodian corrects it on the page: the NHS number tokenised again, the names dropped.
    fixed = _form(page.get_data(as_text=True), role__nhs_number="direct_identifier", rule__nhs_number="nhs_token",
                  role__surname="direct_identifier", rule__surname="drop", action="confirm")
    assert client.post(f"/catalogue/datasets/{ds.id}/schema", data=fixed).status_code == 302
    assert 'id="schema-problem"' not in client.get(f"/catalogue/datasets/{ds.id}").get_data(as_text=True)
