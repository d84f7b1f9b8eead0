"""The custodian's delivery pages and API: deliver from the landing folder, read the verdict and the
quality report (a chart with its table), set rules, pin a version; others are refused."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_test_app
from tests.projects.factories import World, build_world, make_user
from tests.pseudonymisation.test_deliveries import HEADER, write_delivery
from tre.authn import API_AUDIENCE

from .test_dataset_schema_pages import login

TYPES = ["integer", "string", "date", "string", "string", "integer"]


def landing_world(tmp_path: Path, **settings: Any) -> Iterator[World]:
    """A world on SQLite whose instance has a landing folder (``tmp_path / "landing"``)."""
    from tre.models import metadata

    (tmp_path / "landing").mkdir()
    app = make_test_app(tmp_path / "instance", f"sqlite:///{tmp_path / 'tre.sqlite'}",
                        landing_dir=tmp_path / "landing", **settings)
    metadata.create_all(app.extensions["tre.db"].engine)
    yield build_world(app)
    app.extensions["tre.db"].session.remove()
    app.extensions["tre.db"].dispose()


@pytest.fixture
def w(tmp_path: Path) -> Iterator[World]:
    yield from landing_world(tmp_path)


def registry_from_landing(w: World) -> Any:
    """The clinic registry, registered by the custodian from a first delivery ``v1.csv`` of 40 rows."""
    landing = Path(w.app.extensions["tre.settings"].landing_dir)
    first = write_delivery(landing / "v1.csv", 40)
    return w.svc.register_dataset(
        w.custodian, name="clinic_registry", title="Clinic registry", description="", source_kind="csv",
        source_location=str(first), sensitivity="special_category",
        columns=[{"name": c, "role": "attribute", "data_type": t} for c, t in zip(HEADER, TYPES, strict=True)],
    )


def _dataset(w: World) -> Any:
    write_delivery(Path(w.app.extensions["tre.settings"].landing_dir) / "dup.csv", 40, repeat_first=True)
    return registry_from_landing(w)


def _csrf(page: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match
    return match.group(1)


def _api(app: Any, user: Any) -> tuple[Any, dict[str, str]]:
    token = app.extensions["tre.platform"].tokens.issue(user.id, API_AUDIENCE, "api", dt.timedelta(minutes=10))
    return app.test_client(), {"Authorization": f"Bearer {token}"}


def test_custodian_delivers_sets_rules_and_sees_the_quality_report(w: World) -> None:
    ds = _dataset(w)
    client = login(w.app.test_client(), w.custodian)
    page = client.get(f"/catalogue/datasets/{ds.id}/deliveries").get_data(as_text=True)
    assert "No version yet" in page

    saved = client.post(f"/catalogue/datasets/{ds.id}/deliveries", data={
        "csrf_token": _csrf(page), "action": "rules", "rules": '{"key_columns": ["record_id"]}'})
    assert saved.status_code == 302
    page = client.get(f"/catalogue/datasets/{ds.id}/deliveries").get_data(as_text=True)
    done = client.post(f"/catalogue/datasets/{ds.id}/deliveries",
                       data={"csrf_token": _csrf(page), "action": "deliver", "source_name": "v1.csv"})
    report = client.get(done.headers["Location"]).get_data(as_text=True)
    page = client.get(f"/catalogue/datasets/{ds.id}/deliveries").get_data(as_text=True)
    dup = client.post(f"/catalogue/datasets/{ds.id}/deliveries",
                      data={"csrf_token": _csrf(page), "action": "deliver", "source_name": "dup.csv"})
    quarantined = client.get(dup.headers["Location"]).get_data(as_text=True)

    assert "accepted" in report and "as version 1" in report
    assert "<svg" in report and "<desc" in report and 'id="quality"' in report
    assert 'id="delivery-completeness"' in report and 'id="delivery-completeness-table"' in report
    assert "quarantined" in quarantined and "duplicate keys" in quarantined
    assert "1 rows repeat the key (record_id)" in quarantined
    listing = client.get(f"/catalogue/datasets/{ds.id}/deliveries").get_data(as_text=True)
    assert 'id="versions"' in listing and listing.count('<td class="nhsuk-table__cell">quarantined</td>') == 1


def test_bad_rules_and_a_name_outside_the_landing_folder_are_refused_on_the_page(w: World) -> None:
    ds = _dataset(w)
    client = login(w.app.test_client(), w.custodian)
    page = client.get(f"/catalogue/datasets/{ds.id}/deliveries").get_data(as_text=True)

    bad_rules = client.post(f"/catalogue/datasets/{ds.id}/deliveries", data={
        "csrf_token": _csrf(page), "action": "rules", "rules": '{"key_columns": ["ward"]}'})
    outside = client.post(f"/catalogue/datasets/{ds.id}/deliveries", data={
        "csrf_token": _csrf(page), "action": "deliver", "source_name": "../tre.sqlite"})

    assert bad_rules.status_code == 422 and "ward" in bad_rules.get_data(as_text=True)
    assert outside.status_code == 422


def test_api_delivers_reports_and_pins(w: World) -> None:
    ds = _dataset(w)
    client, headers = _api(w.app, w.custodian)
    project = w.svc.create_project(w.pi, "Clinic outcomes")

    rules = client.put(f"/api/v1/datasets/{ds.id}/delivery-rules", headers=headers,
                       json={"rules": {"key_columns": ["record_id"], "max_type_failure_fraction": 0}})
    made = client.post(f"/api/v1/datasets/{ds.id}/deliveries", headers=headers, json={"source_name": "v1.csv"})
    again = client.get(f"/api/v1/deliveries/{made.get_json()['id']}", headers=headers).get_json()
    sent = client.post(f"/api/v1/datasets/{ds.id}/deliveries", headers=headers, json={"source_name": "dup.csv"})
    dup = client.get(f"/api/v1/deliveries/{sent.get_json()['id']}", headers=headers)
    versions = client.get(f"/api/v1/datasets/{ds.id}/versions", headers=headers).get_json()
    listed = client.get(f"/api/v1/datasets/{ds.id}/deliveries", headers=headers).get_json()
    pinned = client.put(f"/api/v1/projects/{project.id}/dataset-versions/{ds.id}", headers=headers,
                        json={"version": 1})
    missing = client.put(f"/api/v1/projects/{project.id}/dataset-versions/{ds.id}", headers=headers,
                         json={"version": 7})

    assert rules.status_code == 200 and rules.get_json()["rules"]["max_type_failure_fraction"] == 0
    assert made.status_code == 202
    assert again["state"] == "accepted" and again["version"] == 1
    assert "profile" not in again["report"] and again["report"]["columns"]["score"]["type_failures"] == 0
    assert dup.get_json()["state"] == "quarantined"
    assert [p["check"] for p in dup.get_json()["problems"]] == ["duplicate_keys"]
    assert [v["version"] for v in versions] == [1] and len(listed) == 2
    assert pinned.status_code == 200 and pinned.get_json() == {"following": "pinned", "version": 1}
    assert missing.status_code == 422 and "no version 7" in missing.get_json()["detail"]


def test_api_refuses_another_custodian_and_a_researcher(w: World) -> None:
    ds = _dataset(w)
    for user in (make_user(w.app, "otto.custodian", ["data_custodian"]), w.pi):
        client, headers = _api(w.app, user)
        made = client.post(f"/api/v1/datasets/{ds.id}/deliveries", headers=headers, json={"source_name": "v1.csv"})
        listed = client.get(f"/api/v1/datasets/{ds.id}/deliveries", headers=headers)
        assert made.status_code == 403 and listed.status_code == 403


def test_metadata_export_is_dcat_with_versions_restrictions_and_optouts(w: World) -> None:
    from pseudonymisation.models import OptOutListVersion
    from tre.core.db import transaction

    ds = _dataset(w)
    custodian, headers = _api(w.app, w.custodian)
    custodian.post(f"/api/v1/datasets/{ds.id}/deliveries", headers=headers, json={"source_name": "v1.csv"})
    with transaction(w.app.extensions["tre.platform"].db.session) as s:
        s.add(OptOutListVersion(name="national", version=3, file_sha256="a" * 64, fingerprint="b" * 64,
                                number_count=10))
    client, headers = _api(w.app, w.pi)  # a researcher browsing the catalogue

    got = client.get(f"/api/v1/datasets/{ds.id}/metadata", headers=headers)
    missing = client.get(f"/api/v1/datasets/{'0' * 32}/metadata", headers=headers)

    assert got.status_code == 200 and got.mimetype == "application/ld+json"
    body = got.get_json(force=True)
    assert body["@type"] == "dcat:Dataset" and body["dct:identifier"] == "clinic_registry"
    assert body["dcat:version"] == "1" and body["tre:rows"] == 40
    assert [c["csvw:name"] for c in body["csvw:tableSchema"]["csvw:column"]] == HEADER
    assert body["tre:optOutLists"] == [{"tre:name": "national", "tre:version": 3, "tre:appliesTo": "national"}]
    assert body["dct:accessRights"]["@id"].endswith("RESTRICTED") and body["tre:restrictions"]
    assert "sha256" not in got.get_data(as_text=True)
    assert missing.status_code == 404
