"""A stored file that is gone (deleted when its project's data was destroyed) answers 410 Gone with
what happened, or the access rules' own refusal, never 500."""

from __future__ import annotations

from typing import Any

import pytest

from tests.disclosure.factories import SAFE_CSV
from tests.tre.web.test_outputs import Browser, _browser
from tre.core.db import transaction


@pytest.fixture
def web(app: Any) -> Browser:
    return _browser(app)


def test_output_file_whose_stored_copy_was_deleted_answers_410_not_500(web: Browser) -> None:
    w = web.world
    req = w.submitted(content=SAFE_CSV)
    file_id, sha256 = req.current_files[0].id, req.current_files[0].sha256
    w.svc.claim(w.olive, req.id)  # the checker may see the content now
    assert web.as_(w.olive).get(f"/outputs/files/{file_id}").status_code == 200
    assert w.svc.files.delete(sha256)  # what the destruction hook does to an unreleased file

    page = web.as_(w.olive).get(f"/outputs/files/{file_id}")

    assert page.status_code == 410
    assert "deleted" in page.get_data(as_text=True)


def test_output_file_after_data_destruction_is_refused_clearly(web: Browser) -> None:
    from disclosure.closure import destroy_unreleased_outputs

    w = web.world
    req = w.submitted(content=SAFE_CSV)
    file_id = req.current_files[0].id
    w.svc.claim(w.olive, req.id)
    with web.app.app_context(), transaction(w.svc.session) as s:
        destroy_unreleased_outputs(s, w.project.id, files=w.svc.files)

    assert web.as_(w.olive).get(f"/outputs/files/{file_id}").status_code in (403, 410)
