"""The auditor's search page: who did each thing, said plainly, in a table that fits the page."""

from __future__ import annotations

import re
from typing import Any

from tests.tre.helpers import create_user, sign_in
from tre.core.db import transaction


def _row_of(page: str, action: str) -> str:
    rows = re.findall(r"<tr class=\"nhsuk-table__row\">(.*?)</tr>", page, flags=re.S)
    return next(r for r in rows if f">{action}<" in r)


def test_an_event_of_no_web_request_is_shown_as_the_services_and_a_refused_caller_as_anonymous(
    sqlite_app: Any, client: Any
) -> None:
    _, secret = create_user(sqlite_app, "audrey@nhs.example", ["auditor"])
    platform = sqlite_app.extensions["tre.platform"]
    with transaction(platform.db.session) as s:  # as the worker records a check it ran
        platform.audit.record(s, "output.checks_done", actor_id=None, detail={"files": 1})
    assert sqlite_app.test_client().get("/api/v1/me").status_code == 401  # nobody signed in: refused

    sign_in(client, "audrey@nhs.example", secret)
    page = client.get("/audit/").get_data(as_text=True)

    assert "the service (no web request)" in _row_of(page, "output.checks_done")
    refused = _row_of(page, "auth.refused")
    assert "anonymous" in refused and "the service" not in refused


def test_the_events_table_is_a_scrolling_region_with_details_kept_readable(sqlite_app: Any, client: Any) -> None:
    _, secret = create_user(sqlite_app, "audrey@nhs.example", ["auditor"])
    sign_in(client, "audrey@nhs.example", secret)

    page = client.get("/audit/").get_data(as_text=True)

    region = re.search(r'<div class="tre-table-scroll" role="region" aria-labelledby="([\w-]+)" tabindex="0">\s*'
                       r'<table class="nhsuk-table tre-audit-table" id="audit-events">', page)
    assert region is not None
    assert f'id="{region.group(1)}"' in page  # the region is named by the table's caption
    assert 'class="nhsuk-table__cell tre-mono tre-audit-detail"' in page
