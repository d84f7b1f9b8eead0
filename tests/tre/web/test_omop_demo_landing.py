"""The demo instance (``tre init`` and ``tre demo load``, as ``make run`` does) has a landing folder
inside it holding the demo's OMOP tables: the OMOP page lists the folder and a custodian registers it,
its tables checked and accepted as version 1. An instance that is not a demo still refuses, and a name
that leaves the landing folder is refused."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from pseudonymisation import omop
from tests.conftest import make_test_app
from tests.disclosure.factories import run_queued_jobs
from tests.full_instance import tre
from tests.projects.factories import build_world
from tre.core.identity import User
from tre.demo.accounts import DOMAIN
from tre.demo.omop import DEMO_OMOP_FOLDER

from .test_dataset_schema_pages import login
from .test_delivery_pages import _csrf


@pytest.fixture(scope="module")
def demo_instance(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """An instance made by the commands ``make run`` runs (few patients, for time), on SQLite."""
    instance = tmp_path_factory.mktemp("demo") / "instance"
    database_url = f"sqlite:///{instance / 'tre.sqlite'}"
    tre(["init"], instance, database_url)
    tre(["demo", "load", "--patients", "200"], instance, database_url)
    return instance, database_url


@pytest.fixture
def demo_app(demo_instance: tuple[Path, str]) -> Iterator[Any]:
    """The service as ``tre run`` starts it on that instance: TRE_LANDING_DIR unset."""
    app = make_test_app(*demo_instance)
    yield app
    app.extensions["tre.db"].session.remove()
    app.extensions["tre.db"].dispose()


def _custodian(app: Any) -> Any:
    return app.extensions["tre.db"].session.scalar(select(User).where(User.email == f"cara.custodian@{DOMAIN}"))


def test_the_demo_instance_lands_its_omop_tables_in_a_folder_no_other_account_may_enter(
    demo_instance: tuple[Path, str], demo_app: Any,
) -> None:
    instance, _ = demo_instance
    landing = instance / "landing"
    files = sorted((landing / DEMO_OMOP_FOLDER).iterdir())

    assert demo_app.extensions["tre.settings"].landing_dir == landing
    assert sorted(f.stem for f in files) == sorted(omop.TABLES)
    for path in (landing, landing / DEMO_OMOP_FOLDER, *files):
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path


def test_the_demo_omop_page_lists_the_demo_folder_and_offers_it(demo_app: Any) -> None:
    client = login(demo_app.test_client(), _custodian(demo_app))

    page = client.get("/catalogue/omop")
    text = page.get_data(as_text=True)

    assert page.status_code == 200
    assert f'<ul class="nhsuk-list nhsuk-list--bullet" id="omop-folders"><li><code>{DEMO_OMOP_FOLDER}</code>' in text
    assert f'value="{DEMO_OMOP_FOLDER}"' in text
    assert 'value="demo_omop"' in text  # a prefix made from the folder's name, so one click reviews it
    assert "No landing folder is configured" not in text


def test_a_custodian_registers_the_demo_folder_and_its_tables_are_accepted(demo_app: Any) -> None:
    from projects.models import Dataset
    from pseudonymisation.models import DatasetDelivery

    client = login(demo_app.test_client(), _custodian(demo_app))
    page = client.get("/catalogue/omop").get_data(as_text=True)
    review = client.post("/catalogue/omop", data={"csrf_token": _csrf(page), "folder": DEMO_OMOP_FOLDER,
                                                   "prefix": "demo_omop", "action": "review"})
    confirmed = client.post("/catalogue/omop", data={"csrf_token": _csrf(review.get_data(as_text=True)),
                                                      "folder": DEMO_OMOP_FOLDER, "prefix": "demo_omop",
                                                      "action": "confirm"})
    run_queued_jobs(demo_app)

    with demo_app.extensions["tre.db"].session_factory() as s:
        made = {d.id: d.name for d in s.scalars(select(Dataset).where(Dataset.name.like("demo_omop_%")))}
        verdicts = {made[d.dataset_id]: (d.state, d.version) for d in s.scalars(select(DatasetDelivery))
                    if d.dataset_id in made}
    assert review.status_code == 200 and "Confirm and register 6 tables" in review.get_data(as_text=True)
    assert confirmed.status_code == 302
    assert verdicts == {f"demo_omop_{t}": ("accepted", 1) for t in omop.TABLES}


def test_names_that_leave_the_demo_landing_folder_are_refused(demo_instance: tuple[Path, str],
                                                              demo_app: Any, tmp_path: Path) -> None:
    from tre.demo.omop import write_omop_folder

    instance, _ = demo_instance
    write_omop_folder(tmp_path / "elsewhere", persons=5)
    link = instance / "landing" / "linked"
    os.symlink(tmp_path / "elsewhere", link)
    try:
        client = login(demo_app.test_client(), _custodian(demo_app))
        page = client.get("/catalogue/omop").get_data(as_text=True)
        refused = {folder: client.post("/catalogue/omop", data={
            "csrf_token": _csrf(page), "folder": folder, "prefix": "escape", "action": "review"})
            for folder in ("linked", f"{DEMO_OMOP_FOLDER}/../../demo-data", "../demo-data", "/etc")}
    finally:
        link.unlink()

    assert "<code>linked</code>" not in page
    assert {folder: answer.status_code for folder, answer in refused.items()} == dict.fromkeys(refused, 422)
    assert "links are not followed" in refused["linked"].get_data(as_text=True)


def test_an_instance_that_is_not_a_demo_refuses_with_the_setting_to_set(tmp_path: Path) -> None:
    """Production with a ``landing`` folder in its instance, and an embedded instance without one."""
    from tre.models import metadata

    (tmp_path / "prod" / "landing").mkdir(parents=True)
    answers = {}
    for name, settings in (("prod", {"environment": "production"}), ("plain", {})):
        app = make_test_app(tmp_path / name, f"sqlite:///{tmp_path / name}.sqlite", **settings)
        metadata.create_all(app.extensions["tre.db"].engine)
        w = build_world(app)
        client = login(app.test_client(), w.custodian)
        page = client.get("/catalogue/omop").get_data(as_text=True)
        review = client.post("/catalogue/omop", data={"csrf_token": _csrf(page), "folder": "landing",
                                                       "prefix": "x", "action": "review"})
        answers[name] = (app.extensions["tre.settings"].landing_dir, page, review)
        app.extensions["tre.db"].session.remove()
        app.extensions["tre.db"].dispose()

    for landing_dir, page, review in answers.values():
        assert landing_dir is None
        assert "No landing folder is configured (TRE_LANDING_DIR)" in page
        assert review.status_code == 422
        assert "an administrator sets it" in review.get_data(as_text=True)
