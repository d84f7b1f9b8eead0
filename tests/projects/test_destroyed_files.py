"""A file deleted when its project's data was destroyed answers 410 Gone with what happened, never 500."""

from __future__ import annotations

from typing import Any

import pytest

from tests.disclosure.factories import SAFE_CSV
from tests.tre.web.test_outputs import Browser, _browser
from tre.core.db import transaction


@pytest.fixture
def web(app: Any) -> Browser:
    return _browser(app)


def _destroy_outputs(web: Browser) -> None:
    from disclosure.closure import destroy_unreleased_outputs

    w = web.world
    with web.app.app_context(), transaction(w.svc.session) as s:
        destroy_unreleased_outputs(s, w.project.id, files=w.svc.files)


def test_output_file_deleted_by_data_destruction_answers_410_not_500(web: Browser) -> None:
    w = web.world
    with web.app.app_context():
        req = w.submitted(content=SAFE_CSV)
        file_id = req.current_files[0].id
    assert web.as_(w.olive).get(f"/outputs/files/{file_id}").status_code == 200
    _destroy_outputs(web)

    page = web.as_(w.olive).get(f"/outputs/files/{file_id}")

    assert page.status_code == 410
    assert "deleted" in page.get_data(as_text=True)
